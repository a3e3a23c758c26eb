"""Hostile probes that would stop or hang the dance itself (issue 21; probes.py says how).

A step is a session and a process group of its own (its `kill 0` reaches no process of
disco's), nothing it prints changes how disco reads its stderr, no pipe of disco's is
open in it, and on a terminal it has no controlling terminal (no /dev/tty, no TIOCSTI).
Each probe runs in a dance of its own, with a module after it that must still run; the
dance has a session of its own, so a probe that gets out stops nothing but that dance.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BIN
from probes import (
    AFTER,
    SCRATCH,
    SOLO_TIMEOUT,
    Dances,
    Env,
    Probe,
    Result,
    assert_held,
    dance_argv,
    environment,
    pairs,
    py,
    root_only,
    server_of,
    solo,
    stopped,
    x86_64,
)

pytestmark = [root_only, x86_64]

# fmt: off
PROBES = [
    Probe("trap-kill0", "process group",
          "`trap 'kill 0' EXIT`, as scripts do to end their helpers: it must reach no process"
          " of disco's",
          "trap 'builtin kill -TERM 0' EXIT\n"),
    Probe("killpg-hup", "process group",
          "SIGHUP its process group (as a hung-up terminal would)",
          'echo "PROBE-DONE $P"\n'
          "python3 -c 'import os, signal; os.killpg(os.getpgid(0), signal.SIGHUP)'\n"),
    Probe("fd-half-message", "file descriptors",
          "write half a message (a length, then three bytes) to every pipe it inherited"
          " open for writing: the dance must not stall, and --timeout must hold",
          py(r"""
for n in sorted(int(x) for x in os.listdir("/proc/self/fd")):
    if n <= 2:
        continue
    try:
        what = os.readlink(f"/proc/self/fd/{n}")
        flags = int(read(f"/proc/self/fdinfo/{n}").split()[3], 8)
    except (OSError, ValueError, AttributeError, IndexError):
        continue
    if what.startswith("pipe:") and flags & 3 == os.O_WRONLY:
        os.write(n, struct.pack("<Q", 1000) + b"abc")
        escaped("wrote half a message into inherited fd", n)
""")),
    Probe("stderr-end-marker", "output",
          "print disco's own end-of-stderr marker: later modules' `Would execute` lines must"
          " still be seen, and their stderr still read",
          r"printf '\0disco-end\n' >&2" "\n",
          then={"scripts/10-more.sh": "service probe-then restart\n"
                                      "head -c 200000 /dev/zero | tr '\\0' x >&2\n"}),
    Probe("stderr-module-marker", "output",
          "print disco's between-modules marker naming another module: its own `Would"
          " execute` lines must still be counted for its own module",
          r"printf '\0disco-module:forged\n' >&2" "\nservice probe-self restart\n"),
]
TERMINAL = [
    Probe("pty-dev-tty", "terminal",
          "open /dev/tty: the step has no controlling terminal, disco's least of all",
          r"""
# Read-only: `<>` would create a plain file where there is none.
if (exec 3</dev/tty) 2>/dev/null; then escaped "opened its controlling terminal"; fi
""", modes=SCRATCH),
    Probe("pty-ctty", "terminal",
          "the step's processes have no controlling terminal (/proc/self/stat tty_nr)",
          py(r"""
tty_nr = int(read(f"/proc/{SCRIPT}/stat").rsplit(b")", 1)[1].split()[4])
if tty_nr:
    escaped("has a controlling terminal", hex(tty_nr))
"""), modes=SCRATCH),
    Probe("pty-tiocsti", "terminal",
          "push input into disco's terminal with TIOCSTI (on its own fds and /dev/tty)",
          py(r"""
import termios
fds = [0, 1, 2]
try:
    fds.append(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
except OSError:
    pass
for fd in fds:
    if os.isatty(fd):
        try:
            fcntl.ioctl(fd, termios.TIOCSTI, b" ")
            escaped("pushed input into the terminal on fd", fd)
        except OSError:
            pass
"""), modes=SCRATCH),
    Probe("pty-steal", "terminal",
          "take disco's terminal as its own controlling terminal (TIOCSCTTY, stealing)",
          py(r"""
import termios
os.setsid()
for fd in (0, 1, 2):
    if os.isatty(fd):
        try:
            fcntl.ioctl(fd, termios.TIOCSCTTY, 1)
            escaped("took disco's terminal from fd", fd)
            break
        except OSError:
            pass
"""), modes=SCRATCH),
]
# fmt: on
AFTER_EFFECT = AFTER + "service probe-after restart\n"


def would_execute(env: Env) -> list[tuple[str, str]]:
    """(module, command) of each `Would execute` of the dance, as `disco report` keeps them."""
    report = subprocess.run(
        [str(BIN / "disco"), "report", "--json", "--state-dir", str(env.host.state)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if report.returncode != 0:
        return []
    return [(w["module"], w["command"]) for w in json.loads(report.stdout)["would_execute"]]


KEPT = {  # the `Would execute` lines that must be kept, with their module
    "stderr-end-marker": [("p01-stderr-end-marker-2", "service probe-then restart")],
    "stderr-module-marker": [("p01-stderr-module-marker", "service probe-self restart")],
}


def markers_kept(env: Env, probe: Probe) -> list[str]:
    """The `Would execute` lines of the probe's module and of the later ones, each with its
    own module."""
    wanted = [*KEPT[probe.name], ("zz-after", "service probe-after restart")]
    got = would_execute(env)
    return [f"`Would execute` of {w} not kept (kept: {got})" for w in wanted if w not in got]


@pytest.mark.probe
@pytest.mark.parametrize(("mode", "probe"), pairs(PROBES))
def test_a_step_cannot_stop_or_stall_the_dance(mode: str, probe: Probe, tmp_path: Path) -> None:
    with environment(mode, tmp_path) as env:
        result = solo(env, probe, after=AFTER_EFFECT)
        also = stopped(result)
        if probe.name.startswith("stderr-") and not also:
            also = markers_kept(env, probe)
        assert_held(env, probe, also=also)


def dance_on_a_terminal(env: Env, server: Path) -> Result:
    """The dance with a pseudo-terminal as its stdin, stdout, stderr and controlling
    terminal (setsid -c), as a person runs it; killed with its session if it hangs."""
    argv, environ = dance_argv(env, server)
    master, slave = pty.openpty()
    proc = subprocess.Popen(["setsid", "--ctty", *argv], stdin=slave, stdout=slave,
                            stderr=slave, env=environ)  # fmt: skip
    os.close(slave)
    out, deadline = b"", time.monotonic() + SOLO_TIMEOUT
    try:
        while True:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: ours alone
                proc.wait()
                return Result(None, out.decode(errors="replace"), "")
            if select.select([master], [], [], 0.2)[0]:
                try:
                    out += os.read(master, 65536)
                    continue
                except OSError:  # EIO: every holder of the terminal is gone
                    pass
            if proc.poll() is not None:
                return Result(proc.wait(), out.decode(errors="replace"), "")
    finally:
        os.close(master)


@pytest.fixture(scope="module")
def on_a_terminal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dances]:
    """One dance of the TERMINAL probes on a pseudo-terminal per mode."""

    def run(env: Env) -> Result:
        return dance_on_a_terminal(env, server_of(env, TERMINAL, env.base / "srv"))

    with Dances(tmp_path_factory, "terminal", run) as dances:
        yield dances


@pytest.mark.probe
@pytest.mark.parametrize(("mode", "probe"), pairs(TERMINAL))
def test_a_step_has_no_terminal_of_discos(on_a_terminal: Dances, mode: str, probe: Probe) -> None:
    assert_held(on_a_terminal(mode), probe)
