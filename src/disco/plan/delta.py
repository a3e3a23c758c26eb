"""Where head's dance ends differently from base's, path by path (DESIGN §15).

Each NOOP dance ends with one folded layer: what all its steps would write, over the
root. The delta is read with the dance's own change reader: head's end layer over
base's end layer over the root gives every path head's layer holds; a path only base's
layer holds ends in head as the root has it, so base's change of it is read against
the root and turned around."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from disco.engine.change_text import content_diff
from disco.engine.changes import Change, ChangeKind, Meta, read_changes
from disco.engine.lower import OVERLAY

KINDS = {ChangeKind.CREATED: "added", ChangeKind.DELETED: "removed", ChangeKind.MODIFIED: "changed"}


@dataclass(frozen=True)
class Delta:
    """One path that ends differently: base's end state (`before`) to head's (`after`)."""

    path: str
    kind: str  # added | removed | changed
    what: tuple[str, ...]  # content, mode, owner, type, xattrs
    summary: str  # "-1 +2", "binary", "content hidden", ""
    diff: str  # unified; "" for none
    sensitive: bool


def read_delta(
    base_end: Path,
    head_end: Path,
    root: Path,
    exclude: Sequence[str],
    sensitive: Sequence[str],
) -> list[Delta]:
    """The delta between two end layers (their upper dirs) over `root`, by path."""
    ahead = read_changes(head_end, [base_end, root], exclude=exclude, sensitive=sensitive)
    back = [
        turned(change)
        for change in read_changes(base_end, [root], exclude=exclude, sensitive=sensitive)
        if not covered(head_end, change.path)
    ]
    found = [delta(change) for change in [*ahead, *back]]
    return sorted(found, key=lambda d: d.path)


def turned(change: Change) -> Change:
    """A change from the root to base's end, as the change from base's end to the root."""
    kind = {ChangeKind.CREATED: ChangeKind.DELETED, ChangeKind.DELETED: ChangeKind.CREATED}
    return replace(
        change,
        kind=kind.get(change.kind, change.kind),
        before=change.after,
        after=change.before,
        old=change.new,
        new=change.old,
    )


def covered(upper: Path, path: str) -> bool:
    """Whether head's end layer decides `path`: it holds it, or a whiteout, a non-directory
    or an opaque directory above it."""
    here = str(upper)
    parts = [p for p in path.split("/") if p]
    for depth, name in enumerate(parts):
        here = os.path.join(here, name)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return False
        if depth == len(parts) - 1 or not stat.S_ISDIR(st.st_mode):
            return True
        try:
            if os.getxattr(here, OVERLAY + "opaque", follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return True


def delta(change: Change) -> Delta:
    diff = content_diff(change, "unified")
    return Delta(
        path=change.path,
        kind=KINDS[change.kind],
        what=what(change.before, change.after),
        summary=summary(diff, change.sensitive),
        diff="" if change.sensitive else diff,
        sensitive=change.sensitive,
    )


def what(before: Meta | None, after: Meta | None) -> tuple[str, ...]:
    """What differs between the end states, in a fixed order."""
    if before is None or after is None:
        meta = after or before
        assert meta is not None
        return ("type", "content") if meta.md5 is not None else ("type",)
    found = []
    if before.type != after.type:
        found.append("type")
    elif (before.md5, before.target, before.rdev) != (after.md5, after.target, after.rdev):
        found.append("content")
    if before.bits != after.bits and before.type == after.type:  # a link's are 777
        found.append("mode")
    if (before.uid, before.gid) != (after.uid, after.gid):
        found.append("owner")
    if (before.xattrs, before.selinux) != (after.xattrs, after.selinux):
        found.append("xattrs")
    return tuple(found)


def summary(diff: str, sensitive: bool) -> str:
    """Lines removed and added, from a unified diff: "-1 +2"."""
    if sensitive:
        return "content hidden"
    if diff == "Binary files differ":
        return "binary"
    if not diff:
        return ""
    removed = added = 0
    for line in diff.splitlines():
        if line.startswith("-") and not line.startswith("--- "):
            removed += 1
        elif line.startswith("+") and not line.startswith("+++ "):
            added += 1
    return f"-{removed} +{added}"
