"""Hostile probes of the limits of a step (issue 21; probes.py says how they work).

Each step runs in a cgroup of its own with a pids and a memory limit, and the layers live
on a tmpfs with a size: a step past one fails, with an `error:` line that names the
setting to raise, and the machine never notices. The settings are made small here:
`disco/client/sandbox/tmpfs_mb`, `.../pids_max` and `.../memory_mb`. Each probe prints
PROBE-DONE before it tries, and fails its step itself when the kernel stops it (as a
script with `set -e` would); it says PROBE-ESCAPED when it got past the limit.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from conftest import BIN
from probes import (
    MODES,
    Dances,
    Env,
    Probe,
    Result,
    assert_held,
    dance_of,
    host_changes,
    module_names,
    pairs,
    py,
    root_only,
    x86_64,
)

pytestmark = [root_only, x86_64]

SETTINGS = {"tmpfs_mb": "16", "pids_max": "32", "memory_mb": "64"}
LIMIT = {  # the setting each probe goes past
    "limit-memory": "disco/client/sandbox/memory_mb",
    "limit-pids": "disco/client/sandbox/pids_max",
    "limit-tmpfs": "disco/client/sandbox/tmpfs_mb",
}
DONE_FIRST = 'echo "PROBE-DONE $P"\n'

# fmt: off
PROBES = [
    Probe("limit-ok", "limits",
          "a step well within the limits runs as ever",
          "echo ok > /var/tmp/probe-ok; sleep 0.1 & wait\n"),
    Probe("limit-memory", "limits",
          "allocate and touch 256 MB past a memory limit of 64 MB",
          DONE_FIRST + r"""
python3 -c 'b = b"x" * (256 << 20); print(len(b) >> 20, "MB")' || exit 1
escaped "allocated 256 MB past a limit of 64 MB"
"""),
    Probe("limit-pids", "limits",
          "start 200 processes (each sleeps, then all are reaped with the step) past a pids"
          " limit of 32: a fork bomb, bounded",
          DONE_FIRST + py(r"""
import time
started = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    started += 1
if started == 200:
    escaped("started 200 processes past a limit of 32")
sys.exit(0 if started == 200 else 1)
""") + "[ $? = 0 ] || exit 1\n"),
    Probe("limit-self-raise", "limits",
          "find its own cgroup's limits and see whether it may raise them"
          " (access(W_OK) only)",
          py(r"""
own = {}
for line in (read("/proc/self/cgroup") or b"").decode().splitlines():
    ident, controllers, path = line.split(":", 2)
    own["" if ident == "0" else controllers] = path
points = [(p, t, s) for p, o, t, s in mounts() if t in ("cgroup", "cgroup2")]
d = fresh_dir()
if mount("none", d, "cgroup2", 2 | 4 | 8):
    points.append((d, "cgroup2", "none"))
for point, fstype, source in points:
    opts = [m for m in open("/proc/self/mountinfo") if f" {point} " in m]
    delegate = any("nsdelegate" in m.split(" - ")[1] for m in opts)
    keys = [""] if fstype == "cgroup2" else [k for k in own if k and k in point]
    for key in keys:
        path = own.get(key, "/")
        if fstype == "cgroup2" and path == "/" and delegate:
            continue  # the namespace's root: the kernel refuses its limits to it
        for knob in ("pids.max", "memory.max", "memory.high", "memory.limit_in_bytes"):
            f = f"{point}{path}/{knob}".replace("//", "/")
            if os.path.exists(f) and os.access(f, os.W_OK):
                escaped("may raise its own limit", f)
umount(d)
""")),
    Probe("limit-tmpfs", "limits",
          "write 64 MB into its layer, past a tmpfs of 16 MB",
          DONE_FIRST + r"""
# The partial file is left (in the layer): with the room freed before the step ends,
# nothing would show what it ran into (docs/sandbox-notes.md).
head -c 64M /dev/zero > /var/tmp/probe-big || exit 1
rm -f /var/tmp/probe-big
escaped "wrote 64 MB past a tmpfs of 16 MB"
"""),
]
# fmt: on


def limits_dance(env: Env) -> Result:
    """The probes above, with small limits."""
    for name, value in SETTINGS.items():
        subprocess.run([str(BIN / "disco-param"), "--state-dir", str(env.host.state), "set",
                        f"disco/client/sandbox/{name}", value], check=True)  # fmt: skip
    return dance_of(PROBES)(env)


@pytest.fixture(scope="module")
def dances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dances]:
    """One dance of every probe above per mode."""
    with Dances(tmp_path_factory, "limits", limits_dance) as dances:
        yield dances


def errors_of(env: Env, probe: Probe) -> list[str]:
    module = dict((p.name, m) for m, p in module_names(PROBES))[probe.name]
    return [ln for ln in env.result.stderr.splitlines() if ln.startswith(f"error: {module}:")]


@pytest.mark.probe
@pytest.mark.parametrize(("mode", "probe"), pairs(PROBES))
def test_a_step_past_a_limit_fails_and_names_it(dances: Dances, mode: str, probe: Probe) -> None:
    danced = dances(mode)
    errors = errors_of(danced, probe)
    setting = LIMIT.get(probe.name)
    if setting is None:
        assert not errors, f"a step within the limits failed: {errors}"
        assert_held(danced, probe)
        return
    named = [e for e in errors if setting in e]
    assert_held(danced, probe, also=[] if named else [f"no error names {setting}: {errors}"])


@pytest.mark.probe
@pytest.mark.parametrize("mode", MODES)
def test_the_host_is_as_it_was_after_the_dance(dances: Dances, mode: str) -> None:
    changes = host_changes(dances(mode))
    assert not changes, changes
