"""The plan document: what `disco plan --json` prints and a node pushes to the server
(the format fixed by DESIGN §15, `format_version` 1)."""

from __future__ import annotations

import hashlib
from typing import Any

from disco.plan.planner import FORMAT_VERSION, NodePlan

CONTENT_KEYS = ("diff",)  # what --no-content leaves out of records


def plan_document(plan: NodePlan, no_content: bool = False) -> dict[str, Any]:
    base_records, head_records = plan.base.last_record(), plan.head.last_record()
    delta = []
    for d in plan.delta:
        by = head_records.get(d.path) or base_records.get(d.path) or {}
        entry: dict[str, Any] = {
            "module": by.get("module", ""),
            "step": by.get("step", ""),
            "path": d.path,
            "kind": d.kind,
            "what": list(d.what),
            "summary": d.summary,
        }
        if d.diff and not no_content and not d.sensitive:
            entry["diff"] = d.diff
        entry["base"] = _record(base_records.get(d.path), no_content)
        entry["head"] = _record(head_records.get(d.path), no_content)
        delta.append(entry)
    return {
        "format_version": FORMAT_VERSION,
        "node": plan.node,
        "root": plan.root,
        "created": plan.created,
        "base": {"uri": plan.base.uri, "hash": plan.base.hash},
        "head": {"uri": plan.head.uri, "hash": plan.head.hash},
        "modules": list(plan.head.names),  # head's, in dance order: JUnit's testcases
        "delta": delta,
        "drift": [_record(c, no_content) for c in plan.base.changes],
        "would_execute": {"added": plan.would_added, "removed": plan.would_removed},
        "failed": {"base": list(plan.base.failed), "head": list(plan.head.failed)},
        "exit": plan.exit,
    }


def _record(record: dict[str, str] | None, no_content: bool) -> dict[str, str] | None:
    if record is None:
        return None
    if no_content:
        return {k: v for k, v in record.items() if k not in CONTENT_KEYS}
    return dict(record)


def group_key(document: dict[str, Any]) -> str:
    """The fleet's grouping key: delta entries by path, kind, what, summary and a sha256
    of the diff, and head's failures (node, records and times left out)."""
    parts = []
    for entry in document["delta"]:
        diff = hashlib.sha256(str(entry.get("diff", "")).encode()).hexdigest()
        parts.append(f"{entry['path']}\0{entry['kind']}\0{','.join(entry['what'])}\0"
                     f"{entry['summary']}\0{diff}")  # fmt: skip
    parts.append("failed\0" + ",".join(document["failed"]["head"]))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
