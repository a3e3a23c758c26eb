"""A candidate planned across a fleet over a real sshd (DESIGN §15): `disco-server propose`
publishes it, each node's dance plans it where it affects the node and pushes the plan
through its own key's write-only [plans], `disco-server plan` groups the nodes by delta.
Four nodes: web01, web02 and web03 dance modules ntp and motd, db01 only motd; the
candidate changes ntp's /etc/ntp.conf (so not db01) and gives web02 a secret parameter
that no other node's key may read. The server is set up by disco-server run as its own
user (test_ssh_isolation.py); the nodes dance NOOP on a scratch root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from conftest import Run
from sshd import SSHServer, ssh_server
from test_ssh_isolation import as_server_user, install_for, run

NODES = ("db01", "web01", "web02", "web03")
WEBS = ("web01", "web02", "web03")
SECRET = "web02's candidate secret\n"


@dataclass(frozen=True)
class Fleet:
    server: SSHServer
    keys: dict[str, Path]  # each node's private key, its public half added with add-node
    candidate: Path  # the checkout proposed as pr-1

    def ssh(self, node: str) -> str:
        s = self.server
        return (
            f"ssh -p {s.port} -i {self.keys[node]} -o UserKnownHostsFile={s.known_hosts}"
            " -o StrictHostKeyChecking=yes -o BatchMode=yes"
        )

    def rsync(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        """rsync through ssh with `node`'s key, `::` paths relative to the server."""
        words = [a.replace("::", f"{self.server.uri}::", 1) if a.startswith("::") else a
                 for a in args]  # fmt: skip
        return run(["rsync", "-e", self.ssh(node), *words])

    def plans(self, name: str = "pr-1") -> Path:
        return self.server.home / "plans" / name


def write_tree(top: Path, ntp: str) -> Path:
    """A server tree: modules ntp (a file) and motd (a template), the four nodes."""
    conf = top / "modules" / "ntp" / "files" / "etc" / "ntp.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(ntp)
    motd = top / "modules" / "motd" / "templates" / "etc" / "motd"
    motd.parent.mkdir(parents=True)
    motd.write_text('echo "Welcome to $(hostname)"\n')
    for node in NODES:
        (top / "parameters" / node / "parameters").mkdir(parents=True)
        (top / "parameters" / node / "modules").mkdir()
        for module in ("ntp", "motd") if node in WEBS else ("motd",):
            (top / "parameters" / node / "modules" / module).write_text("")
    return top


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    trees = tmp_path_factory.mktemp("trees")
    live = write_tree(trees / "live", "server 10.0.0.1 iburst\ndriftfile /var/lib/ntp/drift\n")
    with ssh_server(live) as server:
        install_for(server)
        keys = {node: server.new_key(node) for node in NODES}
        authorized = str(server.home / ".ssh" / "authorized_keys")
        assert as_server_user(server, "init", str(server.home)).returncode == 0
        for node, key in keys.items():
            added = as_server_user(server, "add-node", node, f"{key}.pub",
                                   "--authorized-keys", authorized)  # fmt: skip
            assert added.returncode == 0, added.stderr
        # The pull request's checkout, where the server's user can read it.
        candidate = write_tree(
            server.tmp / "pr-1", "server 10.0.0.2 iburst\ndriftfile /var/lib/ntp/drift\n"
        )
        (candidate / "parameters" / "web02" / "parameters" / "secret").write_text(SECRET)
        # A link a change could slip in, to lead a key's reads past the daemon's filter.
        (candidate / "modules" / "ntp" / "peek").symlink_to("../../parameters/web02")
        subprocess.run(["chmod", "-R", "a+rX", str(candidate)], check=True)
        yield Fleet(server, keys, candidate)


def dance(
    cmd: Run,
    tmp_path: Path,
    fleet: Fleet,
    node: str,
    root: Path,
    *extra: str,
    flags: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """A NOOP dance of `node` with its own key and state, on the scratch root; `extra`:
    settings and their values; `flags`: more of `disco dance`'s."""
    state = tmp_path / f"state-{node}"
    for key, value in (
        ("disco/server/uri", fleet.server.uri),
        ("disco/client/cmds/rsync", fleet.server.rsync_command(key=fleet.keys[node])),
        *((k, v) for k, v in (extra[i : i + 2] for i in range(0, len(extra), 2))),
    ):
        result = cmd("disco-param", "--state-dir", str(state), "set", key, value)
        assert result.returncode == 0, result.stderr
    return cmd("disco", "--state-dir", str(state), "dance", "--node", node, "--noop",
               "--root", str(root), *flags)  # fmt: skip


def propose(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return as_server_user(fleet.server, "propose", *args)


def test_a_fleet_plans_a_candidate_and_the_server_groups_the_nodes_by_delta(
    cmd: Run, tmp_path: Path, fleet: Fleet, scratch_root: Path
) -> None:
    proposed = propose(fleet, "pr-1", str(fleet.candidate))
    assert proposed.returncode == 0, proposed.stderr
    assert "info: it affects 3 node(s): web01 web02 web03\n" in proposed.stdout
    assert "info: unaffected: db01\n" in proposed.stdout
    assert sorted(os.listdir(fleet.server.home / "candidates" / "pr-1")) == [
        "modules",
        "parameters",
    ]
    try:
        # web01 and web02 dance, and plan; db01 dances, and the candidate is not its own.
        for node in ("web01", "web02", "db01"):
            before = fleet.server.sessions()
            result = dance(cmd, tmp_path, fleet, node, scratch_root)
            assert result.returncode == 0, result.stderr
            assert "warning" not in result.stdout + result.stderr, result.stdout + result.stderr
            assert fleet.server.sessions() - before == 1  # dance, report, candidates: one
            if node == "db01":
                assert (
                    "info: Candidate pr-1 does not affect this node: not planned" in result.stdout
                )
            else:
                why = (
                    "its parameters differ; module ntp differs"
                    if node == "web02"
                    else "module ntp differs"
                )
                planned = f"info: Planned candidate pr-1 ({why}): pushed to plans/pr-1/{node}.json"
                assert f"{planned} on {fleet.server.uri}" in result.stdout.splitlines()
        assert sorted(os.listdir(fleet.plans())) == ["web01.json", "web02.json"]
        # A node plans a candidate once: again only when one of its trees changes.
        first = (fleet.plans() / "web01.json").read_bytes()
        stale = tmp_path / "state-web01" / ".candidate-killed"  # a dance killed mid-plan left it
        (stale / "tree").mkdir(parents=True)
        again = dance(cmd, tmp_path, fleet, "web01", scratch_root)
        assert not stale.exists()
        assert not list((tmp_path / "state-web01").glob(".candidate-*"))
        assert (
            "info: Candidate pr-1: planned already, and neither tree changed since" in again.stdout
        )
        assert (fleet.plans() / "web01.json").read_bytes() == first
        pushed = json.loads((fleet.plans() / "web01.json").read_text())
        assert pushed["node"] == "web01" and pushed["format_version"] == 1
        assert [d["path"] for d in pushed["delta"]] == ["/etc/ntp.conf"]
        assert pushed["delta"][0]["summary"] == "-1 +1" and "10.0.0.2" in pushed["delta"][0]["diff"]
        assert pushed["head"]["uri"] == f"{fleet.server.uri} candidate pr-1"
        assert pushed["exit"] == 2
        # The server groups them.
        text = as_server_user(fleet.server, "plan", "pr-1")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert lines[0] == ("info: candidate pr-1: 2 node(s) planned in 1 group(s), 1 not yet"
                            " planned, 1 unaffected")  # fmt: skip
        assert "report: /etc/ntp.conf -1 +1 on 2 nodes: web01 web02" in lines
        assert "-server 10.0.0.1 iburst" in lines and "+server 10.0.0.2 iburst" in lines
        assert "warning: not yet planned on 1 node(s): web03 (module ntp differs)" in lines
        assert (
            "info: unaffected: db01 (its modules and parameters are identical in both trees)"
            in lines
        )
        quiet = as_server_user(fleet.server, "plan", "pr-1", "--no-content", "--detailed-exitcodes")
        assert quiet.returncode == 2
        assert "10.0.0.2" not in quiet.stdout
        out = fleet.server.tmp / "out"
        out.mkdir(exist_ok=True)
        out.chmod(0o777)  # the server user writes there
        files = ("--junit", f"{out}/p.xml", "--markdown", f"{out}/p.md", "--html", f"{out}/p.html")
        document = as_server_user(fleet.server, "plan", "pr-1", "--json", *files)
        assert document.returncode == 0, document.stderr
        fleet_doc = json.loads(document.stdout)
        assert [g["nodes"] for g in fleet_doc["groups"]] == [["web01", "web02"]]
        assert fleet_doc["unplanned"] == [{"node": "web03", "reason": "module ntp differs"}]
        assert [n["node"] for n in fleet_doc["unaffected"]] == ["db01"]
        assert fleet_doc["exit"] == 2
        suites = ET.parse(out / "p.xml").getroot()
        names = sorted(str(s.get("name")) for s in suites.iter("testsuite"))
        assert names == ["disco plan web01", "disco plan web02", "not yet planned"]
        assert [
            c.get("classname") for c in suites.iter("testcase") if c.find("skipped") is not None
        ] == ["web03"]
        summary = (out / "p.md").read_text()
        assert "/etc/ntp.conf" in summary and "web03" in summary and len(summary) < 60_000
        assert "web01" in (out / "p.html").read_text()
    finally:
        withdrawn = as_server_user(fleet.server, "withdraw", "pr-1")
        assert withdrawn.returncode == 0, withdrawn.stderr
    assert not (fleet.server.home / "candidates" / "pr-1").exists() and not fleet.plans().exists()
    after = dance(cmd, tmp_path, fleet, "web03", scratch_root)
    assert after.returncode == 0 and "candidate" not in after.stdout.lower(), after.stdout


def test_a_nodes_key_reads_only_its_own_candidate_parameters_and_writes_only_its_own_plan(
    fleet: Fleet, tmp_path: Path
) -> None:
    assert propose(fleet, "pr-2", str(fleet.candidate)).returncode == 0
    try:
        down = tmp_path / "down"
        for part in ("mine", "ntp", "theirs", "all", "plans"):
            (down / part).mkdir(parents=True)
        mine = fleet.rsync("web01", "-r", "::candidates/pr-2/parameters/web01/", f"{down}/mine/")
        assert mine.returncode == 0, mine.stderr
        modules = fleet.rsync("web01", "-rl", "::candidates/pr-2/modules/ntp/", f"{down}/ntp/")
        assert modules.returncode == 0 and (down / "ntp" / "files" / "etc" / "ntp.conf").exists()
        assert os.readlink(down / "ntp" / "peek") == "../../parameters/web02"  # as it was
        for how in ("-rL", "-rk", "--copy-unsafe-links"):  # a link followed by the daemon
            followed = fleet.rsync(
                "web01", "-r", how, "::candidates/pr-2/modules/ntp/", f"{down}/theirs/"
            )
            assert followed.returncode != 0 and "refuse" in followed.stderr, how
        for source in (
            "::candidates/pr-2/parameters/web02/",
            "::candidates/pr-2/parameters/web02/parameters/secret",
            "::candidates/pr-2/parameters/web01/../web02/parameters/secret",
            "::parameters/web02/",
            "::candidates/pr-2/modules/ntp/peek/parameters/secret",
            "::candidates/pr-2/modules/ntp/peek/",
        ):
            got = fleet.rsync("web01", "-r", source, f"{down}/theirs/")
            assert got.returncode != 0, source
        assert fleet.rsync("web01", "-r", "::candidates/", f"{down}/all/").returncode == 0
        assert sorted(os.listdir(down / "all" / "pr-2" / "parameters")) == ["web01"]
        assert os.listdir(down / "theirs") == []
        assert SECRET not in "".join(p.read_text() for p in down.rglob("*") if p.is_file())
        # Writing: its own plan of an open candidate, and nothing else.
        forged = tmp_path / "web02.json"
        forged.write_text('{"forged": true}\n')
        own = tmp_path / "web01.json"
        own.write_text('{"mine": true}\n')
        assert fleet.rsync("web01", str(own), "::plans/pr-2/web01.json").returncode == 0
        for payload, dest in (
            (forged, "::plans/pr-2/web02.json"),
            (own, "::plans/pr-3/web01.json"),  # no such candidate: no directory made
            (own, "::plans/web01.json"),
            (own, "::plans/pr-2/../web01.json"),
            (own, "::candidates/pr-2/web01.json"),
        ):
            assert fleet.rsync("web01", str(payload), dest).returncode != 0, dest
        tree = tmp_path / "tree" / "pr-9"
        tree.mkdir(parents=True)
        shutil.copy(own, tree / "web01.json")
        assert fleet.rsync("web01", "-r", f"{tree.parent}/", "::plans/").returncode != 0
        assert fleet.rsync("web01", "-r", "::plans/", f"{down}/plans/").returncode != 0
        assert sorted(os.listdir(fleet.server.home / "plans")) == ["pr-2"]
        assert os.listdir(fleet.plans("pr-2")) == ["web01.json"]
    finally:
        assert as_server_user(fleet.server, "withdraw", "pr-2").returncode == 0


def test_a_node_with_candidates_turned_off_plans_none(
    cmd: Run, tmp_path: Path, fleet: Fleet, scratch_root: Path
) -> None:
    assert propose(fleet, "pr-3", str(fleet.candidate)).returncode == 0
    try:
        off = dance(
            cmd, tmp_path, fleet, "web03", scratch_root, "disco/client/plan/candidates", "false"
        )
        assert off.returncode == 0, off.stderr
        assert "candidate" not in (off.stdout + off.stderr).lower()
        assert os.listdir(fleet.plans("pr-3")) == []
        bad = dance(
            cmd, tmp_path, fleet, "web03", scratch_root, "disco/client/plan/candidates", "maybe"
        )
        assert bad.returncode == 0, bad.stderr  # a warning, never a failed dance
        assert (
            "warning: candidates: not planned: disco/client/plan/candidates is 'maybe'"
            in bad.stdout
        )
    finally:
        assert as_server_user(fleet.server, "withdraw", "pr-3").returncode == 0
