"""Hostile probes through the NOOP shell (issue 21; probes.py says how they work).

disco-sh-exec runs a script of this machine in the session's sandbox: it gets every
protection of a dance's step. A handful of the dances' probes run through it, one
disco-sh-exec each in one session, and the session's tmpfs has a size too.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

import test_probes_caps
import test_probes_ns
import test_probes_procs
from conftest import BIN
from probes import (
    NODE,
    SH_HEAD,
    SH_TAIL,
    SOLO_TIMEOUT,
    Dances,
    Env,
    Probe,
    Result,
    assert_held,
    pairs,
    render,
    root_only,
    run_command,
    x86_64,
)

pytestmark = [root_only, x86_64]

THROUGH_THE_SHELL = (
    "remount-ro-submount remount-real-bins unhide-state dev-nodev dev-tty tracefs-mount"
    " open-by-handle keyring-canary cgroup-mkdir pid1-not-disco disco-invisible inherited-fds"
    " own-session proc1-root-write ns-user ns-cgroup loopback-tcp ro-socket"
).split()
CATALOG = {
    p.name: p for m in (test_probes_caps, test_probes_procs, test_probes_ns) for p in m.PROBES
}
SHELL_MODES = ("noop-host", "noop-scratch")
PROBES = [
    *(Probe(p.name, p.klass, p.what, p.script, SHELL_MODES, host=p.host)
      for p in map(CATALOG.__getitem__, THROUGH_THE_SHELL)),
    Probe("shell-tmpfs", "limits",
          "write 64 MB into the session, past a tmpfs of 16 MB (disco/client/sandbox/tmpfs_mb)",
          r"""
head -c 64M /dev/zero > /var/tmp/probe-big && escaped "wrote 64 MB past a tmpfs of 16 MB"
rm -f /var/tmp/probe-big
""", SHELL_MODES),
]  # fmt: skip


def shell(env: Env, *argv: str) -> Result:
    environ = {**os.environ, "NO_COLOR": "1", "DISCO_PROBE_ENV": env.uuid}
    full = [str(BIN / argv[0]), "--state-dir", str(env.host.state), *argv[1:]]
    return run_command(full, environ, SOLO_TIMEOUT)


def session(env: Env, probes: list[Probe]) -> Result:
    """A session over the mode's root; each probe through disco-sh-exec; all they said."""
    subprocess.run([str(BIN / "disco-param"), "--state-dir", str(env.host.state), "set",
                    "disco/client/sandbox/tmpfs_mb", "16"], check=True)  # fmt: skip
    root = ["--root", str(env.root)] if env.mode != "noop-host" else []
    mounted = shell(env, "disco-fs-mount", *root, "--node", NODE)
    assert mounted.returncode == 0, mounted.stderr
    out, err = [], []
    for probe in probes:
        script = env.base / f"{probe.name}.sh"
        script.write_text(render(probe, SH_HEAD + probe.script + SH_TAIL, env))
        ran = shell(env, "disco-sh-exec", str(script))
        out.append(ran.stdout)
        err.append(ran.stderr if ran.returncode is not None else f"{probe.name} hung\n")
    return Result(0, "".join(out), "".join(err))


def unmount(env: Env) -> None:
    if os.path.ismount(env.host.state / "shell"):
        shell(env, "disco-fs-unmount")


@pytest.fixture(scope="module")
def through_the_shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dances]:
    """One session per mode, each probe through disco-sh-exec in it."""

    def run(env: Env) -> Result:
        return session(env, [p for p in PROBES if env.mode in p.modes])

    with Dances(tmp_path_factory, "shell", run, unmount) as dances:
        yield dances


@pytest.mark.probe
@pytest.mark.parametrize(("mode", "probe"), pairs(PROBES))
def test_the_noop_shell_holds_as_a_dance_does(
    through_the_shell: Dances, mode: str, probe: Probe
) -> None:
    assert_held(through_the_shell(mode), probe)
