"""Saved plans: `disco plan --out FILE` and `disco dance --plan FILE` (DESIGN §15).

A saved plan pins the head tree by its hash and holds, per step of head's dance, the
change set the step makes: each path with what it was before the step and what it is
after, as a fingerprint (a sha256 of type, content md5, symlink target, device, mode,
owner, group, SELinux label and xattrs), and for paths that are not sensitive the mode,
owner and content md5 readably. The "before" fingerprints are the hashes of the root's
paths the plan was computed against. No file content is ever in it.

Applying it, each live step's changes are compared with the planned ones before the
commit: they must be the same paths, from the same state to the same state. Anything
else (a path that drifted, a step that now changes more or less) is refused there.
A change the plan does not touch leaves it valid.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from disco.dance.options import Drifted
from disco.engine.changes import Change, Meta
from disco.errors import DiscoError
from disco.quoting import quote
from disco.tree.params import ParamStore

KIND = "disco-plan"
SAVED_VERSION = 1
MAX_AGE = ("disco", "client", "plan", "max_age")
DEFAULT_MAX_AGE = "24h"
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
REPLAN = "make a new plan: disco plan --head URI --out FILE"


def fingerprint(meta: Meta | None) -> str | None:
    if meta is None:
        return None
    fields = [meta.type, meta.md5, meta.target, meta.rdev, meta.bits, meta.uid, meta.gid,
              meta.selinux, [[name, value.hex()] for name, value in meta.xattrs]]  # fmt: skip
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def step_entry(change: Change) -> dict[str, Any]:
    """One path of a step's change set, as saved (sensitive paths by hash only)."""
    entry: dict[str, Any] = {
        "path": change.path,
        "kind": change.kind.value,
        "before": fingerprint(change.before),
        "after": fingerprint(change.after),
    }
    meta = change.after or change.before
    if not change.sensitive and meta is not None:
        entry.update(mode=meta.mode, perms=meta.perms, md5=meta.md5)
    else:
        entry["sensitive"] = True
    return entry


def saved_plan(document: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """What --out writes: the plan's document without content, and head's steps."""
    return {"kind": KIND, "saved_version": SAVED_VERSION, "plan": document, "steps": steps}


def load(path: Path) -> dict[str, Any]:
    """A saved plan, checked for shape; an error names the file and what is wrong."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise DiscoError(
            f"--plan {quote(str(path))}: cannot read it: {e.strerror}",
            "give the file that 'disco plan --out FILE' wrote",
        ) from None
    except (ValueError, UnicodeDecodeError):
        data = None
    ok = (
        isinstance(data, dict)
        and data.get("kind") == KIND
        and isinstance(data.get("plan"), dict)
        and isinstance(data.get("steps"), list)
    )
    if not ok:
        raise DiscoError(
            f"--plan {quote(str(path))} is not a saved plan",
            "give the file that 'disco plan --out FILE' wrote",
        )
    assert isinstance(data, dict)
    if data.get("saved_version") != SAVED_VERSION:
        raise DiscoError(
            f"--plan {quote(str(path))}: saved plan version {data.get('saved_version')!r}"
            f" is not {SAVED_VERSION}, the one this disco reads",
            REPLAN,
        )
    return data


def max_age(store: ParamStore) -> float:
    """disco/client/plan/max_age in seconds: a number with s, m, h or d (default 24h)."""
    text = (store.lookup(MAX_AGE, DEFAULT_MAX_AGE) or "").strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text)
    if not match or float(match[1]) <= 0:
        raise DiscoError(
            f"disco/client/plan/max_age is not a duration: {text!r}",
            "set it, e.g. 'echo 24h | disco-param set disco/client/plan/max_age'",
        )
    return float(match[1]) * UNITS[match[2]]


def check_age(saved: dict[str, Any], limit: float, now: datetime | None = None) -> None:
    created = str(saved["plan"].get("created", ""))
    try:
        when = datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise DiscoError(
            f"the saved plan has no valid 'created' time: {created!r}", REPLAN
        ) from None
    age = ((now or datetime.now(timezone.utc)) - when).total_seconds()
    if age > limit:
        raise Drifted(
            f"the plan was made {age / 3600:.1f} h ago, more than disco/client/plan/max_age"
            f" ({limit / 3600:g} h) allows",
            REPLAN,
        )


def check_head(saved: dict[str, Any], fetched: str) -> None:
    planned = saved["plan"].get("head", {}).get("hash")
    if planned != fetched:
        raise Drifted(
            f"the head tree changed since the plan: its hash is {fetched[:12]},"
            f" the plan's {str(planned)[:12]}",
            REPLAN,
        )


class Guard:
    """Checks each live step's changes against the plan's, before they are committed."""

    def __init__(self, saved: dict[str, Any]) -> None:
        self.planned: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for step in saved["steps"]:
            self.planned[(step["module"], step["step"])] = step["changes"]

    def __call__(self, module: str, step: str, changes: list[Change]) -> None:
        planned = {e["path"]: _core(e) for e in self.planned.get((module, step), [])}
        found = {c.path: _core(step_entry(c)) for c in changes}
        drifted = sorted(p for p in planned.keys() | found.keys() if planned.get(p) != found.get(p))
        if drifted:
            raise Drifted(
                f"{module}: {step}: drifted since the plan, not committed:"
                f" {' '.join(map(quote, drifted))}",
                REPLAN,
            )


def _core(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry.get("kind"), entry.get("before"), entry.get("after"))
