"""Fleet reports over a real sshd (DESIGN §13): a node pushes its dance's report into
reports/NODE/ through its own key's write-only [reports], and no node can read or write
another's. The server (tests/sshd.py) is set up by disco-server run as its own user, as in
test_ssh_isolation.py; then `disco-server report` reads what the nodes pushed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from conftest import Run
from test_ssh_isolation import (
    NODE_A,
    NODE_B,
    Served,
    as_server_user,
    configure,
    noop_dance,
    served,
)

__all__ = ["served"]  # the module-scoped fixture, shared with this module


def pushed(served: Served, node: str) -> Path:
    return served.server.home / "reports" / node / "last.json"


def dance_as(cmd: Run, tmp_path: Path, served: Served, node: str, root: Path) -> Path:
    """A NOOP dance of `node` with its own key; returns its state directory."""
    state = tmp_path / f"state-{node}"
    configure(cmd, state, served, served.key_a if node == NODE_A else served.key_b)
    before = served.server.sessions()
    result = noop_dance(cmd, state, node, root)
    assert result.returncode == 0, result.stderr
    assert "could not push" not in result.stdout + result.stderr
    assert served.server.sessions() - before == 1  # fetch and push: one connection
    return state


def test_a_dance_pushes_its_report_into_its_own_area(
    cmd: Run, tmp_path: Path, served: Served, scratch_root: Path
) -> None:
    state = dance_as(cmd, tmp_path, served, NODE_A, scratch_root)
    report = pushed(served, NODE_A)
    assert report.read_bytes() == (state / "reports" / "last.json").read_bytes()
    st = report.stat()
    assert st.st_uid == served.server.home.stat().st_uid and stat.S_IMODE(st.st_mode) == 0o640
    assert json.loads(report.read_text())["node"] == NODE_A
    assert not pushed(served, NODE_B).exists()


def test_a_node_can_neither_read_nor_write_another_nodes_report(
    cmd: Run, tmp_path: Path, served: Served, scratch_root: Path
) -> None:
    dance_as(cmd, tmp_path, served, NODE_B, scratch_root)
    dance_as(cmd, tmp_path, served, NODE_A, scratch_root)
    b_report = pushed(served, NODE_B).read_bytes()
    a_report = pushed(served, NODE_A).read_bytes()
    forged = tmp_path / "last.json"
    forged.write_text('{"forged": true}\n')
    down = tmp_path / "down"
    # Reading: A's key sees no report at all, its own neither (write only).
    for source in ("::reports/", "::reports/last.json", f"::reports/../{NODE_B}/last.json"):
        got = served.rsync(served.key_a, "-r", source, f"{down}/")
        assert got.returncode != 0, (source, got.stdout)
        assert not down.exists() or not os.listdir(down)
    # Writing anywhere but its own last.json: refused or kept inside A's area.
    for dest in (
        f"::reports/../{NODE_B}/last.json",
        f"::reports/{NODE_B}/last.json",
        "::reports/other.json",
        f"::parameters/{NODE_B}/last.json",
    ):
        written = served.rsync(served.key_a, str(forged), dest)
        # Refused (the daemon's ERROR: line can be lost when it closes first, under load);
        # what matters is checked below: nothing of B's, nor beside A's, was touched.
        assert written.returncode != 0, (dest, written.stderr)
    parameters_b = served.server.home / "parameters" / NODE_B
    assert not (parameters_b / "last.json").exists()
    assert pushed(served, NODE_B).read_bytes() == b_report
    assert sorted(os.listdir(served.server.home / "reports")) == sorted([NODE_A, NODE_B])
    assert os.listdir(served.server.home / "reports" / NODE_A) == ["last.json"]
    assert pushed(served, NODE_A).read_bytes() == a_report
    # Nor can it delete its own, or plant a symlink that would lead elsewhere.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert served.rsync(served.key_a, "-r", "--delete", f"{empty}/", "::reports/").returncode != 0
    link = tmp_path / "links" / "last.json"
    link.parent.mkdir()
    link.symlink_to(f"../{NODE_B}/last.json")
    planted = served.rsync(served.key_a, "-l", str(link), "::reports/last.json")
    assert planted.returncode != 0 and "refuse --links" in planted.stderr
    assert not pushed(served, NODE_A).is_symlink()
    assert pushed(served, NODE_A).read_bytes() == a_report
    # The server reads the fleet.
    result = as_server_user(served.server, "report", "--json")
    fleet = {n["node"]: n for n in json.loads(result.stdout)}
    assert fleet[NODE_A]["mode"] == fleet[NODE_B]["mode"] == "noop"
    assert fleet[NODE_A]["problem"] == fleet[NODE_B]["problem"] == ""
    text = as_server_user(served.server, "report")
    assert f"report: {NODE_B}: " in text.stdout and " noop, exit 0, " in text.stdout


def test_check_names_a_node_config_without_reports(served: Served) -> None:
    conf = served.server.home / "rsyncd.d" / f"{NODE_A}.conf"
    old = conf.read_text()
    try:
        head, _, tail = old.partition("[reports]")
        conf.write_text(head + tail.partition("\n\n")[2])  # as written before reports
        result = as_server_user(served.server, "check")
        assert result.returncode == 1
        assert f"gives node '{NODE_A}' no reports/{NODE_A}/" in result.stdout
    finally:
        conf.write_text(old)
        subprocess.run(["chown", served.server.user, str(conf)], check=True)
