"""A real OpenSSH server on loopback, serving a disco tree the way the seed does.

The seed's server is a plain user whose `~/rsyncd.conf` declares `[parameters]` and one
rsync module per disco ball; clients reach it as `user@host::MODULE` through `rsync -e ssh`.
`ssh_server()` builds exactly that for a test: a throw-away local user (`disco-t<random>`,
home in a temporary folder, shell /bin/sh) holding a copy of a server tree, its own host
and client keys, and `/usr/sbin/sshd` on 127.0.0.1 at a free port, logging to a file.
Whatever happens, it is taken down again: sshd and every process of the user killed, the
user removed with `userdel -r`, the temporary folder deleted.

    from sshd import SSHServer, sshd_server   # the fixture, module-scoped

    def test_x(sshd_server: SSHServer) -> None:
        sshd_server.uri                # disco-t1a2b3c@127.0.0.1
        sshd_server.rsync_command()    # for disco/client/cmds/rsync
        sshd_server.sessions()         # "Accepted publickey" lines in its log so far
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; its unit creates it
LOOPBACK = "127.0.0.1"
SEED = Path(__file__).resolve().parent.parent / "examples" / "seed"
ACCEPTED = "Accepted publickey for "

RSYNC_MODULE = """[{name}]
path = {path}
read only = true
comment = {comment}
list = yes
use chroot = false
"""


@dataclass(frozen=True)
class SSHServer:
    host: str
    port: int
    user: str
    home: Path  # ~user: parameters/, modules/<m>/, rsyncd.conf, .ssh/authorized_keys
    client_key: Path  # private key whose public half is in authorized_keys
    known_hosts: Path  # the server's host key for [host]:port, and nothing else
    log: Path  # sshd's own log (-E), LogLevel VERBOSE
    tmp: Path  # the harness's private folder: spare keys, config, pid file

    @property
    def uri(self) -> str:
        """The server as disco/server/uri names it: `user@host`."""
        return f"{self.user}@{self.host}"

    @property
    def rsyncd_conf(self) -> Path:
        return self.home / "rsyncd.conf"

    def rsync_command(
        self,
        *,
        port: int | None = None,
        key: Path | None = None,
        known_hosts: Path | None = None,
    ) -> str:
        """The value of disco/client/cmds/rsync reaching this server, in the seed's quoting
        style; `port`, `key` and `known_hosts` replace this server's to break one thing."""
        ssh = (
            f"ssh -p {port or self.port} -i {key or self.client_key}"
            f" -o UserKnownHostsFile={known_hosts or self.known_hosts}"
            " -o StrictHostKeyChecking=yes -o BatchMode=yes"
        )
        return f'rsync -qaWHe "{ssh}"'

    def sessions(self) -> int:
        """How many ssh sessions the server has accepted so far."""
        return count_sessions(self.log, self.user)

    def new_key(self, name: str) -> Path:
        """A fresh ed25519 key pair in the harness folder (the private half's path)."""
        return keygen(self.tmp / f"{name}-{secrets.token_hex(4)}", f"{name}@disco-test")

    def write_rsyncd_conf(self, leave_out: Iterable[str] = ()) -> None:
        """~/rsyncd.conf as the seed's: [parameters] and one entry per module of ~/modules,
        except `leave_out` (a server whose rsyncd.conf was not updated)."""
        write_rsyncd_conf(self.home, self.user, set(leave_out))


def count_sessions(log: Path, user: str | None = None) -> int:
    """The ssh sessions an sshd log shows: its "Accepted publickey for USER" lines."""
    prefix = ACCEPTED + (f"{user} " if user else "")
    return sum(prefix in line for line in log.read_text(errors="replace").splitlines())


@pytest.fixture(scope="module")
def sshd_server() -> Iterator[SSHServer]:
    """The seed's server (examples/seed) behind a real sshd on loopback, for one module."""
    with ssh_server(SEED) as server:
        yield server


@contextlib.contextmanager
def ssh_server(tree: Path = SEED, sshd_options: Iterable[str] = ()) -> Iterator[SSHServer]:
    """Serve `tree` (parameters/ and modules/, as examples/seed) over rsync+ssh.

    `sshd_options`: sshd_config lines that replace the harness's own (sshd keeps the first
    value it reads for a keyword), e.g. "AllowTcpForwarding yes" to show that a key's own
    restrictions, not the server's, refuse a port forward."""
    if os.geteuid() != 0:
        pytest.fail("the ssh tests create a user and start sshd: run them as root")
    if not SSHD.exists():
        pytest.fail(f"{SSHD} is missing: apt-get install openssh-server")
    tmp = Path(tempfile.mkdtemp(prefix="disco-sshd-"))
    tmp.chmod(0o755)  # the user must reach its home inside it
    user = f"disco-t{secrets.token_hex(3)}"
    uid: int | None = None  # set once the user is ours to remove
    sshd: subprocess.Popen[bytes] | None = None
    try:
        home = tmp / "home"
        options = "--no-create-home --shell /bin/sh --user-group --password *".split()
        useradd = ["useradd", *options, "--home-dir", str(home), "--comment", "disco test", user]
        subprocess.run(useradd, check=True, capture_output=True)
        uid = pwd.getpwnam(user).pw_uid
        client_key = keygen(tmp / "client", "client@disco-test")
        layout_home(tree, home, user, client_key.with_suffix(".pub"))
        host_key = keygen(tmp / "ssh_host_ed25519_key", "host@disco-test")
        sshd, port = start_sshd(tmp, user, home, host_key, sshd_options)
        known_hosts = tmp / "known_hosts"
        write_known_hosts(known_hosts, port, host_key.with_suffix(".pub"))
        yield SSHServer(LOOPBACK, port, user, home, client_key, known_hosts, tmp / "sshd.log", tmp)
    finally:
        teardown(tmp, user, uid, sshd)


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return path


def write_known_hosts(path: Path, port: int, public_key: Path) -> None:
    kind, blob = public_key.read_text().split()[:2]
    path.write_text(f"[{LOOPBACK}]:{port} {kind} {blob}\n")


def layout_home(tree: Path, home: Path, user: str, public_key: Path) -> None:
    """The seed's server home: ~/parameters, ~/modules/<m>, ~/rsyncd.conf, ~/.ssh."""
    home.mkdir(mode=0o755)
    shutil.copytree(tree / "parameters", home / "parameters", symlinks=True)
    shutil.copytree(tree / "modules", home / "modules", symlinks=True)
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text(public_key.read_text())
    (ssh / "authorized_keys").chmod(0o600)
    write_rsyncd_conf(home, user, set())
    subprocess.run(["chown", "-R", f"{user}:{user}", str(home)], check=True)


def write_rsyncd_conf(home: Path, user: str, leave_out: set[str]) -> None:
    entries = [
        RSYNC_MODULE.format(name="parameters", path=home / "parameters", comment="DISCO Parameters")
    ]
    for module in sorted(os.listdir(home / "modules")):
        if module not in leave_out:
            path = home / "modules" / module
            entries.append(RSYNC_MODULE.format(name=module, path=path, comment=module))
    conf = home / "rsyncd.conf"
    conf.write_text("\n".join(entries))
    shutil.chown(conf, user, user)


SSHD_CONFIG = """\
ListenAddress {host}
Port {port}
HostKey {host_key}
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {home}/.ssh/authorized_keys
AllowUsers {user}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTunnel no
LoginGraceTime 10
LogLevel VERBOSE
"""


def start_sshd(
    tmp: Path, user: str, home: Path, host_key: Path, options: Iterable[str] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """Start sshd in the foreground on a free loopback port; return it once it answers.
    `options`: sshd_config lines put first, so that they win over the harness's."""
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)  # sshd refuses to start without it
    config, log = tmp / "sshd_config", tmp / "sshd.log"
    for _ in range(3):  # another program may take the free port before sshd binds it
        port = free_port()
        config.write_text(
            "".join(f"{option}\n" for option in options)
            + SSHD_CONFIG.format(
                host=LOOPBACK, port=port, host_key=host_key, tmp=tmp, home=home, user=user
            )
        )
        sshd = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(config), "-E", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if answers(port, sshd):
            return sshd, port
        stop(sshd)
    text = log.read_text(errors="replace") if log.exists() else "(no log)"
    raise RuntimeError(f"sshd did not start on {LOOPBACK}:\n{text}")


def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def answers(port: int, sshd: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    """Wait until sshd sends its banner on `port`; False if it died or stayed silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sshd.poll() is None:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (sshd's per-connection processes)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def processes_of(uid: int) -> list[int]:
    """The processes running as `uid` (real, effective, saved or filesystem)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path("/proc", entry, "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            zombie = fields.get("State", "").split()[:1] == ["Z"]  # dead, waiting for reaping
            if not zombie and str(uid) in fields.get("Uid", "").split():
                pids.append(int(entry))
    return pids


def kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def teardown(tmp: Path, user: str, uid: int | None, sshd: subprocess.Popen[bytes] | None) -> None:
    """Stop sshd and its sessions, remove the user and the temporary folder; check it.

    Only processes this harness started are killed, each by its pid: sshd, its
    descendants, and whatever runs as the user it created."""
    problems = []
    if sshd is not None:
        kill(children(sshd.pid))
        stop(sshd)
    if uid is not None:
        kill(processes_of(uid))
        deadline = time.monotonic() + 5
        while processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if processes_of(uid):
            problems.append(f"processes of {user} outlived the test: {processes_of(uid)}")
        done = subprocess.run(["userdel", "-r", user], capture_output=True, text=True)
        if subprocess.run(["getent", "passwd", user], capture_output=True).returncode == 0:
            problems.append(f"userdel -r {user} failed: {done.stderr.strip()}")
        if subprocess.run(["getent", "group", user], capture_output=True).returncode == 0:
            subprocess.run(["groupdel", user], capture_output=True, check=False)
    shutil.rmtree(tmp, ignore_errors=True)
    if problems:
        raise RuntimeError("; ".join(problems))
