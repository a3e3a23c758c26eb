"""`disco-server report`: the fleet from the reports the nodes pushed (DESIGN §13)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import Run, assert_one_error
from disco.engine.sandbox import Usage
from disco.report.metrics import DanceReport, Record, save


def usage() -> Usage:
    return Usage(**{name: 0 for name in Usage.__dataclass_fields__})


def push(root: Path, node: str, ago: timedelta, failed: int = 0, changes: int = 1) -> None:
    """What a node's dance leaves in reports/NODE/ on the server (metrics.save's last.json)."""
    started = (datetime.now(timezone.utc) - ago).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    records = tuple(Record("m", "exec", f"s{i}", 0.1, usage(), 1) for i in range(failed))
    records += (Record("m", "diff", None, 0.01, usage(), 0),)
    change = {"module": "m", "step": "exec", "path": "/etc/x", "kind": "Created", "header": ""}
    report = DanceReport(
        started, node, "live", "/", 1 if failed else 0, records, (change,) * changes
    )
    save(root / "reports" / node, report)


@pytest.fixture
def srv(cmd: Run, tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    assert cmd("disco-server", "init", str(root), "--config", str(tmp_path / "c")).returncode == 0
    for node in ("a.example", "b.example", "c.example"):
        (root / "parameters" / node / "modules").mkdir(parents=True)
    push(root, "a.example", timedelta(minutes=5), changes=3)
    push(root, "b.example", timedelta(hours=5), failed=2)
    return root


def report(cmd: Run, srv: Path, *args: str) -> tuple[int, list[str]]:
    result = cmd("disco-server", "report", str(srv), "--config", str(srv.parent / "c"), *args)
    return result.returncode, (result.stdout + result.stderr).splitlines()


def test_each_node_its_last_dance_and_the_silent_ones(cmd: Run, srv: Path) -> None:
    status, lines = report(cmd, srv)
    assert status == 1  # b failed and is silent, c never reported
    assert re.fullmatch(
        r"report: a\.example: \S+Z \(5min ago\) live, exit 0, 3 changes, 0 failures", lines[0]
    )
    assert re.fullmatch(
        r"report: b\.example: \S+Z \(5h ago\) live, exit 1, 1 changes, 2 failures", lines[1]
    )
    assert lines[2:] == ["warning: b.example: silent for 5h", "warning: c.example: never reported"]
    status, lines = report(cmd, srv, "--older-than", "6h")
    assert "warning: b.example: silent for 5h" not in lines


def test_all_well_exits_0(cmd: Run, srv: Path) -> None:
    push(srv, "b.example", timedelta(minutes=1))
    push(srv, "c.example", timedelta(minutes=1))
    status, lines = report(cmd, srv)
    assert status == 0 and len(lines) == 3 and all(x.startswith("report: ") for x in lines)


def test_json(cmd: Run, srv: Path) -> None:
    result = cmd("disco-server", "report", str(srv), "--json", "--config", str(srv.parent / "c"))
    nodes = json.loads(result.stdout)
    assert [n["node"] for n in nodes] == ["a.example", "b.example", "c.example"]
    assert (nodes[1]["failures"], nodes[1]["problem"], nodes[2]["age"]) == (
        2,
        "silent for 5h",
        None,
    )
    assert nodes[0]["path"] == str(srv / "reports/a.example/last.json")
    assert (nodes[0]["exit"], nodes[1]["exit"]) == (0, 1)
    never = {k: nodes[2][k] for k in ("exit", "changes", "failures", "problem")}
    assert never == {"exit": None, "changes": None, "failures": None, "problem": "never reported"}


def test_html_links_each_nodes_dance(cmd: Run, srv: Path, tmp_path: Path) -> None:
    page = tmp_path / "www" / "fleet.html"
    page.parent.mkdir()
    status, lines = report(cmd, srv, "--html", str(page))
    assert lines == [
        f"info: wrote the fleet of 3 nodes to {page}, their dances in {page.parent}/fleet-nodes"
    ]
    text = page.read_text()
    assert 'href="fleet-nodes/a.example.html"' in text and "never reported" in text
    assert "fleet-nodes/c.example.html" not in text
    assert "disco dance on a.example at" in (page.parent / "fleet-nodes/a.example.html").read_text()


def test_a_damaged_or_foreign_report_is_said_so(cmd: Run, srv: Path) -> None:
    (srv / "reports/a.example/last.json").write_text("{not json")
    target = srv / "reports/b.example/last.json"
    target.unlink()
    target.symlink_to(srv / "reports/a.example/history")
    push(srv, "c.example", timedelta(0))
    data = json.loads((srv / "reports/c.example/last.json").read_text())
    (srv / "reports/c.example/last.json").write_text(json.dumps({**data, "node": "a.example"}))
    status, lines = report(cmd, srv)
    assert status == 1
    assert lines[0].startswith("warning: a.example: damaged report: not a disco report")
    assert lines[1] == "warning: b.example: damaged report: not a regular file"
    assert lines[3] == "warning: c.example: its report names node 'a.example'"


@pytest.mark.parametrize("args,names", [(["--older-than", "soon"], ["--older-than soon"])])
def test_bad_arguments(args: list[str], names: list[str], cmd: Run, srv: Path) -> None:
    result = cmd("disco-server", "report", str(srv), "--config", str(srv.parent / "c"), *args)
    assert_one_error(result, 2, *names)


def test_not_a_server(cmd: Run, tmp_path: Path) -> None:
    result = cmd("disco-server", "report", str(tmp_path), "--config", str(tmp_path / "c"))
    assert_one_error(result, 1, "not a disco server")
