"""A candidate's plans across the fleet (DESIGN §15): what each node pushed to
plans/NAME/NODE.json, grouped by identical delta, with the nodes not yet planned and the
ones the candidate leaves alone.

A plan is what a node wrote: untrusted. A file that is not a regular file, too large, not
a plan document, or naming another node is listed as a problem, never followed nor
trusted for another node's name. Grouping key (the plan format's contract): each delta
entry's path, kind, what, summary and a hash of its diff, plus the modules head fails.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from disco.server.candidates import reach
from disco.server.fleet import read_pushed
from disco.server.server import PLANS
from disco.tree.names import is_hidden

FORMAT_VERSION = 1
LARGEST = 64 << 20  # bytes: a plan larger than this is not read
CHANGES, FAILURES = 2, 4  # --detailed-exitcodes bits, as `disco plan`
UNAFFECTED = "its modules and parameters are identical in both trees"


@dataclass(frozen=True)
class Group:
    """Nodes whose plans have the same delta and the same failures of head."""

    nodes: tuple[str, ...]
    delta: tuple[dict[str, Any], ...]  # path, kind, what, summary (and diff, with content)
    failed: tuple[str, ...]  # modules head fails
    exit: int  # 0, 2, 4 or 6, as each node's `disco plan --detailed-exitcodes`


@dataclass(frozen=True)
class Node:
    node: str
    reason: str


@dataclass(frozen=True)
class FleetPlan:
    candidate: str
    groups: tuple[Group, ...]
    unplanned: tuple[Node, ...]  # affected, no plan yet: how the candidate changes it
    unaffected: tuple[Node, ...]
    problems: tuple[Node, ...]  # damaged plans, plans of nodes it does not concern
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)  # by node, as pushed

    @property
    def exit(self) -> int:
        bits = 0
        for g in self.groups:
            bits |= g.exit
        return bits

    def as_json(self, content: bool = True) -> dict[str, Any]:
        groups = [asdict(g) for g in self.groups]
        if not content:
            for g in groups:
                g["delta"] = [{k: v for k, v in e.items() if k != "diff"} for e in g["delta"]]
        return {
            "format_version": FORMAT_VERSION,
            "candidate": self.candidate,
            "groups": groups,
            "unplanned": [asdict(n) for n in self.unplanned],
            "unaffected": [asdict(n) for n in self.unaffected],
            "problems": [asdict(n) for n in self.problems],
            "exit": self.exit,
        }


def read_plan(path: Path) -> dict[str, Any]:
    """A node's pushed plan; ValueError saying why it cannot be used."""
    data = read_pushed(path, LARGEST)
    try:
        document = json.loads(data.decode("utf-8"))
        check_document(document)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"not a disco plan ({e})") from None
    return dict(document)


def check_document(document: Any) -> None:
    """Raise ValueError unless `document` has the plan format's fields, of their types:
    what the grouping and the renderers read."""
    if not isinstance(document, dict) or document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format_version is not {FORMAT_VERSION}")
    for key, kind in (("node", str), ("created", str), ("delta", list), ("exit", int)):
        if not isinstance(document.get(key), kind):
            raise ValueError(f"no {key}")
    for side in ("base", "head"):
        value = document.get(side)
        if not isinstance(value, dict) or not all(
            isinstance(value.get(k), str) for k in ("uri", "hash")
        ):
            raise ValueError(f"{side} has no uri and hash")
    failed = document.get("failed")
    if not isinstance(failed, dict) or not all(strings(failed.get(k)) for k in ("base", "head")):
        raise ValueError("failed is not base and head lists of modules")
    if not strings(document.get("modules", [])):
        raise ValueError("modules is not a list of modules")
    for entry in document["delta"]:
        if not isinstance(entry, dict):
            raise ValueError("a delta entry is not an object")
        for key in ("path", "kind", "summary", "module"):
            if not isinstance(entry.get(key), str):
                raise ValueError(f"a delta entry without {key}")
        if not strings(entry.get("what")) or not isinstance(entry.get("diff", ""), str):
            raise ValueError("a delta entry's what is not a list, or its diff not text")


def strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def without_content(document: dict[str, Any]) -> dict[str, Any]:
    """The document with no file content: diffs out of its delta, drift and records."""

    def strip(record: Any) -> Any:
        return (
            {k: v for k, v in record.items() if k != "diff"} if isinstance(record, dict) else record
        )

    delta = [{k: strip(v) for k, v in strip(e).items()} for e in document["delta"]]
    return {**document, "delta": delta, "drift": [strip(c) for c in document.get("drift", [])]}


def key_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A delta entry as the grouping sees it: no records, the diff by its hash."""
    diff = entry.get("diff")
    return {
        "path": entry["path"],
        "kind": entry["kind"],
        "what": list(entry["what"]),
        "summary": entry["summary"],
        "diff_sha256": None if diff is None else hashlib.sha256(diff.encode()).hexdigest(),
    }


def group_key(document: dict[str, Any]) -> str:
    head = sorted(document.get("failed", {}).get("head", []))
    return json.dumps([[key_entry(e) for e in document["delta"]], head], sort_keys=True)


def plan_exit(document: dict[str, Any]) -> int:
    """0/2/4/6 of one node: a delta, head's failures (the node's own word for those)."""
    failures: int = document["exit"] & (CHANGES | FAILURES)
    return (CHANGES if document["delta"] else 0) | failures


def group(plans: dict[str, dict[str, Any]]) -> tuple[Group, ...]:
    """Nodes by identical delta; the groups with most nodes first, then by first node."""
    by_key: dict[str, list[str]] = {}
    for node in sorted(plans):
        by_key.setdefault(group_key(plans[node]), []).append(node)
    groups = []
    for nodes in by_key.values():
        first = plans[nodes[0]]
        delta = tuple(
            {**key_entry(e), **({"diff": e["diff"]} if "diff" in e else {})} for e in first["delta"]
        )
        failed = tuple(sorted(first.get("failed", {}).get("head", [])))
        bits = 0
        for n in nodes:
            bits |= plan_exit(plans[n])
        groups.append(Group(tuple(nodes), delta, failed, bits))
    return tuple(sorted(groups, key=lambda g: (-len(g.nodes), g.nodes)))


def fleet_plan(root: Path, name: str) -> FleetPlan:
    """Candidate `name` across the fleet of the server at `root`."""
    reached = {r.node: r.affects for r in reach(root, name)}
    where = root / PLANS / name
    files = sorted(os.listdir(where)) if where.is_dir() else []
    plans, problems = {}, []
    for file in (f for f in files if not is_hidden(f)):
        node = file[: -len(".json")] if file.endswith(".json") else ""
        if node not in reached:
            problems.append(Node(node or file, f"plans/{name}/{file}: not a node of either tree"))
            continue
        try:
            document = read_plan(where / file)
        except ValueError as e:
            problems.append(Node(node, f"damaged plan: {e}"))
            continue
        if document["node"] != node:  # the file's name, not its content, says whose it is
            problems.append(Node(node, f"its plan names node '{document['node']}'"))
        elif reached[node]:  # of a node it no longer affects: not read
            plans[node] = document
    troubled = {p.node for p in problems}
    unplanned = tuple(
        Node(n, why) for n, why in sorted(reached.items()) if why and n not in plans
        and n not in troubled
    )  # fmt: skip
    unaffected = tuple(Node(n, UNAFFECTED) for n, why in sorted(reached.items()) if not why)
    return FleetPlan(name, group(plans), unplanned, unaffected, tuple(problems), plans)


def entry_text(entry: dict[str, Any]) -> str:
    """A delta entry in a few words: `/etc/ntp.conf -1 +1`, `/etc/x added +3`,
    `/etc/y (mode owner)`."""
    words = [entry["path"]]
    words += [entry["kind"]] if entry["kind"] != "changed" else []
    words += [entry["summary"]] if entry["summary"] else []
    other = [w for w in entry["what"] if w != "content"]
    words += [f"({' '.join(other)})"] if other else []
    return " ".join(words)
