"""The seed's transport for real: rsync daemon over ssh, against an sshd on loopback (issue 4).

The server (tests/sshd.py) is the seed's: a plain user whose ~/rsyncd.conf declares
[parameters], [testmodule-1.0] and [othermodule-3.2], reached as `user@127.0.0.1::MODULE`
through `rsync -e "ssh ..."` as disco/client/cmds/rsync names it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import EXAMPLES, Run, assert_one_error, tree_snapshot
from sshd import SSHServer, free_port, sshd_server, write_known_hosts

__all__ = ["sshd_server"]  # the harness's fixture: imported to be used by the tests below

SEED = EXAMPLES / "seed"
NODE = "localhost.localdomain"
# One ssh connection for the whole dance (OpenSSH connection sharing): the node's
# parameters and every module ride on it.
SESSIONS_PER_SEED_DANCE = 1
UNRESOLVABLE = "no-such-host.invalid"  # RFC 6761: never resolves


def configure(cmd: Run, state: Path, uri: str, rsync: str) -> None:
    """Point the client at a server, as an administrator does, with disco-param."""
    for key, value in (("disco/server/uri", uri), ("disco/client/cmds/rsync", rsync)):
        result = cmd("disco-param", "--state-dir", str(state), "set", key, value)
        assert result.returncode == 0, result.stderr


def dance(
    cmd: Run, state: Path, *args: str, noop: bool, debug: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {"NOOP": "true" if noop else ""}
    first = ("disco", "--debug") if debug else ("disco",)
    return cmd(*first, "--state-dir", str(state), "dance", "--node", NODE, *args, env=env)


def local_and_ssh(cmd: Run, tmp_path: Path, server: SSHServer) -> tuple[Path, Path]:
    """Two clients: one of the local-directory server examples/seed, one of the sshd."""
    local, ssh = tmp_path / "local", tmp_path / "ssh"
    configure(cmd, local, str(SEED), "rsync -aWH")
    configure(cmd, ssh, server.uri, server.rsync_command())
    return local, ssh


def shown(result: subprocess.CompletedProcess[str]) -> tuple[int, list[str], list[str]]:
    """What a dance showed, less the line that names the server it fetched from."""
    err = [line for line in result.stderr.splitlines() if "Fetched from server" not in line]
    out = [line for line in result.stdout.splitlines() if "Fetched from server" not in line]
    return result.returncode, out, err


def test_noop_seed_dance_over_ssh_shows_what_the_local_server_shows(
    cmd: Run, tmp_path: Path, sshd_server: SSHServer, real_root_unchanged: None
) -> None:
    local, ssh = local_and_ssh(cmd, tmp_path, sshd_server)
    expected = dance(cmd, local, noop=True)
    assert expected.returncode == 0, expected.stderr
    assert "warning: Would execute : service postgresql stop" in expected.stderr
    got = dance(cmd, ssh, noop=True)
    assert shown(got) == shown(expected)
    for tree in (f"parameters/{NODE}", "modules"):  # the local copies are the server's
        assert tree_snapshot(ssh / tree) == tree_snapshot(local / tree)


def test_live_seed_dance_over_ssh_does_what_the_local_server_does(
    cmd: Run, tmp_path: Path, sshd_server: SSHServer, scratch_root: Path
) -> None:
    local, ssh = local_and_ssh(cmd, tmp_path, sshd_server)
    stuff = scratch_root / "etc/othermodule/stuff.cfg"
    expected = dance(cmd, local, "--root", str(scratch_root), noop=False)
    assert expected.returncode == 0, expected.stderr
    assert "warning: Would execute : service postgresql stop" in expected.stderr
    written = stuff.read_bytes()
    subprocess.run(["rm", "-r", str(scratch_root / "etc/othermodule")], check=True)
    got = dance(cmd, ssh, "--root", str(scratch_root), noop=False)
    assert shown(got) == shown(expected)
    assert stuff.read_bytes() == written
    again = dance(cmd, ssh, "--root", str(scratch_root), "--detailed-exitcodes", noop=False)
    assert again.returncode == 0, again.stderr
    assert "info: File:" not in again.stdout + again.stderr


def test_a_dead_first_server_is_passed_over_and_the_answering_one_named(
    cmd: Run, tmp_path: Path, sshd_server: SSHServer, real_root_unchanged: None
) -> None:
    # The whole of 127.0.0.0/8 is loopback, but sshd listens on 127.0.0.1 only: the same
    # user and port on 127.0.0.2 is refused at once, like a server that is down.
    dead = f"{sshd_server.user}@127.0.0.2"
    state = tmp_path / "state"
    configure(cmd, state, f"{dead}\n{sshd_server.uri}\n", sshd_server.rsync_command())
    result = dance(cmd, state, noop=True)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    passed = [line for line in output.splitlines() if line.startswith("warning: ") and dead in line]
    assert len(passed) == 1 and "refused" in passed[0], output
    assert f"info: Fetched from server {sshd_server.uri}" in output.splitlines()
    assert "info: Processing othermodule-3.2" in output.splitlines()


@dataclass(frozen=True)
class Broken:
    """A way the server can be out of reach, and what its one error line must say."""

    uri: str
    rsync: str
    says: tuple[str, ...]  # in the message: what went wrong
    fix: tuple[str, ...]  # in the hint, after '; ': what to do


def refused(server: SSHServer, tmp: Path) -> Broken:
    port = free_port()
    return Broken(
        server.uri,
        server.rsync_command(port=port),
        ("Connection refused", f"port {port}"),
        ("disco/server/uri",),
    )


def wrong_key(server: SSHServer, tmp: Path) -> Broken:
    key = server.new_key("stranger")
    return Broken(
        server.uri, server.rsync_command(key=key), ("Permission denied",), ("authorized_keys",)
    )


def host_key_mismatch(server: SSHServer, tmp: Path) -> Broken:
    other = server.new_key("impostor")
    known_hosts = tmp / "known_hosts"
    write_known_hosts(known_hosts, server.port, other.with_suffix(".pub"))
    return Broken(
        server.uri,
        server.rsync_command(known_hosts=known_hosts),
        ("host key",),
        ("known_hosts",),
    )


def missing_module(server: SSHServer, tmp: Path) -> Broken:
    # modules/othermodule-3.2/ is on the server, but ~/rsyncd.conf does not export it.
    server.write_rsyncd_conf(leave_out=["othermodule-3.2"])
    fix = ("rsyncd.conf", "disco-server sync")
    return Broken(server.uri, server.rsync_command(), ("othermodule-3.2",), fix)


def unknown_host(server: SSHServer, tmp: Path) -> Broken:
    try:
        subprocess.run(["getent", "hosts", UNRESOLVABLE], capture_output=True, timeout=3)
    except subprocess.TimeoutExpired:
        pytest.skip("this machine's resolver is slow to fail without a network")
    return Broken(
        f"{server.user}@{UNRESOLVABLE}",
        server.rsync_command(),
        ("resolve",),
        ("disco/server/uri",),
    )


@pytest.mark.parametrize(
    "breaking",
    [
        pytest.param(refused, id="refused"),
        pytest.param(
            wrong_key,
            id="wrong-key",
        ),
        pytest.param(
            host_key_mismatch,
            id="host-key-mismatch",
        ),
        pytest.param(
            missing_module,
            id="missing-rsync-module",
        ),
        pytest.param(unknown_host, id="unknown-host"),
    ],
)
def test_an_unreachable_server_is_one_error_with_a_fix_and_keeps_the_last_good_copy(
    cmd: Run,
    tmp_path: Path,
    sshd_server: SSHServer,
    scratch_root: Path,
    breaking: Callable[[SSHServer, Path], Broken],
) -> None:
    # The last good copy comes from a dance of the seed's own tree (the same files as the
    # sshd serves, see the tests above), so that these errors are tested on their own.
    state = tmp_path / "state"
    configure(cmd, state, str(SEED), "rsync -aWH")
    good = dance(cmd, state, "--root", str(scratch_root), noop=True)
    assert good.returncode == 0, good.stderr
    before = tree_snapshot(state)
    try:
        broken = breaking(sshd_server, tmp_path)
        configure(cmd, state, broken.uri, broken.rsync)
        result = dance(cmd, state, "--root", str(scratch_root), noop=False)
    finally:
        sshd_server.write_rsyncd_conf()
    assert_one_error(result, 1, broken.uri)
    message, _, hint = result.stderr.lower().partition("; ")
    assert all(word.lower() in message for word in broken.says), result.stderr
    assert all(word.lower() in hint for word in broken.fix), result.stderr
    assert not (scratch_root / "etc/othermodule").exists(), "a failed fetch applied something"
    after = tree_snapshot(state)
    for path in set(before) | set(after):
        if not path.startswith("parameters/disco"):  # the settings we broke on purpose
            assert after.get(path) == before.get(path), path


def test_a_seed_dance_over_ssh_opens_one_connection_for_all_its_rsyncs(
    cmd: Run, tmp_path: Path, sshd_server: SSHServer, real_root_unchanged: None
) -> None:
    state = tmp_path / "state"
    configure(cmd, state, sshd_server.uri, sshd_server.rsync_command())
    for _ in range(2):  # a first dance, and one with every local copy there already
        before = sshd_server.sessions()
        result = dance(cmd, state, noop=True, debug=True)
        assert result.returncode == 0, result.stderr
        rsyncs = sum(line.startswith("debug: run: rsync ") for line in result.stderr.splitlines())
        # The node's parameters, each of the two modules, then the report's push and the
        # candidates' listing (which the seed's rsyncd.conf, without [reports] nor
        # [candidates], declines): all over one connection.
        assert rsyncs == 5
        assert sshd_server.sessions() - before == SESSIONS_PER_SEED_DANCE, result.stderr
    # The shared connection is closed when the dance ends: its socket is gone.
    control = Path(re.findall(r"ControlPath=(\S+)/%C", result.stderr)[-1])
    assert not control.exists() or not any(control.iterdir())


@pytest.mark.parametrize("how", ["uri", "flag"])
def test_the_ssh_port_comes_from_the_uri_or_a_flag(
    cmd: Run, tmp_path: Path, sshd_server: SSHServer, scratch_root: Path, how: str
) -> None:
    """Not only inside `rsync -e "ssh -p ..."`: user@host:PORT, or --port."""
    state = tmp_path / "state"
    words = sshd_server.rsync_command().split()
    rsync = " ".join(w for i, w in enumerate(words) if w != "-p" and words[i - 1] != "-p")
    assert "-p " not in rsync
    port = str(sshd_server.port)
    uri = f"{sshd_server.uri}:{port}" if how == "uri" else sshd_server.uri
    configure(cmd, state, uri, rsync)
    flags = ("--port", port) if how == "flag" else ()
    result = dance(cmd, state, "--root", str(scratch_root), *flags, noop=True)
    assert result.returncode == 0, result.stderr
    assert "info: Processing othermodule-3.2" in result.stdout
