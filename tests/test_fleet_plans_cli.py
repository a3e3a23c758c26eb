"""disco-server propose, withdraw and plan on a server tree in a temporary folder (DESIGN
§15): every bad input an `error:` line; the fleet's plans grouped from plan documents this
test writes as nodes would push them (the nodes' side runs over sshd: test_fleet_plans.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from junitparser import Failure, JUnitXml, Skipped

from conftest import Run, assert_one_error
from disco.server import plan_pages
from disco.server.plans import FleetPlan, Node, group
from test_server import make_key

NTP_DIFF = "1c1\n< server 10.0.0.1\n---\n> server 10.0.0.2\n"


class Server:
    """A server tree of fourteen nodes: web01..web12 with modules ntp and motd, db01 and
    db02 with motd only; and a candidate checkout that changes ntp."""

    def __init__(self, tmp_path: Path, cmd: Run) -> None:
        self.root, self.home, self.cmd = tmp_path / "srv", tmp_path / "home", cmd
        self.config = self.home / "rsyncd.conf"
        self.home.mkdir()
        self.webs = [f"web{i:02}" for i in range(1, 13)]
        write_tree(self.root, self.webs, "server 10.0.0.1\n")
        self.checkout = write_tree(tmp_path / "pr", self.webs, "server 10.0.0.2\n")
        self.ok("init", str(self.root))

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(self.home)}
        return self.cmd("disco-server", *argv, "--config", str(self.config), env=env)

    def ok(self, *argv: str) -> str:
        result = self.run(*argv)
        assert result.returncode == 0 and not result.stderr, result.stderr
        return result.stdout

    def plans(self, name: str = "pr-1") -> Path:
        return self.root / "plans" / name

    def push(self, node: str, document: dict[str, Any], name: str = "pr-1") -> None:
        (self.plans(name) / f"{node}.json").write_text(json.dumps(document))


def write_tree(top: Path, webs: list[str], ntp: str) -> Path:
    (top / "modules" / "ntp" / "files" / "etc").mkdir(parents=True)
    (top / "modules" / "ntp" / "files" / "etc" / "ntp.conf").write_text(ntp)
    (top / "modules" / "motd" / "templates" / "etc").mkdir(parents=True)
    (top / "modules" / "motd" / "templates" / "etc" / "motd").write_text("echo hi\n")
    for node in [*webs, "db01", "db02"]:
        (top / "parameters" / node / "modules").mkdir(parents=True)
        for module in ("ntp", "motd") if node.startswith("web") else ("motd",):
            (top / "parameters" / node / "modules" / module).write_text("")
    return top


def plan(
    node: str, delta: list[dict[str, Any]], head_fails: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A node's plan document, as plan-format.md fixes it."""
    exit_ = (2 if delta else 0) | (4 if head_fails else 0)
    return {
        "format_version": 1,
        "node": node,
        "root": "/",
        "created": "2026-12-06T21:00:00Z",
        "base": {"uri": "disco@server", "hash": "a" * 64},
        "head": {"uri": "disco@server candidate pr-1", "hash": "b" * 64},
        "modules": ["motd", "ntp"],
        "delta": delta,
        "drift": [],
        "would_execute": {"added": [], "removed": []},
        "failed": {"base": [], "head": list(head_fails)},
        "exit": exit_,
    }


def ntp(diff: str = NTP_DIFF) -> dict[str, Any]:
    return {"module": "ntp", "step": "files", "path": "/etc/ntp.conf", "kind": "changed",
            "what": ["content"], "summary": "-1 +1", "diff": diff,
            "base": None, "head": None}  # fmt: skip


@pytest.fixture
def srv(tmp_path: Path, cmd: Run) -> Server:
    return Server(tmp_path, cmd)


def test_propose_copies_the_tree_and_says_whom_it_affects(srv: Server) -> None:
    (srv.checkout / ".git").mkdir()  # a checkout's own: not published
    out = srv.ok("propose", "pr-1", str(srv.checkout))
    assert (
        f"info: Proposed candidate pr-1: {srv.root}/candidates/pr-1, a copy of {srv.checkout}\n"
        in out
    )
    assert f"info: it affects 12 node(s): {' '.join(srv.webs)}\n" in out
    assert "info: unaffected: db01 db02\n" in out
    assert sorted(os.listdir(srv.root / "candidates" / "pr-1")) == ["modules", "parameters"]
    assert srv.plans().is_dir() and os.listdir(srv.plans()) == []
    # The checkout changing afterwards changes nothing of the candidate.
    (srv.checkout / "modules" / "ntp" / "files" / "etc" / "ntp.conf").write_text("later\n")
    published = srv.root / "candidates" / "pr-1" / "modules" / "ntp" / "files" / "etc" / "ntp.conf"
    assert published.read_text() == "server 10.0.0.2\n"


def test_propose_and_withdraw_say_what_is_wrong(srv: Server, tmp_path: Path) -> None:
    srv.ok("propose", "pr-1", str(srv.checkout))
    assert_one_error(
        srv.run("propose", "pr/1", str(srv.checkout)), 2, "candidate name 'pr/1'", "'/'"
    )
    assert_one_error(srv.run("propose", "-x", str(srv.checkout)), 2)  # argparse: an option
    assert_one_error(
        srv.run("propose", ".pr", str(srv.checkout)), 2, "candidate name '.pr'", "letter or a digit"
    )
    assert_one_error(srv.run("propose", "pr-2", str(tmp_path / "nope")), 2, "nope does not exist")
    (tmp_path / "file").write_text("")
    assert_one_error(srv.run("propose", "pr-2", str(tmp_path / "file")), 2, "is not a directory")
    assert_one_error(
        srv.run("propose", "pr-2", str(srv.checkout / "modules")), 2,
        "not a disco server tree", "no parameters/",
    )  # fmt: skip
    duplicate = srv.run("propose", "pr-1", str(srv.checkout))
    assert_one_error(duplicate, 1, "candidate 'pr-1' is already proposed", "propose --replace pr-1",
                     "disco-server withdraw pr-1")  # fmt: skip
    assert_one_error(srv.run("withdraw", "pr-9"), 1, "no candidate 'pr-9'", "open candidates: pr-1")
    assert_one_error(srv.run("plan", "pr-9"), 1, "no candidate 'pr-9'", "open candidates: pr-1")
    assert_one_error(srv.run("withdraw", "pr/9"), 2, "candidate name 'pr/9'")
    srv.ok("withdraw", "pr-1")
    assert_one_error(srv.run("withdraw", "pr-1"), 1, "no candidate 'pr-1'", "none is open")
    assert (
        sorted(os.listdir(srv.root / "candidates")) == sorted(os.listdir(srv.root / "plans")) == []
    )


def test_propose_without_an_initialised_server_says_how(cmd: Run, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = str(home / "rsyncd.conf")
    result = cmd("disco-server", "propose", "pr-1", str(tmp_path), "--config", config)
    assert_one_error(result, 1, "no server directory given", "disco-server init DIR")


def test_propose_keeps_the_candidates_links_munged(srv: Server, tmp_path: Path) -> None:
    same = tmp_path / "same"  # the live tree, as a checkout of it
    shutil.copytree(srv.root / "parameters", same / "parameters")
    shutil.copytree(srv.root / "modules", same / "modules")
    for top in (srv.root, same):
        (top / "modules" / "ntp" / "peek").symlink_to("../../parameters/web01")
    out = srv.ok("propose", "pr-1", str(same))
    link = srv.root / "candidates" / "pr-1" / "modules" / "ntp" / "peek"
    assert os.readlink(link) == "/rsyncd-munged/../../parameters/web01"
    assert not link.exists()  # it leads nowhere on the server
    assert "info: it affects 0 node(s): -\n" in out  # the link, as a node gets it: unchanged


def test_propose_copies_a_symlinked_part_as_a_directory(srv: Server, tmp_path: Path) -> None:
    shutil.move(str(srv.checkout / "modules"), tmp_path / "modules-elsewhere")
    (srv.checkout / "modules").symlink_to(tmp_path / "modules-elsewhere")
    srv.ok("propose", "pr-1", str(srv.checkout))
    modules = srv.root / "candidates" / "pr-1" / "modules"
    assert modules.is_dir() and not modules.is_symlink()
    assert sorted(os.listdir(modules)) == ["motd", "ntp"]


def test_propose_replace_drops_the_old_plans(srv: Server) -> None:
    srv.ok("propose", "pr-1", str(srv.checkout))
    srv.push("web01", plan("web01", [ntp()]))
    (srv.checkout / "modules" / "motd" / "templates" / "etc" / "motd").write_text("echo bye\n")
    out = srv.ok("propose", "--replace", "pr-1", str(srv.checkout))
    assert "info: Replaced candidate pr-1" in out
    assert "info: it affects 14 node(s)" in out  # motd changed: every node
    assert os.listdir(srv.plans()) == []
    assert [p for p in os.listdir(srv.root) if p.startswith(".")] == []  # nothing left beside


def test_propose_warns_of_what_check_would_say(srv: Server) -> None:
    (srv.checkout / "parameters" / "web01" / "modules" / "nginx").write_text("")
    out = srv.ok("propose", "pr-1", str(srv.checkout))
    assert "warning: candidate pr-1: module 'nginx' is missing (node 'web01' -> nginx)" in out


def test_plan_groups_nodes_by_identical_delta(srv: Server) -> None:
    srv.ok("propose", "pr-1", str(srv.checkout))
    for node in srv.webs[:11]:
        srv.push(node, plan(node, [ntp()]))
    result = srv.run("plan", "pr-1", "--detailed-exitcodes")
    assert result.returncode == 2, result.stderr
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == "info: candidate pr-1: 11 node(s) planned in 1 group(s), 1 not yet planned, 2 unaffected"
    )
    # More than ten nodes: the middle ones left out of the line (--json has them all).
    nine = " ".join(srv.webs[:9])
    assert lines[1] == f"report: /etc/ntp.conf -1 +1 on 11 nodes: {nine} ... web11"
    assert lines[2:6] == ["1c1", "< server 10.0.0.1", "---", "> server 10.0.0.2"]
    assert "warning: not yet planned on 1 node(s): web12 (module ntp differs)" in lines
    assert (
        "info: unaffected: db01 db02 (its modules and parameters are identical in both trees)"
        in lines
    )
    assert srv.run("plan", "pr-1").returncode == 0  # without --detailed-exitcodes


def test_plan_splits_groups_on_any_difference_and_exits_for_failures(srv: Server) -> None:
    srv.ok("propose", "pr-1", str(srv.checkout))
    srv.push("web01", plan("web01", [ntp()]))
    srv.push("web02", plan("web02", [ntp()]))
    srv.push("web03", plan("web03", [ntp(NTP_DIFF.replace("10.0.0.1", "10.0.0.9"))]))  # other diff
    srv.push("web04", plan("web04", [ntp()], head_fails=("ntp",)))
    srv.push("web05", plan("web05", []))
    as_json = srv.run("plan", "pr-1", "--json")
    assert as_json.returncode == 1  # head fails somewhere
    document = json.loads(as_json.stdout)
    groups = {tuple(g["nodes"]): g for g in document["groups"]}
    assert list(groups) == [("web01", "web02"), ("web03",), ("web04",), ("web05",)]
    assert groups[("web04",)]["failed"] == ["ntp"] and groups[("web04",)]["exit"] == 6
    assert groups[("web05",)]["delta"] == [] and groups[("web05",)]["exit"] == 0
    assert groups[("web01", "web02")]["delta"][0]["diff"] == NTP_DIFF
    assert document["exit"] == 6
    text = srv.run("plan", "pr-1", "--detailed-exitcodes")
    assert text.returncode == 6
    assert "report: 1 path(s) on 1 node: web04" in text.stdout
    assert "report:   head fails: module ntp" in text.stdout
    assert "report: no change on 1 node: web05" in text.stdout
    assert srv.run("plan", "pr-1").returncode == 1  # head fails somewhere


def test_plan_junit_is_read_by_a_junit_consumer(srv: Server, tmp_path: Path) -> None:
    srv.ok("propose", "pr-1", str(srv.checkout))
    srv.push("web01", plan("web01", [ntp()]))
    srv.push("web04", plan("web04", [ntp()], head_fails=("ntp",)))
    out = tmp_path / "plan.xml"
    assert srv.run("plan", "pr-1", "--junit", str(out)).returncode == 1
    suites = {suite.name: suite for suite in JUnitXml.fromfile(str(out))}
    assert sorted(suites) == ["disco plan web01", "disco plan web04", "not yet planned"]
    props = {p.name: p.value for p in suites["disco plan web04"].properties()}  # type: ignore[no-untyped-call]
    assert props == {"node": "web04", "base": f"disco@server {'a' * 64}",
                     "head": f"disco@server candidate pr-1 {'b' * 64}"}  # fmt: skip
    cases = {case.name: case for case in suites["disco plan web04"]}
    assert [type(r) for r in cases["ntp"].result] == [Failure]
    assert not cases["motd"].result
    assert "/etc/ntp.conf changed" in (cases["ntp"].system_out or "")
    waiting = list(suites["not yet planned"])
    assert len(waiting) == 10 and all(type(c.result[0]) is Skipped for c in waiting)
    assert waiting[0].classname == "web02" and suites["not yet planned"].skipped == 10
    ten = " ".join(n for n in srv.webs if n not in ("web01", "web04"))
    said = srv.run("plan", "pr-1").stdout  # the waiting nodes, one line a reason
    assert f"warning: not yet planned on 10 node(s): {ten} (module ntp differs)\n" in said


def test_plan_lists_damaged_and_foreign_plans_as_problems(srv: Server) -> None:
    srv.ok("propose", "pr-1", str(srv.checkout))
    (srv.plans() / "web01.json").write_text("{not json")
    srv.push("web02", plan("web03", [ntp()]))  # a plan that names another node
    os.symlink("../../parameters/web03", srv.plans() / "web04.json")
    srv.push("web05", {**plan("web05", [ntp()]), "format_version": 9})
    srv.push("nobody", plan("nobody", []))
    srv.push("db01", plan("db01", [ntp()]))  # a node it does not affect: not read
    document = json.loads(srv.ok("plan", "pr-1", "--json"))
    problems = {p["node"]: p["reason"] for p in document["problems"]}
    assert problems["web01"].startswith("damaged plan: not a disco plan")
    assert problems["web02"] == "its plan names node 'web03'"
    assert problems["web04"] == "damaged plan: not a regular file"
    assert problems["web05"] == "damaged plan: not a disco plan (format_version is not 1)"
    assert problems["nobody"] == "plans/pr-1/nobody.json: not a node of either tree"
    assert document["groups"] == []
    assert "db01" in [n["node"] for n in document["unaffected"]]
    text = srv.ok("plan", "pr-1")
    assert "warning: web02: its plan names node 'web03'\n" in text


def test_no_content_leaves_every_diff_out(srv: Server, tmp_path: Path) -> None:
    srv.ok("propose", "pr-1", str(srv.checkout))
    for node in ("web01", "web02"):
        srv.push(node, plan(node, [ntp()]))
    files = [tmp_path / f"out.{x}" for x in ("xml", "md", "html")]
    words = ["--junit", str(files[0]), "--markdown", str(files[1]), "--html", str(files[2])]
    shown = srv.run("plan", "pr-1", "--json", *words).stdout
    assert f"info: wrote {files[0]}" in srv.run("plan", "pr-1", "--json", *words).stderr
    assert "10.0.0.2" in shown and all("10.0.0.2" in f.read_text() for f in files[1:])
    hidden = srv.run("plan", "pr-1", "--json", "--no-content", *words).stdout
    assert "10.0.0.2" not in hidden and "-1 +1" in hidden
    assert not any("10.0.0.2" in f.read_text() for f in files)
    assert "10.0.0.2" not in srv.ok("plan", "pr-1", "--no-content")
    suites = ET.parse(files[0]).getroot()
    assert [s.get("name") for s in suites.iter("testsuite")] == [
        "disco plan web01",
        "disco plan web02",
        "not yet planned",
    ]


def test_markdown_stays_under_its_limit_and_says_what_it_left_out(
    srv: Server, tmp_path: Path
) -> None:
    srv.ok("propose", "pr-1", str(srv.checkout))
    for i, node in enumerate(srv.webs):
        big = "".join(f"> line {i} {n} {'x' * 60}\n" for n in range(300))  # ~20 kB a node
        srv.push(node, plan(node, [ntp(f"0a1,300\n{big}")]))
    out = tmp_path / "summary.md"
    srv.ok("plan", "pr-1", "--markdown", str(out))
    text = out.read_text()
    assert len(text) < 60_000
    assert "group(s) left out to stay under 60000 characters" in text
    assert "disco-server plan pr-1" in text


def test_plan_refuses_an_output_it_cannot_write(srv: Server, tmp_path: Path) -> None:
    srv.ok("propose", "pr-1", str(srv.checkout))
    result = srv.run("plan", "pr-1", "--markdown", str(tmp_path / "no" / "such" / "x.md"))
    assert result.returncode == 1 and result.stderr.startswith("error: cannot write")
    assert "x.md" in result.stderr


def test_candidates_and_plans_are_reserved_module_names(srv: Server) -> None:
    (srv.root / "modules" / "plans").mkdir()
    assert_one_error(srv.run("sync"), 1, "'plans' is reserved")
    shutil.rmtree(srv.root / "modules" / "plans")
    (srv.root / "modules" / "candidates").mkdir()
    assert_one_error(srv.run("sync"), 1, "'candidates' is reserved")


def test_check_names_a_node_config_written_before_candidates(srv: Server) -> None:
    key = srv.home / "web01.pub"
    key.write_text(make_key())
    srv.ok("add-node", "web01", str(key), "--authorized-keys", str(srv.home / "authorized_keys"))
    assert srv.ok("check").startswith("info: server")
    conf = srv.home / "rsyncd.d" / "web01.conf"
    conf.write_text(re.sub(r"\[(candidates|plans)\]\n(.+\n)+\n?", "", conf.read_text()))
    result = srv.run("check")
    assert result.returncode == 1
    for area in ("candidates", "plans"):
        assert (
            f"{conf} gives node 'web01' no [{area}] of its own; run 'disco-server sync"
            in result.stdout
        )
    srv.ok("sync")
    assert srv.ok("check").startswith("info: server")


def test_markdown_keeps_what_a_node_wrote_inside_its_code_and_counts_long_lists() -> None:
    hostile = {**ntp("````` not the end\n"), "path": "/etc/a`b"}
    many = tuple(Node(f"n{i:04}", "module ntp differs") for i in range(1000))
    fleet = FleetPlan("pr-1", group({"web01": plan("web01", [hostile])}), many, (), ())
    text = plan_pages.markdown(fleet, content=True)
    assert "`/etc/a'b -1 +1`" in text
    assert "``````diff\n````` not the end\n``````" in text
    assert "- module ntp differs: `n0000`" in text and ", `n0029` and 970 more" in text
    assert len(text) < 5000
