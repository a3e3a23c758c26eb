"""disco-fs-* and disco-sh-*: the seed's NOOP shell, kept between commands (DESIGN §7).

The real commands, run as root. Sessions go over a scratch root unless a test says
otherwise; every test leaves no mount behind, whatever happens to it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import select
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BIN, Run, assert_one_error, tree_snapshot
from disco.engine.mounts import read_mounts
from test_dance_steps import NODE as DANCED
from test_dance_steps import make_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, namespaces)")

NODE = "web1.example.com"
NOOP = {"NOOP": "true"}  # as the seed writes it; the commands imply it
PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
"""
SHADOW = """\
root:$6$not.a.hash:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
bin:*:19000:0:99999:7:::
"""
# The seed's session. The scratch root's /bin is a symlink into its read-only /usr, so
# the file the seed touched in /bin is touched in /srv.
SEED_SESSION = """\
umask 022
rm -f /etc/passwd
grep -v root /etc/shadow | tee tmpfile
mv tmpfile /etc/shadow
echo LOL > /var/lib/p0wnt
echo LOL | tee /var/lib/p0wnt2
touch /srv/myhotbash
exit
"""
OWN = ("etc", "var", "srv", "root", "home", "tmp")  # the scratch root's own dirs


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def mounts_under(path: Path) -> list[str]:
    top = os.path.realpath(path)
    return [m.mountpoint for m in read_mounts() if m.mountpoint.startswith(top + "/")]


@pytest.fixture(autouse=True)
def no_mount_left(cmd: Run, state: Path, tmp_path: Path) -> Iterator[None]:
    """Discard the test's session, even when the test failed; then no mount of it is left
    (the scratch root's own are gone by now: this fixture is torn down last)."""
    yield
    if os.path.ismount(state / "shell"):
        result = cmd("disco-fs-unmount")
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(state / "shell")], check=False)
            pytest.fail(f"disco-fs-unmount failed: {result.stderr}")
    assert mounts_under(tmp_path) == []


@pytest.fixture
def session(cmd: Run, scratch_root: Path) -> Path:
    """A session over the scratch root, for NODE; returns the root."""
    result = cmd("disco-fs-mount", "--root", str(scratch_root), "--node", NODE, env=NOOP)
    assert result.returncode == 0, result.stderr
    return scratch_root


def snapshot(root: Path) -> dict[str, dict[str, tuple[int, bytes]]]:
    return {name: tree_snapshot(root / name) for name in OWN}


# -- the seed's example ---------------------------------------------------------------


def test_the_seeds_session_is_reported_as_the_seed_shows_it(
    cmd: Run, scratch_root: Path, session: Path
) -> None:
    etc = scratch_root / "etc"
    (etc / "passwd").write_text(PASSWD)
    (etc / "shadow").write_text(SHADOW)
    os.chown(etc / "shadow", 0, 0)
    (etc / "shadow").chmod(0)
    before = snapshot(scratch_root)

    shell = cmd("disco-sh-shell", input=SEED_SESSION, env=NOOP)
    assert (shell.returncode, shell.stderr) == (0, "")
    assert shell.stdout == SHADOW.split("\n", 1)[1] + "LOL\n"  # grep | tee, echo | tee

    diff = cmd("disco-fs-diff", env=NOOP)
    assert (diff.returncode, diff.stderr) == (0, "")
    dev = f"{os.lstat(scratch_root / 'var/lib').st_dev:x}"

    def created(path: str, kind: str, content: str) -> str:
        return (
            f"info: File: file: {path} : Created : type=[{kind}] device=[{dev}] mode=[81a4]"
            f" selinux=[?] md5=[{md5(content)}] perms=[root:root 644]"
        )

    shadow = SHADOW.split("\n", 1)[1]
    assert diff.stdout.splitlines() == [
        "info: File: file: /etc/passwd : Deleted",
        f"1,{PASSWD.count(chr(10))}d0",
        *(f"< {line}" for line in PASSWD.splitlines()),
        f"info: File: file: /etc/shadow : Modified : md5=[{md5(SHADOW)} => {md5(shadow)}]"
        " perms=[root:root 0 => root:root 644] mode=[8000 => 81a4]",
        "(content hidden: sensitive)",
        created("/srv/myhotbash", "regular empty file", ""),
        created("/var/lib/p0wnt", "regular file", "LOL\n"),
        "0a1",
        "> LOL",
        created("/var/lib/p0wnt2", "regular file", "LOL\n"),
        "0a1",
        "> LOL",
    ]
    assert snapshot(scratch_root) == before


def test_a_session_on_the_real_root_leaves_it_as_it_was(
    cmd: Run, real_root_unchanged: None
) -> None:
    assert cmd("disco-fs-mount", "--node", NODE).returncode == 0
    shell = cmd("disco-sh-shell", input="rm -f /etc/passwd\necho x > /etc/disco-shell-test\n")
    assert (shell.returncode, shell.stderr) == (0, "")
    lines = cmd("disco-fs-diff").stdout.splitlines()
    headers = [line.split(" : ")[:2] for line in lines if line.startswith("info:")]
    assert headers == [
        ["info: File: file: /etc/disco-shell-test", "Created"],
        ["info: File: file: /etc/passwd", "Deleted"],
    ]
    assert not os.path.exists("/etc/disco-shell-test")


# -- the session ----------------------------------------------------------------------


def test_the_layer_is_kept_between_commands_until_unmount(
    cmd: Run, state: Path, session: Path, tmp_path: Path
) -> None:
    write = tmp_path / "write.sh"
    write.write_text("echo kept > /srv/note\n")  # no #!: run with bash
    read = tmp_path / "read.sh"
    read.write_text('#!/bin/sh\necho "$0 $*"\nexec cat /srv/note\n')
    read.chmod(0o755)
    assert cmd("disco-sh-exec", str(write)).returncode == 0
    result = cmd("disco-sh-exec", str(read), "-x", "--state-dir", "y")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "/var/disco/exec/read.sh -x --state-dir y\nkept\n"
    assert not (session / "srv/note").exists()

    unmounted = cmd("disco-fs-unmount")
    assert unmounted.stdout == f"info: NOOP session at {state / 'shell'} discarded\n"
    assert not (state / "shell").exists()
    assert cmd("disco-fs-mount", "--root", str(session)).returncode == 0
    result = cmd("disco-sh-exec", str(read))
    assert result.returncode == 1  # the script's: cat found nothing
    assert "/srv/note: No such file or directory" in result.stderr
    assert cmd("disco-fs-diff").stdout == ""


def test_commands_with_outside_effects_are_only_shown(cmd: Run, session: Path) -> None:
    # service by name and by path (the scratch root's stub would print "done"), and a
    # bash builtin; the shell's hostname is the node; its exit status is ours.
    script = "service x stop\n/usr/local/sbin/service y start\nkill -TERM 1\nhostname\nexit 5\n"
    result = cmd("disco-sh-shell", input=script)
    assert result.returncode == 5
    assert result.stdout == f"{NODE}\n"
    assert result.stderr.splitlines() == [
        "warning: Would execute : service x stop",
        "warning: Would execute : service y start",
        "warning: Would execute : kill -TERM 1",
    ]


def test_init_shows_the_parameters_a_dance_would(cmd: Run, state: Path, session: Path) -> None:
    for path, text in {
        "modules/base/parameters/base/greeting": "hello\n",
        "modules/app/parameters/app/colour": "red\n",
        "modules/app/requires": "after base\n",
        f"parameters/{NODE}/parameters/app/colour": "blue\n",  # the node's value wins
    }.items():
        (state / path).parent.mkdir(parents=True, exist_ok=True)
        (state / path).write_text(text)
    result = cmd("disco-fs-init", env=NOOP)
    shows = "info: /var/disco shows the parameters of node"
    assert result.stdout == f"{shows} {NODE} over the defaults of base app\n"
    script = (
        "p=/var/disco/parameters/$(hostname)/parameters\n"
        "cat $p/app/colour $p/base/greeting\nls /var/disco/modules\n"
    )
    assert cmd("disco-sh-shell", input=script).stdout == "blue\nhello\napp\nbase\n"

    result = cmd("disco-fs-init", "--node", "db1.example.com")
    assert result.stdout == f"{shows} db1.example.com over the defaults of base app\n"
    assert cmd("disco-sh-shell", input="hostname\n").stdout == "db1.example.com\n"


def test_without_node_the_session_is_the_last_dances_node(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"app": {"parameters/app/colour": "red\n"}},
                         {"app/colour": "blue\n"})  # fmt: skip
    argv = ("--server", str(server), "--node", DANCED, "--root", str(scratch_root))
    assert cmd("disco", "dance", "--noop", *argv).returncode == 0
    result = cmd("disco-fs-mount", "--root", str(scratch_root))
    assert result.returncode == 0, result.stderr
    assert f"info: node {DANCED}: the last dance's (--node NAME for another)" in result.stdout
    script = "hostname; cat /var/disco/parameters/$(hostname)/parameters/app/colour\n"
    assert cmd("disco-sh-shell", input=script).stdout == f"{DANCED}\nblue\n"


def test_on_a_terminal_the_shell_is_interactive(state: Path, session: Path) -> None:
    output, status = on_terminal(state, "echo $- > /srv/flags; type -t kill; exit 7\n")
    assert status == 7
    assert "(disco NOOP) " in output  # the prompt
    assert "function" in output  # builtins are caught in an interactive shell too
    assert "i" in (upper(state) / "srv/flags").read_text()
    assert (upper(state) / "root/.bash_history").is_file()  # as in the seed's report


def upper(state: Path) -> Path:
    return state / "shell/layer/upper"


def on_terminal(state: Path, typed: str) -> tuple[str, int]:
    """Run disco-sh-shell on a new pseudo-terminal, type `typed`, return what it showed."""
    master, slave = pty.openpty()
    env = {**os.environ, "DISCO_STATE": str(state), "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.Popen(
        [str(BIN / "disco-sh-shell")],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # its controlling tty
    )
    os.close(slave)
    os.write(master, typed.encode())
    output, deadline = b"", time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the terminal's last user has gone
                    break
                if not chunk:
                    break
                output += chunk
        return output.decode(errors="replace"), proc.wait(timeout=5)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["disco-fs-init"],
        ["disco-sh-shell"],
        ["disco-sh-exec", "/bin/true"],
        ["disco-fs-diff"],
        ["disco-fs-unmount"],
    ],
)
def test_without_a_session_each_command_says_to_mount_one(
    argv: list[str], cmd: Run, state: Path
) -> None:
    assert_one_error(cmd(*argv), 1, "no NOOP session", str(state / "shell"), "disco-fs-mount")
    assert not state.exists()


def test_mounting_twice_is_an_error_and_keeps_the_session(
    cmd: Run, state: Path, session: Path
) -> None:
    assert cmd("disco-sh-shell", input="echo kept > /srv/x\n").returncode == 0
    again = cmd("disco-fs-mount", "--root", str(session), "--node", NODE)
    assert_one_error(again, 1, "already mounted", str(state / "shell"), "disco-fs-unmount")
    assert "info: File: file: /srv/x : Created" in cmd("disco-fs-diff").stdout


def test_a_session_in_use_is_refused_with_status_3(cmd: Run, state: Path, session: Path) -> None:
    fd = os.open(state / "shell.lock", os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_one_error(cmd("disco-sh-shell", input="true\n"), 3, "in use", "exit its shell")
        assert cmd("disco-fs-diff").returncode == 0  # reading needs no lock
    finally:
        os.close(fd)


def test_exec_of_a_missing_script_is_an_error(cmd: Run, session: Path, tmp_path: Path) -> None:
    assert_one_error(cmd("disco-sh-exec", str(tmp_path / "nope.sh")), 1, "nope.sh", "not a file")
    assert_one_error(cmd("disco-sh-exec"), 2, "SCRIPT")


@pytest.mark.parametrize(
    "prog",
    ["disco-fs-mount", "disco-fs-init", "disco-sh-shell", "disco-sh-exec", "disco-fs-diff",
     "disco-fs-unmount"],
)  # fmt: skip
def test_help_shows_an_example(prog: str, cmd: Run) -> None:
    result = cmd(prog, "--help")
    assert result.returncode == 0
    assert prog in result.stdout.split("example:\n", 1)[1]
