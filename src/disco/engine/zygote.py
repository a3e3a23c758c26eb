"""The zygote: one small process per dance and mode that runs every step's sandbox
(DESIGN §12; docs/sandbox-notes.md tells the whole engine).

runner.py imports it bare (`python3 -I -S`, no site, no disco: about 10 MB where disco is
30). A NOOP zygote is pid 1 of a pid namespace of its own, in new uts, ipc and
loopback-only network namespaces that every NOOP step shares with a /proc, a read-only
/sys and a minimal /dev made once. A live zygote stays in the host's, as a subreaper.

Per step nothing forks but the command: the zygote unshares a fresh mount namespace,
mounts the step's overlays and binds, pivots, spawns the command (posix_spawn, a vfork)
and goes back to its own mount namespace with setns. Once it has reaped the command's
processes (in NOOP it kills what was left, as pid 1: `kill(-1)`; live, its orphans as
their subreaper) no mount of the step is left and its layer may change. The answer is
the exit status and the wait4 rusage of the command's tree.

Requests and answers are marshal'ed dicts, length-prefixed. mounts.py imports this file
too: `do()` is the one implementation of each sandbox operation, whoever runs it. Keep
it free of imports beyond the few builtins.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C half: `signal` imports enum (see TYPE_CHECKING below)
import ctypes
import gc
import marshal
import os
import resource  # noqa: F401 -- os.wait4's result type, loaded before any pivot_root
import select
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing too: imported, it would cost each step's maxrss a megabyte
    from typing import Any

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 1, 24, 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_DEFAULT_SIGNALS = (_signal.SIGINT, _signal.SIGQUIT, _signal.SIGTERM, _signal.SIGHUP,
                    _signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGUSR1, _signal.SIGALRM)  # fmt: skip
_RUSAGE = ("utime", "stime", "maxrss", "minflt", "majflt", "inblock", "oublock", "msgsnd",
           "msgrcv", "nsignals", "nvcsw", "nivcsw")  # fmt: skip

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    check(libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, kind: int) -> None:
    check(libc.setns(fd, kind), "setns")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


# ---- the operations, as wire tuples (see mounts.py for the objects that plan them) ----


def do(op: tuple[Any, ...]) -> None:
    """Perform one operation: ("mount", target, source, fstype, flags, data, make), ("dir",
    path, mode), ("file", path, mode), ("chr", path, mode, major, minor), ("link", arg, path),
    ("pivot", path, cwd)."""
    kind = op[0]
    if kind == "mount":
        _, target, source, fstype, flags, data, make = op
        args = (_b(source), _b(target), _b(fstype), flags, _b(data or None))
        if libc.mount(*args) == 0:
            return
        err = ctypes.get_errno()
        if not (make and err == 2):  # ENOENT: the mount point is made, and mounted on
            raise OSError(err, f"mount: {os.strerror(err)}")
        do((make, target, 0o755))
        check(libc.mount(*args), "mount")
    elif kind == "dir":
        try:  # most exist already, or only lack themselves: one system call
            os.mkdir(op[1], op[2])
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(op[1], op[2], exist_ok=True)
    elif kind == "file":
        # Opening an existing file for writing would copy it up into the layer.
        if not os.path.lexists(op[1]):
            os.close(os.open(op[1], os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, op[2]))
    elif kind == "chr":
        os.mknod(op[1], op[2] | 0o020000, os.makedev(op[3], op[4]))
    elif kind == "link":
        os.symlink(op[1], op[2])
    elif kind == "pivot":
        os.chdir(op[1])
        nr = _PIVOT_ROOT.get(os.uname().machine)
        if nr is None:
            raise OSError(38, f"pivot_root: no syscall number for {os.uname().machine}")
        check(libc.syscall(ctypes.c_long(nr), b".", b"."), "pivot_root")
        check(libc.umount2(b".", MNT_DETACH), "umount2")
        os.chdir(op[2])
    else:
        raise ValueError(f"unknown operation {kind!r}")


def do_all(ops: list[Any]) -> None:
    """Perform operations with no umask: they give their modes themselves."""
    umask = os.umask(0)
    try:
        for op in ops:
            do(tuple(op))
    finally:
        os.umask(umask)


def loopback_up() -> None:
    """Bring up lo in our network namespace (ioctls on a socket; the socket module would
    cost every step's maxrss its megabyte: see `main`)."""
    fd = libc.socket(2, 2 | 0o2000000, 0)  # AF_INET, SOCK_DGRAM | SOCK_CLOEXEC
    if fd < 0:
        check(fd, "socket")
    try:
        ifr = ctypes.create_string_buffer(struct.pack("16sH14x", b"lo", 0), 32)
        check(libc.ioctl(fd, 0x8913, ifr), "ioctl(SIOCGIFFLAGS)")
        flags = struct.unpack("16sH14x", ifr.raw)[1] | 1  # IFF_UP
        ifr = ctypes.create_string_buffer(struct.pack("16sH14x", b"lo", flags), 32)
        check(libc.ioctl(fd, 0x8914, ifr), "ioctl(SIOCSIFFLAGS)")
    finally:
        os.close(fd)


def forget_peak() -> None:
    """Reset our peak RSS to what we use now. A step is spawned by vfork, and the kernel
    counts the peak of the memory it leaves at exec in the step's maxrss: our imports'
    and setup's transient peaks would be reported as every step's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # kernels without CONFIG_PROC_PAGE_MONITOR
        pass


def drop_caps(caps: list[int]) -> None:
    """Remove `caps` from our bounding, ambient and inheritable sets; the commands we
    spawn inherit that."""
    for n in caps:
        check(libc.prctl(PR_CAPBSET_DROP, n, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    head, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    check(libc.capget(head, data), "capget")
    for n in caps:  # data = [eff, perm, inh] for caps 0-31, then for 32-63
        data[3 * (n // 32) + 2] &= ~(1 << (n % 32))
    check(libc.capset(head, data), "capset")


# ---- messages ----


def _read_exact(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def receive(fd: int) -> Any:
    """One message, or None at end of file."""
    try:
        (size,) = struct.unpack("<Q", _read_exact(fd, 8))
        return marshal.loads(_read_exact(fd, size))
    except EOFError:
        return None


def send(fd: int, message: Any) -> None:
    data = marshal.dumps(message)
    os.write(fd, struct.pack("<Q", len(data)) + data)


# ---- the zygote ----


def _open_stdio(spec: Any) -> int | None:
    """None (keep ours), an fd number, or (path, flags, mode) opened before the sandbox."""
    if spec is None or isinstance(spec, int):
        return spec
    path, flags, mode = spec
    return os.open(path, flags | os.O_CLOEXEC, mode)


def _failed(message: str) -> dict[str, Any]:
    return {"msgs": {"F": message}, "status": 0, "usage": (0,) * 12, "wall": 0.0,
            "timed_out": False}  # fmt: skip


class Zygote:
    def __init__(self, req: int, rep: int) -> None:
        self.req, self.rep = req, rep
        self.noop = False
        self.base = -1  # our own mount namespace, where each step's is unshared from
        self.hostname = os.uname().nodename
        self.own_uts = False
        self.stopping = False  # disco was interrupted: run no other step

    def setup(self, msg: dict[str, Any]) -> None:
        """Our namespaces, and what every step binds from them (msg["ops"])."""
        self.noop = bool(msg["noop"])
        if self.noop and os.getpid() != 1:
            raise OSError(22, "a NOOP zygote must be pid 1 of its own pid namespace")
        flags = CLONE_NEWNS | (CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET) * self.noop
        unshare(flags)
        self.own_uts = self.noop
        if self.noop:
            loopback_up()
            with open("/proc/self/comm", "w") as f:  # what `ps` shows as pid 1
                f.write("disco-init")
        else:  # what the command leaves running comes to us, to be killed
            check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
        do_all(msg["ops"])
        if msg.get("drop"):
            drop_caps(msg["drop"])
        self.base = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        forget_peak()

    def prebuild(self, ops: list[Any]) -> None:
        """Mounts that later steps bind from (a view, its read-only binds), in our own
        namespace: a step then makes them in one recursive bind each."""
        do_all(ops)
        forget_peak()

    def name(self, hostname: str | None) -> None:
        if hostname is None or hostname == self.hostname:
            return
        if not self.own_uts:  # live: the node's name in a uts namespace of ours
            unshare(CLONE_NEWUTS)
            self.own_uts = True
        name = hostname.encode()
        check(libc.sethostname(name, ctypes.c_size_t(len(name))), "sethostname")
        self.hostname = hostname

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.stopping:
            return _failed("interrupted: no more steps")
        start = time.monotonic()
        work = os.path.join(req["layer"], "work")
        remove(work)  # a step's before it, cut short (the operations make it anew)
        self.name(req.get("hostname"))
        stdio = [_open_stdio(s) for s in req["stdio"]]
        try:
            pid, msgs = self.spawn(req, stdio)
        finally:
            for spec, fd in zip(req["stdio"], stdio):
                if isinstance(spec, (tuple, list)) and fd is not None:  # opened here
                    os.close(fd)
        if pid == 0:
            return {"msgs": msgs, "status": 0, "usage": (0,) * 12,
                    "wall": time.monotonic() - start, "timed_out": False}  # fmt: skip
        status, usage, timed_out, strays = self.wait(pid, req.get("timeout") or 0)
        if strays:
            msgs["K"] = " ".join(map(str, strays))
        return {"msgs": msgs, "status": status, "usage": tuple(usage),
                "wall": time.monotonic() - start, "timed_out": timed_out,
                "copied": copied_links(work)}  # fmt: skip

    def spawn(self, req: dict[str, Any], stdio: list[int | None]) -> tuple[int, dict[str, str]]:
        """The step's mount namespace, and the command started in it; (0, why) if not.
        The operations name the paths in the step's layer relative to it."""
        unshare(CLONE_NEWNS)
        umask = os.umask(0)
        try:
            os.chdir(req["layer"])
            for i, op in enumerate(req["ops"]):
                try:
                    do(tuple(op))
                except OSError as e:
                    return 0, {"E": f"{i} {e.errno or 0}"}
            os.umask(umask)
            env, argv = req["env"], req["argv"]
            # posix_spawnp searches our PATH (the child is a vfork, reading our memory):
            # the step's, so found as its shell would find it, in C.
            os.environ["PATH"] = env.get("PATH", "/usr/bin:/bin")
            actions = [(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(stdio) if fd is not None]
            try:
                pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions,
                                      setsigdef=_DEFAULT_SIGNALS, setsigmask=(),
                                      scheduler=(os.SCHED_OTHER, os.sched_param(0)))  # fmt: skip
            except OSError as e:
                return 0, {"X": str(e.errno)}
            return pid, {}
        finally:
            os.umask(umask)
            # Back home: the step's namespace is now its processes' alone.
            setns(self.base, CLONE_NEWNS)

    def wait(self, pid: int, timeout: float) -> tuple[int, list[float], bool, list[int]]:
        """Wait for the command, or its time limit, or disco's word to stop; then kill
        and reap whatever of the step is left. Its status, usage, whether it ran out of
        time, and (live) the pids it left running."""
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(self.req, select.POLLIN)
        deadline = time.monotonic() + timeout if timeout else None
        timed_out = False
        try:
            while True:
                left = (
                    None
                    if deadline is None
                    else max(0, int((deadline - time.monotonic()) * 1000) + 1)
                )
                events = dict(poller.poll(left))
                if pidfd in events:
                    break
                if self.req in events:
                    msg = receive(self.req)  # only ever "stop" while a step runs
                    self.stopping = True
                    self.kill(pid)
                    if msg is None:
                        break
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = not self.stopping
                    self.kill(pid)
                    deadline = None
        finally:
            os.close(pidfd)
        _, status, ru = os.wait4(pid, 0)
        usage = [0.0] * len(_RUSAGE)
        _add(usage, ru)
        strays = self.reap(usage)
        return status, usage, timed_out, strays

    def kill(self, pid: int) -> None:
        """Kill the running step: in NOOP everything in our pid namespace but us."""
        try:
            os.kill(-1 if self.noop else pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self, usage: list[float]) -> list[int]:
        """Kill and reap what the command left running: it would keep the step's mount
        namespace, and so its overlays, alive. Live, the pids killed."""
        if self.noop:
            try:  # as pid 1 of the namespace we are spared
                os.kill(-1, _signal.SIGKILL)
            except ProcessLookupError:
                pass
            while True:
                try:
                    _, _, ru = os.wait4(-1, 0)
                except ChildProcessError:
                    return []
                _add(usage, ru)
        killed: list[int] = []
        me = os.getpid()
        while True:
            try:
                with open(f"/proc/{me}/task/{me}/children") as f:
                    kids = f.read().split()
            except OSError:  # kernel without CONFIG_PROC_CHILDREN
                kids = [d for d in os.listdir("/proc") if d.isdigit() and _ppid(d) == me]
            for k in map(int, kids):
                try:
                    os.kill(k, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed.append(k)
            try:
                _, _, ru = os.wait4(-1, 0)
            except ChildProcessError:
                return sorted(set(killed))
            _add(usage, ru)


def copied_links(work: str) -> list[tuple[int, int]]:
    """(dev, inode) of the files the step's overlays copied up from a hard-linked lower
    file: with index=on overlayfs links each to an entry of its work dir's index/
    (links.py gives the layer their other names)."""
    found = []
    for d in os.listdir(work):
        if not d.isdigit():  # a mount point, not an overlay's work dir
            continue
        try:
            entries = os.scandir(os.path.join(work, d, "index"))
        except OSError:
            continue
        with entries:
            for e in entries:
                st = e.stat(follow_symlinks=False)
                if e.is_file(follow_symlinks=False):
                    found.append((st.st_dev, st.st_ino))
    return found


def remove(path: str) -> None:
    """Remove a tree of a layer (no mount is ever under one in our namespace)."""
    try:
        entries = os.scandir(path)
    except NotADirectoryError:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    with entries:
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                remove(e.path)
            else:
                os.unlink(e.path)
    os.rmdir(path)


def remove_all(paths: list[str]) -> None:
    """remove() each of `paths` that is given; what cannot be removed is left."""
    for path in filter(None, paths):
        try:
            remove(path)
        except OSError:
            pass


def _add(usage: list[float], ru: Any) -> None:
    """Add a reaped process's rusage: times and counts add up, the peak RSS is the largest."""
    for i, name in enumerate(_RUSAGE):
        value = getattr(ru, f"ru_{name}")
        usage[i] = max(usage[i], value) if name == "maxrss" else usage[i] + value


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError):
        return 0


def main() -> None:
    req_fd, rep_fd = int(sys.argv[1]), int(sys.argv[2])
    libc.prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0)  # never outlive disco
    # disco decides when to stop; the command gets the terminal's signals itself.
    for s in (_signal.SIGINT, _signal.SIGQUIT, _signal.SIGHUP, _signal.SIGTERM):
        _signal.signal(s, _signal.SIG_IGN)
    # Woken by disco's request, we do not take its CPU from it (SCHED_BATCH forgoes
    # wakeup preemption): it is either about to wait for us, or reads the last step's
    # changes meanwhile. Measured: ~8% off a 200-module NOOP dance. Commands run as usual.
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        pass
    zygote = Zygote(req_fd, rep_fd)
    gc.freeze()
    gc.disable()
    while (msg := receive(req_fd)) is not None:
        try:
            if "setup" in msg:
                zygote.setup(msg["setup"])
                answer: dict[str, Any] = {}
            elif "prebuild" in msg:
                zygote.prebuild(msg["prebuild"])
                answer = {}
            elif "stop" in msg:  # disco was interrupted between steps
                zygote.stopping = True
                continue
            elif "ops" not in msg:  # layers disco is done with, at its end: no answer
                remove_all(msg["remove"])
                continue
            else:
                answer = zygote.run(msg)
        except Exception as e:  # noqa: BLE001 -- said to disco, which raises it
            answer = _failed(f"zygote: {e}" if isinstance(e, OSError) else f"zygote: {e!r}")
        try:
            send(rep_fd, answer)
        except OSError:  # disco is gone, or has stopped listening: so do we
            break
        # Cleaning up after the step while disco reads its changes: its work dir, its
        # layer if disco has no use for it, and the layers disco was done with before.
        if "layer" in msg:
            remove_all([os.path.join(msg["layer"], "work"), msg["discard"], *msg["remove"]])


if __name__ == "__main__":
    main()
