"""disco-server end to end: the installed command on server trees in a temporary folder.

Every run passes --config (and --authorized-keys) and points HOME at the test's folder:
nothing here touches this machine's ~/rsyncd.conf or ~/.ssh.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import EXAMPLES, Run, assert_one_error, tree_snapshot

NODE = "localhost.localdomain"
NOTE = "# Written by disco-server; 'disco-server sync' rewrites it, keeping each comment."

# `disco-server init` on a copy of the seed's example: the seed's rsyncd.conf, its modules
# in name order, with a header that remembers the server directory.
SEED_CONFIG = f"""\
# disco-server: {{root}}
{NOTE}

[parameters]
path = {{root}}/parameters
read only = true
comment = DISCO Parameters
list = yes
use chroot = false

[othermodule-3.2]
path = {{root}}/modules/othermodule-3.2
read only = true
comment = v3.2 of othermodule
list = yes
use chroot = false

[testmodule-1.0]
path = {{root}}/modules/testmodule-1.0
read only = true
comment = v1.0 of testmodule
list = yes
use chroot = false
"""

# The same for one node: [parameters] shows only parameters/NODE/.
NODE_CONFIG = SEED_CONFIG.replace(
    "# disco-server: {root}\n", f"# disco-server: {{root}}\n# disco-server node: {NODE}\n"
).replace(
    "use chroot = false\n\n[other",
    f"""use chroot = false
filter = + /{NODE}/*** - *

[reports]
path = {{root}}/reports/{NODE}
read only = false
write only = true
comment = dance reports of {NODE}
list = no
use chroot = false
munge symlinks = yes
filter = + /last.json - *
refuse options = delete* remove-source-files links
incoming chmod = D750,F640

[candidates]
path = {{root}}/candidates
read only = true
comment = candidate trees under review
list = no
use chroot = false
filter = + /*/parameters/{NODE}/*** - /*/parameters/**
munge symlinks = yes
refuse options = copy-links copy-dirlinks copy-unsafe-links

[plans]
path = {{root}}/plans
read only = false
write only = true
comment = candidate plans of {NODE}
list = no
use chroot = false
munge symlinks = yes
filter = + /*/{NODE}.json - *
refuse options = delete* remove-source-files links
incoming chmod = D750,F640

[other""",
)


# After `sync` with modules/nginx-1.0 and modules/base added, modules/testmodule-1.0 removed.
SYNCED_CONFIG = f"""\
# disco-server: {{root}}
{NOTE}

[parameters]
path = {{root}}/parameters
read only = true
comment = DISCO Parameters
list = yes
use chroot = false

[base]
path = {{root}}/modules/base
read only = true
comment = disco module base
list = yes
use chroot = false

[nginx-1.0]
path = {{root}}/modules/nginx-1.0
read only = true
comment = v1.0 of nginx
list = yes
use chroot = false

[othermodule-3.2]
path = {{root}}/modules/othermodule-3.2
read only = true
comment = v3.2 of othermodule
list = yes
use chroot = false
"""


def make_key(comment: str = "root@web1", seed: int = 1) -> str:
    """An ed25519 public key line, as ssh-keygen writes it (the key bytes are made up)."""
    blob = b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes([seed]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}".rstrip() + "\n"


class Server:
    """A copy of the seed's server in tmp_path, and disco-server pointed at a home there."""

    def __init__(self, tmp_path: Path, cmd: Run) -> None:
        self.root = tmp_path / "srv"
        self.home = tmp_path / "home"
        self.config = self.home / "rsyncd.conf"
        self.keys = self.home / ".ssh" / "authorized_keys"
        self.cmd = cmd
        shutil.copytree(EXAMPLES / "seed", self.root)
        (self.root / "rsyncd.conf").unlink()
        self.home.mkdir()

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        extra = ["--authorized-keys", str(self.keys)] if argv[0] == "add-node" else []
        env = {"HOME": str(self.home)}
        return self.cmd("disco-server", *argv, "--config", str(self.config), *extra, env=env)

    def ok(self, *argv: str) -> str:
        result = self.run(*argv)
        assert result.returncode == 0 and not result.stderr, result.stderr
        return result.stdout

    def add_node(self, node: str = NODE, key: str | None = None) -> Path:
        path = self.home / f"{node}.pub"
        path.write_text(key or make_key())
        self.ok("add-node", node, str(path))
        return self.home / "rsyncd.d" / f"{node}.conf"

    def expected(self, text: str) -> str:
        return text.replace("{root}", str(self.root))


@pytest.fixture
def srv(tmp_path: Path, cmd: Run) -> Server:
    return Server(tmp_path, cmd)


def sections(text: str) -> list[list[str]]:
    """Each [module] of a daemon config: its name, then its setting names in order."""
    found: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("["):
            found.append([line])
        elif " = " in line and found:
            found[-1].append(line.split(" = ")[0])
    return found


def test_init_writes_the_seeds_rsyncd_conf(srv: Server) -> None:
    before = tree_snapshot(srv.root)
    out = srv.ok("init", str(srv.root))
    assert out == f"info: Wrote {srv.config}: [parameters] and 2 modules\n"
    assert srv.config.read_text() == srv.expected(SEED_CONFIG)
    assert tree_snapshot(srv.root) == before  # what exists is kept
    seed = (EXAMPLES / "seed" / "rsyncd.conf").read_text()
    assert sorted(sections(srv.config.read_text())) == sorted(sections(seed))
    assert sorted(os.listdir(srv.home)) == ["rsyncd.conf"]  # no temporary file left


def test_init_lays_out_a_new_server(srv: Server, tmp_path: Path) -> None:
    new = tmp_path / "new" / "disco"
    srv.ok("init", str(new))
    assert sorted(os.listdir(new)) == ["modules", "parameters"]
    assert srv.config.read_text() == (
        f"# disco-server: {new}\n{NOTE}\n\n"
        f"[parameters]\npath = {new}/parameters\nread only = true\n"
        "comment = DISCO Parameters\nlist = yes\nuse chroot = false\n"
    )


def test_sync_follows_modules_added_and_removed(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    (srv.root / "modules" / "nginx-1.0").mkdir()
    (srv.root / "modules" / "base").mkdir()
    shutil.rmtree(srv.root / "modules" / "testmodule-1.0")
    out = srv.ok("sync")  # the DIR remembered by init
    assert out == f"info: Wrote {srv.config}: [parameters] and 3 modules\n"
    assert srv.config.read_text() == srv.expected(SYNCED_CONFIG)


def test_sync_keeps_the_comments_an_admin_wrote(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    text = srv.config.read_text().replace("v1.0 of testmodule", "v1.0 of the Test module")
    srv.config.write_text(text.replace("list = yes", "list = no"))
    srv.ok("sync", str(srv.root))
    assert srv.config.read_text() == srv.expected(SEED_CONFIG).replace(
        "v1.0 of testmodule", "v1.0 of the Test module"
    )


def test_sync_refuses_module_names_rsync_cannot_serve(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    before = srv.config.read_text()
    (srv.root / "modules" / "bad name").mkdir()
    (srv.root / "modules" / "parameters").mkdir()
    result = srv.run("sync")
    assert_one_error(result, 1, "'bad name'", "' '", "'parameters' is reserved", "rename")
    assert srv.config.read_text() == before


def test_sync_without_a_server_directory_says_how_to_name_one(srv: Server, tmp_path: Path) -> None:
    assert_one_error(srv.run("sync"), 1, str(srv.config), "disco-server sync DIR")
    assert_one_error(srv.run("sync", str(tmp_path)), 1, "not a disco server", "init")
    assert not srv.config.exists()


def test_add_node_gives_the_key_a_forced_read_only_rsync_daemon(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    srv.keys.parent.mkdir(mode=0o755)
    srv.keys.write_text("ssh-rsa AAAAB3Nza admin@desk\n")
    (srv.home / "web1.pub").write_text(make_key("root@web1"))
    out = srv.ok("add-node", NODE, str(srv.home / "web1.pub"))
    conf = srv.home / "rsyncd.d" / f"{NODE}.conf"
    assert out == (
        f"info: Wrote {conf}: {NODE} sees parameters/{NODE}/ and the modules\n"
        f"info: Added the key of {NODE} in {srv.keys}\n"
    )
    assert conf.read_text() == srv.expected(NODE_CONFIG)
    assert srv.keys.read_text() == (
        "ssh-rsa AAAAB3Nza admin@desk\n"
        f'command="rsync --server --daemon --config={conf} .",restrict ' + make_key("root@web1")
    )
    assert stat.S_IMODE(srv.keys.stat().st_mode) == 0o600
    assert stat.S_IMODE(srv.keys.parent.stat().st_mode) == 0o755  # an existing ~/.ssh is kept


def test_add_node_creates_ssh_dir_and_authorized_keys_private(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    srv.add_node()
    assert stat.S_IMODE(srv.keys.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(srv.keys.stat().st_mode) == 0o600


def test_add_node_twice_keeps_one_line_per_key(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    srv.add_node(key=make_key("old comment"))
    srv.add_node("other.example", key=make_key("another key", seed=2))
    first = srv.keys.read_text().splitlines()
    out = srv.run("add-node", NODE, str(srv.home / f"{NODE}.pub")).stdout
    assert "info: Replaced the key of" in out
    srv.add_node(key=make_key("new comment"))
    lines = srv.keys.read_text().splitlines()
    assert len(lines) == 2 and lines[1] == first[1]
    assert lines[0] == first[0].replace("old comment", "new comment")


def test_add_node_before_its_parameters_exist_warns(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    (srv.home / "k.pub").write_text(make_key(""))
    result = srv.run("add-node", "web9.example", str(srv.home / "k.pub"))
    assert result.returncode == 0
    assert "warning: no parameters/web9.example/ on this server yet" in result.stdout
    assert srv.keys.read_text().endswith(" web9.example\n")  # the key had no comment


PRIVATE = "\n".join(["-----BEGIN OPENSSH PRIVATE KEY-----", "b3BlbnNzaC1rZXktdjEAAAAA", "-----END"])
BAD_KEYS = {
    "empty": "",
    "private": PRIVATE,
    "two keys": make_key("a") + make_key("b", seed=2),
    "options first": 'from="10.0.0.1" ' + make_key(),
    "unknown type": make_key().replace("ssh-ed25519 ", "ssh-foo ", 1),
    "not base64": "ssh-ed25519 AAAA$$$$ root@web1\n",
    "type and blob disagree": make_key().replace("ssh-ed25519 ", "ssh-rsa ", 1),
    "no key": "ssh-ed25519\n",
}


@pytest.mark.parametrize("name", sorted(BAD_KEYS))
def test_add_node_refuses_what_is_not_one_public_key(srv: Server, name: str) -> None:
    srv.ok("init", str(srv.root))
    path = srv.home / "key.pub"
    path.write_text(BAD_KEYS[name])
    result = srv.run("add-node", NODE, str(path))
    assert_one_error(result, 2, str(path))
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in result.stderr  # a private key is never echoed
    assert not srv.keys.exists() and not (srv.home / "rsyncd.d").exists()


def test_add_node_refuses_a_bad_node_name_and_a_missing_setup(srv: Server) -> None:
    (srv.home / "k.pub").write_text(make_key())
    assert_one_error(srv.run("add-node", NODE, str(srv.home / "k.pub")), 1, "disco-server init")
    srv.ok("init", str(srv.root))
    assert_one_error(srv.run("add-node", "../x", str(srv.home / "k.pub")), 2, "'../x'")
    assert not srv.keys.exists()


def test_sync_rewrites_every_node_config(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    conf = srv.add_node()
    (srv.root / "modules" / "nginx-1.0").mkdir()
    out = srv.ok("sync")
    assert out.splitlines()[1] == (
        f"info: Wrote {conf} for node {NODE}: [parameters], [reports], [candidates], [plans]"
        " and 3 modules"
    )
    assert "[nginx-1.0]" in conf.read_text()
    assert f"filter = + /{NODE}/*** - *" in conf.read_text()


def test_check_a_consistent_server(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    srv.add_node()
    assert srv.ok("check") == f"info: server {srv.root} is consistent\n"


def check_lines(srv: Server) -> list[str]:
    result = srv.run("check")
    assert result.returncode == 1 and not result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("warning: ") for line in lines), lines
    return [line[len("warning: ") :] for line in lines]


def test_check_finds_a_stale_config(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    (srv.root / "modules" / "nginx-1.0").mkdir()
    shutil.rmtree(srv.root / "modules" / "testmodule-1.0")  # also missing for the node
    fix = f"run 'disco-server sync {srv.root}'"
    assert check_lines(srv)[:2] == [
        f"module 'nginx-1.0' has no rsync entry in {srv.config} (stale); {fix}",
        f"rsync entry [testmodule-1.0] in {srv.config} has no module (stale); {fix}",
    ]


def test_check_finds_a_module_missing_through_requires(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    (srv.root / "parameters" / NODE / "modules" / "testmodule-1.0").unlink()
    shutil.rmtree(srv.root / "modules" / "testmodule-1.0")
    srv.ok("sync")
    assert check_lines(srv) == [
        f"module 'testmodule-1.0' is missing (node '{NODE}' -> othermodule-3.2 -> "
        "testmodule-1.0); add modules/testmodule-1.0, or remove it where it is required"
    ]


def test_check_finds_a_requires_cycle(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    (srv.root / "modules" / "testmodule-1.0" / "requires").write_text("othermodule-3.2\n")
    assert check_lines(srv) == [
        "requires cycle: othermodule-3.2 -> testmodule-1.0 -> othermodule-3.2; "
        "break it by removing one of these requirements"
    ]


def test_check_names_every_requires_cycle_in_one_run(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    for name, requires in {"a": "b", "b": "a", "c": "d", "d": "c", "e": "e"}.items():
        (srv.root / "modules" / name).mkdir()
        (srv.root / "modules" / name / "requires").write_text(f"{requires}\n")
    srv.ok("sync")
    fix = "break it by removing one of these requirements"
    assert check_lines(srv) == [
        f"requires cycle: a -> b -> a; {fix}",
        f"requires cycle: c -> d -> c; {fix}",
        f"requires cycle: e -> e; {fix}",
    ]


def test_check_names_at_most_20_cycles_of_a_tangle(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    names = ["a", "b", "c", "d", "e"]  # each requires every other: 84 cycles
    for name in names:
        (srv.root / "modules" / name).mkdir()
        (srv.root / "modules" / name / "requires").write_text(
            "".join(f"{other}\n" for other in names if other != name)
        )
    srv.ok("sync")
    lines = check_lines(srv)
    assert len(lines) == 21 and lines[0].startswith("requires cycle: a -> b -> a;")
    assert lines[-1] == "more requires cycles than these 20; break these, then check again"


def test_check_finds_bad_names_and_keys_without_parameters(srv: Server) -> None:
    srv.ok("init", str(srv.root))
    (srv.root / "parameters" / "bad node").mkdir()
    (srv.root / "parameters" / NODE / "modules" / "a:b").touch()
    (srv.root / "parameters" / NODE / "modules" / ".gitkeep").touch()  # not a module
    (srv.root / "parameters" / NODE / "modules" / "..evil").touch()  # not hidden: bad
    srv.add_node("gone.example")
    lines = check_lines(srv)
    assert len(lines) == 4, lines
    assert lines[0].startswith("node 'gone.example' has a key but no parameters/gone.example/")
    assert lines[1].startswith("node name 'bad node' contains ' '")
    assert lines[2].startswith(f"node '{NODE}': module name '..evil' starts with '.'")
    assert lines[3].startswith(f"node '{NODE}': module name 'a:b' contains ':'")


def test_every_verb_has_help_with_an_example(cmd: Run) -> None:
    for verb in ("init", "sync", "add-node", "check"):
        result = cmd("disco-server", verb, "--help")
        assert result.returncode == 0 and "example:\n  disco-server " in result.stdout
        assert "--state-dir" not in result.stdout  # the client's state: not a server's


@pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")
def test_a_nodes_key_fetches_its_own_parameters_only_and_cannot_write(
    srv: Server, tmp_path: Path
) -> None:
    """The real rsync, through a stand-in for ssh that runs the key's forced command as
    sshd would (`sh -c COMMAND`, whatever the client asked to run)."""
    other = srv.root / "parameters" / "other.example" / "parameters"
    other.mkdir(parents=True)
    (other / "secret").write_text("other's secret\n")
    srv.ok("init", str(srv.root))
    srv.add_node()
    forced = re.match(r'command="([^"]*)",restrict ', srv.keys.read_text())
    assert forced is not None
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(f"#!/bin/sh\nexec /bin/sh -c {shlex.quote(forced[1])}\n")
    ssh.chmod(0o755)
    before = tree_snapshot(srv.root)

    def rsync(*args: str) -> subprocess.CompletedProcess[str]:
        argv = ["rsync", f"--rsh={ssh}", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    got = tmp_path / "got"
    result = rsync("-a", f"disco@server::parameters/{NODE}/", f"{got}/")
    assert result.returncode == 0, result.stderr
    assert (got / "parameters" / "something").read_text() == (
        EXAMPLES / "seed" / "parameters" / NODE / "parameters" / "something"
    ).read_text()
    result = rsync("-a", "disco@server::othermodule-3.2/", f"{tmp_path / 'module'}/")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "module" / "requires").exists()

    for source in ("parameters/other.example/", f"parameters/{NODE}/../other.example/"):
        result = rsync("-a", f"disco@server::{source}", f"{tmp_path / 'stolen'}/")
        assert result.returncode != 0 and not (tmp_path / "stolen").exists(), source
    result = rsync("-a", "disco@server::parameters/", f"{tmp_path / 'all'}/")
    assert result.returncode == 0 and os.listdir(tmp_path / "all") == [NODE]
    result = rsync(
        "-a", "--include=other.example/***", "disco@server::parameters/", f"{tmp_path / 'inc'}/"
    )
    assert os.listdir(tmp_path / "inc") == [NODE]

    for target in ("parameters/x/", f"parameters/{NODE}/", "testmodule-1.0/"):
        result = rsync("-a", f"{got}/", f"disco@server::{target}")
        assert result.returncode != 0 and "read only" in result.stderr, result.stderr
    assert tree_snapshot(srv.root) == before
