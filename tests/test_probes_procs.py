"""Hostile probes, disco's processes and the step's own (issue 21; probes.py says how).

No process of disco's (the zygote, the asker, disco itself) may be visible from a step or
reachable through /proc; nothing but stdin, stdout and stderr crosses into it; it is a
session and a process group of its own. A probe acts only on disco's processes of its own
dance (found above it, never further than the dance) and on the test's canary processes;
in the host's pid namespace it says so and touches nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from probes import (
    MODES,
    Dances,
    Env,
    Probe,
    assert_held,
    dance_of,
    host_changes,
    pairs,
    py,
    root_only,
    x86_64,
)
from probes_host import alive

pytestmark = [root_only, x86_64]

TARGETS = """
targets = disco_processes()
if host_pidns():
    escaped("runs in the host's pid namespace")
"""


def victim_alive(env: Env) -> list[str]:
    return [] if alive(env.host.procs["victim"]) else ["the test's canary process was killed"]


def heard(listener: str, probe: str) -> Callable[[Env], list[str]]:
    return lambda env: env.host.heard(listener, probe)


# fmt: off
PROBES = [
    Probe("pid1-not-disco", "processes",
          "pid 1 of the step's pid namespace is the step, not disco's zygote",
          py(r"""
comm = (read("/proc/1/comm") or b"").strip()
if host_pidns():
    escaped("pid 1 is the host's init: the step shares the host's pid namespace")
elif 1 not in own_tree() and (comm == b"disco-init" or "zygote" in cmdline(1)
                              or TOKEN in cmdline(1)):
    escaped("pid 1 is disco's:", comm.decode())
""")),
    Probe("proc1-root-write", "processes",
          "write a canary on the host through /proc/1/root (the zygote's root is the host's)",
          py(r"""
if host_pidns():
    escaped("pid 1 is the host's init (not touched)")
else:
    if sees_secret() or os.path.exists(f"/proc/1/root{SECRET_FILE}"):
        escaped("sees disco's state through /proc/1/root")
    if os.path.isdir(f"/proc/1/root{CANARY}"):
        create(f"/proc/1/root{CANARY}/{NAME}-{UUID}")
""")),
    Probe("disco-invisible", "processes",
          "every process the step sees is its own",
          py(r"""
others = foreign()
if others:
    escaped(len(others), "processes that are not the step's are visible")
""")),
    Probe("nsenter-mnt", "processes",
          "nsenter -t 1 (and each process of disco's it sees) -m, and create a canary in the"
          " host's filesystem from there",
          py(TARGETS + r"""
import subprocess
for pid in targets:
    target = f"{CANARY}/{NAME}-{UUID}-{pid}"
    subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c",
                    f'[ -d {CANARY} ] && touch {target}'], stderr=subprocess.DEVNULL)
""")),
    Probe("nsenter-net", "processes",
          "join the network namespace of pid 1 (and of each process of disco's) and connect"
          " to the host's loopback listener",
          py(TARGETS + r"""
CLONE_NEWNET = 0x40000000
for pid in targets:
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    except OSError:
        continue
    if libc.setns(fd, CLONE_NEWNET) == 0:
        try:
            with socket.create_connection(("127.0.0.1", @PORT@), timeout=2) as s:
                s.sendall(f"{NAME} via {pid}".encode())
            escaped("reached the host's loopback from the network of", pid)
        except OSError:
            pass
"""), host=heard("tcp", "nsenter-net")),
    Probe("proc-mem", "processes",
          "read the memory of disco's processes and of the test's canary through /proc/PID/mem",
          py(TARGETS + r"""
if reachable(@CANARY_PID@, "@CANARY_TOKEN@"):
    targets.append(@CANARY_PID@)
for pid in targets:
    try:
        with open(f"/proc/{pid}/maps") as f:
            start = int(f.readline().split("-")[0], 16)
        with open(f"/proc/{pid}/mem", "rb") as f:
            f.seek(start)
            if f.read(16):
                escaped("read the memory of", pid)
    except (OSError, ValueError):
        pass
""")),
    Probe("process-vm-readv", "processes",
          "read the memory of disco's processes and of the test's canary with"
          " process_vm_readv",
          py(TARGETS + r"""
class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
if reachable(@CANARY_PID@, "@CANARY_TOKEN@"):
    targets.append(@CANARY_PID@)
for pid in targets:
    try:
        with open(f"/proc/{pid}/maps") as f:
            start = int(f.readline().split("-")[0], 16)
    except (OSError, ValueError):
        start = 0x400000
    buf = ctypes.create_string_buffer(16)
    local, remote = IoVec(ctypes.cast(buf, ctypes.c_void_p), 16), IoVec(start, 16)
    n, err = call(310, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n > 0:
        escaped("read the memory of", pid)
""")),
    Probe("pidfd-getfd", "processes",
          "take copies of the file descriptors of disco's processes with pidfd_getfd",
          py(TARGETS + r"""
for pid in targets:
    pidfd, err = call(434, pid, 0)
    if pidfd < 0:
        continue
    for n in range(16):
        fd, err = call(438, pidfd, n, 0)
        if fd >= 0:
            escaped("took fd", n, "of", pid)
            os.close(fd)
            break
""")),
    Probe("kill0-disco", "processes",
          "kill -0 each process of disco's (may the step signal them?)",
          py(TARGETS + r"""
for pid in targets:
    try:
        os.kill(pid, 0)
        escaped("may signal", pid, cmdline(pid)[:60])
    except OSError:
        pass
""")),
    Probe("kill0-canary", "processes",
          "kill -0 a canary process the test started on the host",
          py(r"""
if reachable(@CANARY_PID@, "@CANARY_TOKEN@"):
    try:
        os.kill(@CANARY_PID@, 0)
        escaped("may signal the host's canary process")
    except OSError:
        pass
""")),
    Probe("sigterm-canary", "processes",
          "SIGTERM a canary `sleep` the test started on the host: it must survive",
          py(r"""
if reachable(@VICTIM_PID@, "@VICTIM_TOKEN@"):
    try:
        os.kill(@VICTIM_PID@, signal.SIGTERM)
        escaped("signalled the host's canary process")
    except OSError:
        pass
"""), host=victim_alive),
    Probe("ptrace-canary", "processes",
          "ptrace (PTRACE_SEIZE, which does not stop it) a canary process of the test's",
          py(r"""
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
if reachable(@CANARY_PID@, "@CANARY_TOKEN@"):
    if libc.ptrace(0x4206, @CANARY_PID@, None, None) == 0:  # PTRACE_SEIZE
        escaped("attached to the host's canary process")
""")),  # the tracer's exit detaches it
    Probe("ptrace-disco", "processes",
          "ptrace (PTRACE_SEIZE) each process of disco's",
          py(TARGETS + r"""
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
for pid in targets:
    if libc.ptrace(0x4206, pid, None, None) == 0:
        escaped("attached to", pid)
""")),
    Probe("proc-environ-disco", "processes",
          "read the environment, working directory and root of each process of disco's",
          py(TARGETS + r"""
for pid in targets:
    if read(f"/proc/{pid}/environ") is not None:
        escaped("read the environment of", pid)
    for link in ("cwd", "root"):
        try:
            os.listdir(f"/proc/{pid}/{link}")
            escaped("listed the", link, "of", pid)
        except OSError:
            pass
""")),
    Probe("inherited-fds", "file descriptors",
          "no file descriptor but 0, 1 and 2 crosses into the step",
          py(r"""
script = os.path.realpath(cmdline(SCRIPT).split()[-1]) if cmdline(SCRIPT) else ""
for n in sorted(int(x) for x in os.listdir(f"/proc/{SCRIPT}/fd")):
    try:
        what = os.readlink(f"/proc/{SCRIPT}/fd/{n}")
    except OSError:
        continue
    if n > 2 and what != script:
        escaped("inherited fd", n, what)
""")),
    Probe("own-session", "process group",
          "the step is a session and a process group of its own (disco's `kill 0` and"
          " terminal signals are not shared with it)",
          py(r"""
sid, pgid = os.getsid(SCRIPT), os.getpgid(SCRIPT)
for what, leader in (("session", sid), ("process group", pgid)):
    own = leader == SCRIPT or (leader == 1 and 1 in own_tree())
    if not own:
        escaped(f"shares the {what} of", leader or "a process outside its namespace")
""")),
    Probe("env-leak", "environment",
          "disco's own environment does not reach the step",
          r"""
[ -n "${DISCO_PROBE_ENV-}" ] && escaped "sees disco's environment"
env | grep -q '^DISCO_STATE=' && escaped "sees DISCO_STATE"
"""),
]
# fmt: on


@pytest.fixture(scope="module")
def dances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dances]:
    """One dance of every probe above per mode."""
    with Dances(tmp_path_factory, "procs", dance_of(PROBES)) as dances:
        yield dances


@pytest.mark.probe
@pytest.mark.parametrize(("mode", "probe"), pairs(PROBES))
def test_no_process_of_disco_or_the_host_is_within_reach(
    dances: Dances, mode: str, probe: Probe
) -> None:
    assert_held(dances(mode), probe)


@pytest.mark.probe
@pytest.mark.parametrize("mode", MODES)
def test_the_host_is_as_it_was_after_the_dance(dances: Dances, mode: str) -> None:
    changes = host_changes(dances(mode))
    assert not changes, changes
