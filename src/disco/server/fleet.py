"""The fleet as the server sees it: each node's last pushed report (DESIGN §13).

A node writes `reports/NODE/last.json` on the server through its own write-only rsync
module (disco-server add-node); here the server reads them back. What a node wrote is
untrusted: a file that is not a regular file (a munged symlink), too large, or not a disco
report is shown as damaged, never followed or trusted for another node's name.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from disco.files import open_regular
from disco.report.metrics import DanceReport, from_data
from disco.report.page import report_html
from disco.server.server import PARAMETERS, REPORT_FILE, REPORTS, listing

LARGEST = 16 << 20  # bytes: a report larger than this is not read


@dataclass(frozen=True)
class NodeStatus:
    node: str
    path: str  # reports/NODE/last.json on the server
    started: str  # "" if no usable report
    mode: str
    exit: int | None  # None (and changes, failures): no usable report, nothing known
    changes: int | None
    failures: int | None  # steps that exited non-zero
    age: float | None  # seconds since the dance started; None: no usable report
    problem: str  # "" if all is well: "never reported", "silent for 3h", "damaged: ..."

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def read_pushed(path: Path, largest: int) -> bytes:
    """What a node pushed, read as untrusted: a regular file of at most `largest` bytes,
    never through a symlink nor from a FIFO; ValueError saying why it cannot be used."""
    try:
        fd = open_regular(path)
    except OSError as e:
        raise ValueError(e.strerror or "not a regular file") from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > largest:
            raise ValueError(f"{size} bytes, larger than {largest}")
        return f.read(largest + 1)


def read_report(path: Path) -> DanceReport:
    """A node's pushed report; ValueError saying why it cannot be used."""
    data = read_pushed(path, LARGEST)
    try:
        report = from_data(json.loads(data.decode("ascii")))
        started_at(report.started)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"not a disco report ({e})") from None
    return report


def started_at(started: str) -> datetime:
    return datetime.strptime(started, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def human(seconds: float) -> str:
    """An age as a person says it: 45s, 12min, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def node_status(root: Path, node: str, silent_after: float, now: datetime) -> NodeStatus:
    path = root / REPORTS / node / REPORT_FILE
    empty = NodeStatus(node, str(path), "", "", None, None, None, None, "")
    if not os.path.lexists(path):
        return NodeStatus(**{**asdict(empty), "problem": "never reported"})
    try:
        report = read_report(path)
    except ValueError as e:
        return NodeStatus(**{**asdict(empty), "problem": f"damaged report: {e}"})
    age = (now - started_at(report.started)).total_seconds()
    failures = sum(1 for record in report.records if record.exit != 0)
    problem = f"silent for {human(age)}" if age > silent_after else ""
    if report.node != node:  # the directory, not the file, says whose it is
        problem = problem or f"its report names node '{report.node}'"
    return NodeStatus(
        node,
        str(path),
        report.started,
        report.mode,
        report.exit,
        len(report.changes),
        failures,
        age,
        problem,
    )


def fleet(root: Path, silent_after: float, now: datetime | None = None) -> list[NodeStatus]:
    """Every node the server knows (parameters/) or has reports of, by name."""
    now = now or datetime.now(timezone.utc)
    nodes = sorted(set(listing(root / PARAMETERS)) | set(listing(root / REPORTS)))
    return [node_status(root, node, silent_after, now) for node in nodes]


def fleet_html(nodes: list[NodeStatus], pages: str) -> str:
    """A page of nodes; each links its last dance's page, `pages`/NODE.html."""
    e = html.escape
    rows = []
    for n in nodes:
        when = e(n.started) if n.age is None else e(f"{n.started} ({human(n.age)} ago)")
        if n.age is not None:
            when = f'<a href="{e(pages)}/{e(n.node)}.html">{when}</a>'
        bad = "bad" if n.problem or n.failures else "ok"
        rows.append(
            f'<tr class="{bad}"><td>{e(n.node)}</td><td>{when}</td><td>{e(n.mode)}</td>'
            f"<td class=n>{known(n.exit)}</td><td class=n>{known(n.changes)}</td>"
            f"<td class=n>{known(n.failures)}</td><td>{e(n.problem)}</td></tr>"
        )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>disco fleet</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; }}
td, th {{ padding: 2px 8px; text-align: left; border-bottom: 1px solid #ddd; }}
td.n {{ text-align: right; font-family: monospace; }} tr.bad td {{ color: #a00; }}
</style></head><body>
<h1>disco fleet: {len(nodes)} node(s)</h1>
<table>
<tr><th>node</th><th>last dance</th><th>mode</th><th>exit</th><th>changes</th>
<th>failed steps</th><th>problem</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""


def known(value: int | None) -> str:
    return "" if value is None else str(value)


def node_pages(root: Path, nodes: list[NodeStatus]) -> dict[str, str]:
    """The page of each node's last dance, by node (nodes without a usable report: none)."""
    pages = {}
    for n in nodes:
        if n.age is not None:
            pages[n.node] = report_html(read_report(root / REPORTS / n.node / REPORT_FILE))
    return pages
