"""Hostile probes, namespaces and what the host shares through them (issue 21; probes.py).

A step has namespaces of its own (user, mount, pid, net, ipc, uts, cgroup): what it does to
its hostname, mounts, IPC objects and network stays there, and the host's /run, /dev, /proc
and /sys are not its own. Read-only parts of the host reach it through overlays that pass
no socket, FIFO or lock to a host process. The kernel's own setting (the hostname) is
changed only in a namespace that is provably not the host's.
"""

from __future__ import annotations

import os
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
from probes_host import files_found, ipc_found, mounts_found, mq_found

pytestmark = [root_only, x86_64]


def namespace(ns: str) -> Probe:
    return Probe(
        f"ns-{ns}",
        "namespaces",
        f"the step's {ns} namespace is not the host's",
        f"""
[ "$(readlink /proc/$$/ns/{ns})" = "@NS_{ns.upper()}@" ] && escaped "in the host's {ns} namespace"
""",
    )


def heard(listener: str, probe: str) -> Callable[[Env], list[str]]:
    return lambda env: env.host.heard(listener, probe)


def fifo_heard(env: Env) -> list[str]:
    got = env.host.fifo_got()
    return [f"the host's FIFO got {got!r}"] if got else []


def hostname_kept(env: Env) -> list[str]:
    name = os.uname().nodename
    return [] if name == env.values["HOSTNAME"] else [f"the host's hostname is now {name}"]


def ipc(kind: str, probe: str) -> Callable[[Env], list[str]]:
    return lambda env: ipc_found(kind, env.host.ipc[kind][1])


CONNECT = r"""
def reach(family, address, what):
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(address)
            s.sendall(NAME.encode())
        escaped("connected to", what)
    except OSError:
        pass
"""

# fmt: off
PROBES = [
    *(namespace(ns) for ns in ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")),
    Probe("hostname-set", "namespaces",
          "set the hostname and domain name (only in a uts namespace that is not the host's;"
          " in the host's it says so and changes nothing), then put them back",
          py(r"""
if os.readlink("/proc/self/ns/uts") == "@NS_UTS@":
    escaped("in the host's uts namespace: not set")
else:
    old = os.uname()
    for call_, value in ((libc.sethostname, NAME), (libc.setdomainname, NAME)):
        call_(value.encode(), len(value))
    libc.sethostname(old.nodename.encode(), len(old.nodename))
"""), host=hostname_kept),
    Probe("mount-propagation", "namespaces",
          "mount a tmpfs of its own name in /tmp, /mnt, /var/tmp and /run: none may show in"
          " the host's mount table",
          py(r"""
for top in ("/tmp", "/mnt", "/var/tmp", "/run"):
    d = f"{top}/{NAME}-{UUID}-m"
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        continue
    mount(f"{NAME}-{UUID}", d, "tmpfs", 2 | 4 | 8, "size=64k")
"""), host=lambda env: mounts_found(f"mount-propagation-{env.uuid}")),
    Probe("sysv-shm", "namespaces: ipc",
          "make a SysV shared memory segment, and look for one the host made",
          py(r"""
libc.shmget(@SHM_KEY@, 4096, 0o1000 | 0o600)
if libc.shmget(@SHM_KEY_HOST@, 0, 0) >= 0:
    escaped("sees the host's SysV shared memory")
"""), host=ipc("shm", "sysv-shm")),
    Probe("sysv-msg", "namespaces: ipc",
          "make a SysV message queue, and look for one the host made",
          py(r"""
libc.msgget(@SHM_KEY@, 0o1000 | 0o600)
if libc.msgget(@SHM_KEY_HOST@, 0) >= 0:
    escaped("sees the host's SysV message queue")
"""), host=ipc("msg", "sysv-msg")),
    Probe("posix-shm", "namespaces: ipc",
          "make a POSIX shared memory object (/dev/shm), and look for one the host made",
          r"""
: > "/dev/shm/$P-@UUID@" 2>/dev/null
[ -e "/dev/shm/disco-probe-@UUID@-host" ] && escaped "sees the host's /dev/shm"
""", host=lambda env: files_found(f"posix-shm-{env.uuid}", "/dev/shm")),
    Probe("posix-mq", "namespaces: ipc",
          "make a POSIX message queue, and look for one the host made",
          py(r"""
libc.mq_open.restype = ctypes.c_int
libc.mq_open(f"/{NAME}-{UUID}".encode(), os.O_CREAT | os.O_RDWR, 0o600, None)
if libc.mq_open(b"/disco-probe-@UUID@-host", os.O_RDONLY, 0, None) >= 0:
    escaped("sees the host's POSIX message queue")
"""), host=lambda env: mq_found(f"posix-mq-{env.uuid}")),
    Probe("loopback-tcp", "namespaces: net",
          "connect to a TCP listener of the test's on the host's 127.0.0.1",
          py(CONNECT + 'reach(socket.AF_INET, ("127.0.0.1", @PORT@), "the host\'s loopback")'),
          host=heard("tcp", "loopback-tcp")),
    Probe("abstract-unix", "namespaces: net",
          "connect to an abstract unix socket the test listens on (per network namespace)",
          py(CONNECT + r'reach(socket.AF_UNIX, "\0@ABSTRACT@", "the host\'s abstract socket")'),
          host=heard("abstract", "abstract-unix")),
    Probe("net-interfaces", "namespaces: net",
          "the step sees no network interface but its own loopback",
          py(r"""
names = set(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else set()
for line in (read("/proc/net/dev") or b"").decode().splitlines()[2:]:
    names.add(line.split(":")[0].strip())
if names - {"lo"}:
    escaped("sees interfaces", *sorted(names - {"lo"}))
""")),
    Probe("host-run", "host directories",
          "the step's /run is not the host's (systemd, dbus and every daemon's sockets)",
          r"""
[ "$(stat -c '%d %i' /run 2>/dev/null)" = "@RUN_ID@" ] && escaped "/run is the host's"
"""),
    Probe("host-dev", "host directories",
          "the step's /dev and /dev/shm are not the host's",
          r"""
[ "$(stat -c %d /dev)" = "@DEV_DEV@" ] && escaped "/dev is the host's"
[ "$(stat -c %d /dev/shm 2>/dev/null)" = "@SHM_DEV@" ] && escaped "/dev/shm is the host's"
"""),
    Probe("host-proc", "host directories",
          "the step's /proc is not the host's", r"""
[ "$(stat -c %d /proc)" = "@PROC_DEV@" ] && escaped "/proc is the host's"
"""),
    Probe("host-sys", "host directories",
          "the step's /sys is not the host's", r"""
[ "$(stat -c %d /sys)" = "@SYS_DEV@" ] && escaped "/sys is the host's"
"""),
    Probe("ro-socket", "read-only host parts",
          "connect to a unix socket a host process listens on, on a read-only filesystem",
          py(CONNECT + 'reach(socket.AF_UNIX, "@RO@/sock", "the host\'s socket on @RO@")'),
          host=heard("ro", "ro-socket")),
    Probe("ro-fifo", "read-only host parts",
          "write into a FIFO a host process reads, on a read-only filesystem",
          py(r"""
try:
    fd = os.open("@RO@/fifo", os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, NAME.encode())
    escaped("wrote into the host's FIFO on @RO@")
except OSError:
    pass
"""), host=fifo_heard),
    Probe("ro-flock", "read-only host parts",
          "take a lock on a file a host process holds locked, on a read-only filesystem:"
          " the host's lock must not reach it, nor its lock the host",
          py(r"""
try:
    fd = os.open("@RO@/lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    escaped("the host's lock on @RO@/lock holds in the step")
except OSError:
    pass
""")),
]
# fmt: on


@pytest.fixture(scope="module")
def dances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dances]:
    """One dance of every probe above per mode."""
    with Dances(tmp_path_factory, "ns", dance_of(PROBES)) as dances:
        yield dances


@pytest.mark.probe
@pytest.mark.parametrize(("mode", "probe"), pairs(PROBES))
def test_what_a_step_does_stays_in_its_namespaces(dances: Dances, mode: str, probe: Probe) -> None:
    assert_held(dances(mode), probe)


@pytest.mark.probe
@pytest.mark.parametrize("mode", MODES)
def test_the_host_is_as_it_was_after_the_dance(dances: Dances, mode: str) -> None:
    changes = host_changes(dances(mode))
    assert not changes, changes
