"""Per-node isolation on a real sshd (issue 4): the keys `disco-server add-node` installs.

A throw-away server user (tests/sshd.py) holds the seed's tree plus a second node,
other.example, with parameters of its own. `disco-server init`, `add-node` (one key per
node) and `check` run AS THAT USER, as an administrator runs them on a server: with
`runuser`, with the system's python3 on a copy of disco in a folder of the harness's own:
the checkout may live where only root can enter (a clone in root's home, or under
`mktemp -d`), and neither its src/ nor its .venv is the server user's to read. The
harness's own client key stays in authorized_keys without restrictions: the control that
shows sshd itself allows a shell, a pty and port forwarding (AllowTcpForwarding is turned on
for this module), so that what a node's key is refused, its authorized_keys line refuses.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import disco
from conftest import EXAMPLES, Run, assert_one_error, tree_snapshot
from sshd import LOOPBACK, SSHServer, free_port, ssh_server

NODE_A = "localhost.localdomain"  # the seed's node
NODE_B = "other.example"
SECRET = "other.example's own secret\n"
SEED = EXAMPLES / "seed"
# sshd keeps the first value it reads: these win over the harness's "no".
FORWARDING = ("AllowTcpForwarding yes", "AllowAgentForwarding yes")
SHORT = 10.0  # seconds for any one ssh or rsync: loopback answers at once


@dataclass(frozen=True)
class Served:
    server: SSHServer
    key_a: Path  # NODE_A's private key; its public half added with disco-server add-node
    key_b: Path  # NODE_B's
    setup: tuple[subprocess.CompletedProcess[str], ...]  # init, add-node A, add-node B

    @property
    def config(self) -> Path:
        return self.server.rsyncd_conf

    def ssh(self, key: Path) -> str:
        """The ssh command (one word) as the seed's rsync command names it, with `key`."""
        return shlex.split(self.server.rsync_command(key=key))[2]

    def rsync(self, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """A plain rsync through ssh with `key`, `::` paths relative to the server."""
        words = [
            a.replace("::", f"{self.server.uri}::", 1) if a.startswith("::") else a for a in args
        ]
        return run(["rsync", "-e", self.ssh(key), *words])

    def ssh_run(self, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """ssh with `key` to the server; `args`: options, then the remote command."""
        return run([*shlex.split(self.ssh(key)), *args[:-1], self.server.uri, args[-1]])


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=SHORT,
        check=False,
    )


def install_for(server: SSHServer) -> Path:
    """disco's package copied where the server's user can read it, as an administrator
    installs it for the system python (README): the harness's folder, not the checkout."""
    lib = server.tmp / "lib"
    shutil.copytree(
        Path(disco.__file__).resolve().parent,
        lib / "disco",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run(["chmod", "-R", "a+rX", str(lib)], check=True)
    return lib


def disco_server_argv(lib: Path) -> list[str]:
    """disco-server as the server's user runs it: /usr/bin/python3 on the copy in `lib`."""
    code = "import sys; from disco.cli.server import main; sys.exit(main())"
    return ["env", f"PYTHONPATH={lib}", "/usr/bin/python3", "-c", code]


def as_server_user(server: SSHServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`disco-server ARGS --config ~/rsyncd.conf` run by the server's user, in its home."""
    env = ["env", "-i", f"HOME={server.home}", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
    lib = server.tmp / "lib"
    argv = [*env, *disco_server_argv(lib), *args, "--config", str(server.rsyncd_conf)]
    return subprocess.run(
        ["runuser", "-u", server.user, "--", *argv],
        capture_output=True,
        text=True,
        cwd=server.home,
        timeout=60,
        check=False,
    )


def add_other_node(server: SSHServer) -> None:
    """parameters/other.example/: a parameter no other node may read, and a modules map."""
    node = server.home / "parameters" / NODE_B
    (node / "parameters").mkdir(parents=True)
    (node / "modules").mkdir()
    (node / "parameters" / "secret").write_text(SECRET)
    (node / "modules" / "testmodule-1.0").write_text("")
    subprocess.run(["chown", "-R", f"{server.user}:{server.user}", str(node)], check=True)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with ssh_server(SEED, sshd_options=FORWARDING) as server:
        add_other_node(server)
        install_for(server)
        key_a, key_b = server.new_key("node-a"), server.new_key("node-b")
        keys = str(server.home / ".ssh" / "authorized_keys")
        setup = (
            as_server_user(server, "init", str(server.home)),
            as_server_user(server, "add-node", NODE_A, f"{key_a}.pub", "--authorized-keys", keys),
            as_server_user(server, "add-node", NODE_B, f"{key_b}.pub", "--authorized-keys", keys),
        )
        yield Served(server, key_a, key_b, setup)


def log_since(server: SSHServer, mark: int) -> str:
    return server.log.read_bytes()[mark:].decode(errors="replace")


def log_mark(server: SSHServer) -> int:
    return server.log.stat().st_size


def logged(server: SSHServer, mark: int, text: str) -> bool:
    """Does the log show `text` after `mark`? sshd's monitor writes what a session's
    process reports a moment later: wait a little for it."""
    deadline = time.monotonic() + 3
    while text not in log_since(server, mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    return text in log_since(server, mark)


def configure(cmd: Run, state: Path, served: Served, key: Path) -> None:
    server = served.server
    for key_name, value in (
        ("disco/server/uri", server.uri),
        ("disco/client/cmds/rsync", server.rsync_command(key=key)),
    ):
        result = cmd("disco-param", "--state-dir", str(state), "set", key_name, value)
        assert result.returncode == 0, result.stderr


def noop_dance(cmd: Run, state: Path, node: str, root: Path) -> subprocess.CompletedProcess[str]:
    return cmd(
        "disco", "--state-dir", str(state), "dance", "--node", node, "--noop", "--root", str(root)
    )


def forced(served: Served, node: str) -> str:
    return f"rsync --server --daemon --config={served.server.home}/rsyncd.d/{node}.conf ."


def test_disco_server_run_by_the_server_user_installs_one_forced_key_per_node(
    served: Served,
) -> None:
    for result in served.setup:
        assert result.returncode == 0 and not result.stderr, result.stderr + result.stdout
    lines = (served.server.home / ".ssh" / "authorized_keys").read_text().splitlines()
    assert len(lines) == 3  # the harness's own key, then A's and B's
    for line, node, key in zip(lines[1:], (NODE_A, NODE_B), (served.key_a, served.key_b)):
        blob = Path(f"{key}.pub").read_text().split()[1]
        assert line.startswith(f'command="{forced(served, node)}",restrict ssh-ed25519 {blob} ')
    conf = (served.server.home / "rsyncd.d" / f"{NODE_A}.conf").read_text()
    assert f"filter = + /{NODE_A}/*** - *" in conf
    owner = served.server.home.stat().st_uid
    for path in (served.config, served.server.home / ".ssh" / "authorized_keys"):
        assert path.stat().st_uid == owner  # written by the server's user, not root


def test_a_nodes_key_dances_its_own_node_through_the_forced_command(
    cmd: Run, state: Path, served: Served, scratch_root: Path
) -> None:
    configure(cmd, state, served, served.key_a)
    mark, before = log_mark(served.server), served.server.sessions()
    result = noop_dance(cmd, state, NODE_A, scratch_root)
    assert result.returncode == 0, result.stderr
    assert "warning: Would execute : service postgresql stop" in result.stderr
    assert "info: Processing othermodule-3.2" in (result.stdout + result.stderr).splitlines()
    assert served.server.sessions() > before
    log = log_since(served.server, mark)
    started = [line for line in log.splitlines() if "Starting session:" in line]
    assert started and all(
        f"forced-command (key-option) '{forced(served, NODE_A)}'" in line for line in started
    ), log
    node = SEED / "parameters" / NODE_A
    assert tree_snapshot(state / "parameters" / NODE_A) == tree_snapshot(node)
    for module in ("testmodule-1.0", "othermodule-3.2"):
        assert tree_snapshot(state / "modules" / module) == tree_snapshot(SEED / "modules" / module)
    assert os.listdir(state / "parameters").count(NODE_B) == 0
    assert not (scratch_root / "etc" / "othermodule").exists()  # NOOP


def test_the_other_nodes_key_fetches_its_own_parameters(served: Served, tmp_path: Path) -> None:
    """The control for the next test: other.example's parameters are there, for its key."""
    result = served.rsync(served.key_b, "-a", f"::parameters/{NODE_B}/", f"{tmp_path}/got/")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got" / "parameters" / "secret").read_text() == SECRET


def test_a_nodes_key_gets_nothing_of_another_nodes_parameters(
    served: Served, tmp_path: Path
) -> None:
    attempts = {
        "direct": ["-a", f"::parameters/{NODE_B}/"],
        "dot-dot": ["-a", f"::parameters/{NODE_A}/../{NODE_B}/"],
        "module dot-dot": ["-a", f"::testmodule-1.0/../parameters/{NODE_B}/"],
        "whole module": ["-a", "::parameters/"],
        "include": ["-a", f"--include={NODE_B}/***", "::parameters/"],
        "main config": ["-a", f"--rsync-path=rsync --config={served.config}", "::parameters/"],
        "daemon options": [
            "-a",
            "--remote-option=--daemon",
            f"--remote-option=--config={served.config}",
            "::parameters/",
        ],
    }
    for name, args in attempts.items():
        dest = tmp_path / name.replace(" ", "-")
        dest.mkdir()
        result = served.rsync(served.key_a, *args, f"{dest}/")
        got = {str(p.relative_to(dest)) for p in dest.rglob("*")}
        assert not any(NODE_B in p or p.endswith("secret") for p in got), (name, got)
        assert SECRET.strip() not in result.stdout + result.stderr, name
        if name.startswith(("direct", "dot-dot", "module")):
            assert result.returncode != 0, (name, result.stderr)
    listing = served.rsync(served.key_a, "--list-only", "::parameters/")
    assert listing.returncode == 0, listing.stderr
    assert NODE_A in listing.stdout and NODE_B not in listing.stdout


def test_dancing_another_node_with_a_nodes_key_is_one_error(
    cmd: Run, state: Path, served: Served, scratch_root: Path
) -> None:
    configure(cmd, state, served, served.key_a)
    result = noop_dance(cmd, state, NODE_B, scratch_root)
    assert_one_error(result, 1, served.server.uri, NODE_B)
    copied = tree_snapshot(state)
    assert not any(NODE_B in path for path in copied), sorted(copied)
    assert not any(SECRET.encode() in data for _, data in copied.values())


def test_a_node_hidden_from_the_key_is_not_said_to_be_missing_from_the_server(
    cmd: Run, state: Path, served: Served, scratch_root: Path
) -> None:
    configure(cmd, state, served, served.key_a)
    result = noop_dance(cmd, state, NODE_B, scratch_root)
    assert_one_error(result, 1, served.server.uri, NODE_B)
    hint = result.stderr.partition("; ")[2]
    assert "key" in hint or "add-node" in hint, result.stderr


def test_a_nodes_key_runs_the_forced_rsync_instead_of_a_shell(served: Served) -> None:
    control = served.ssh_run(served.server.client_key, "id")  # the harness's free key
    assert control.returncode == 0 and "uid=" in control.stdout, control.stderr
    for command in (
        "id",
        "cat ~/.ssh/authorized_keys",
        f"cat parameters/{NODE_B}/parameters/secret",
    ):
        result = served.ssh_run(served.key_a, command)
        assert result.stdout.startswith("@RSYNCD: "), (command, result.stdout)  # rsync's hello
        assert "uid=" not in result.stdout and "ssh-ed25519" not in result.stdout, command
        assert SECRET.strip() not in result.stdout, command


def test_a_nodes_key_gets_no_pty(served: Served) -> None:
    # -tt: ask for a pty although ssh's stdin is no terminal (with -t, ssh would not ask).
    control = served.ssh_run(served.server.client_key, "-tt", "tty")
    if "PTY allocation request failed" in control.stderr:
        pytest.skip("this machine gives sshd no pseudo-terminals (no /dev/pts)")
    assert "/dev/pts/" in control.stdout, control.stderr
    result = served.ssh_run(served.key_a, "-tt", "tty")
    assert "PTY allocation request failed" in result.stderr, result.stderr
    assert "/dev/pts/" not in result.stdout


def forward_answers(served: Served, key: Path) -> tuple[bool, str]:
    """Open `ssh -N -L PORT:127.0.0.1:SSHD_PORT` with `key`; does a connection to PORT reach
    sshd (its banner comes back)? And what ssh said. The ssh is stopped before returning."""
    port = free_port()
    forward = f"{port}:{LOOPBACK}:{served.server.port}"
    argv = [*shlex.split(served.ssh(key)), "-N", "-L", forward, served.server.uri]
    ssh = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    banner = b""
    try:
        deadline = time.monotonic() + SHORT
        while time.monotonic() < deadline and ssh.poll() is None:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                    s.settimeout(2)
                    try:
                        banner = s.recv(64)
                    except OSError:
                        pass
                    break
            except OSError:
                time.sleep(0.05)  # ssh is not listening yet
    finally:
        ssh.terminate()
        try:
            _, err = ssh.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            ssh.kill()
            _, err = ssh.communicate()
    return banner.startswith(b"SSH-"), err.decode(errors="replace")


def test_a_nodes_key_cannot_forward_ports(served: Served) -> None:
    reached, said = forward_answers(served, served.server.client_key)
    assert reached, f"the control key could not forward: {said}"
    mark = log_mark(served.server)
    reached, said = forward_answers(served, served.key_a)
    assert not reached, said
    assert "open failed: administratively prohibited" in said, said
    remote = served.ssh_run(
        served.key_a, "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"0:{LOOPBACK}:22", "true"
    )
    assert remote.returncode == 255 and "remote port forwarding failed" in remote.stderr
    assert logged(served.server, mark, "refused local port forward")


def test_a_nodes_key_cannot_write(served: Served, tmp_path: Path) -> None:
    source = tmp_path / "planted"
    source.write_text("planted\n")
    before = tree_snapshot(served.server.home)
    said = []
    targets = ("parameters/x", f"parameters/{NODE_A}/", f"parameters/{NODE_B}/", "testmodule-1.0/")
    for target in targets:
        result = served.rsync(served.key_a, "-a", str(source), f"::{target}")
        assert result.returncode != 0, (target, result.stdout)
        # The daemon's "ERROR: module is read only" is sometimes lost when ssh closes
        # first (rsync's race, about 1 in 5 here): only an exit status then.
        assert not result.stderr or "read only" in result.stderr, (target, result.stderr)
        said.append(result.stderr)
    for _ in range(5):  # the message at least once: it is there, when not lost
        if any("read only" in text for text in said):
            break
        said.append(served.rsync(served.key_a, "-a", str(source), "::parameters/x").stderr)
    assert any("ERROR: module is read only" in text for text in said), said
    assert tree_snapshot(served.server.home) == before


def test_disco_server_check_finds_the_tree_consistent(served: Served) -> None:
    result = as_server_user(served.server, "check")
    assert result.returncode == 0 and not result.stderr, result.stderr + result.stdout
    assert result.stdout == f"info: server {served.server.home} is consistent\n"
