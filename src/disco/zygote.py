"""The zygote: one small process per dance that forks every step's sandbox (DESIGN §12).

disco starts it as `python3 -I -S zygote.py REQ REP` (no site, no disco imports: about
9 MB where disco is 30), so forking a step costs a fraction of a millisecond and the
step's rusage is its own, not a copy of disco's memory. For each request read from REQ
it forks the step's init, in new namespaces (in NOOP as pid 1 of a new pid namespace),
which performs the planned operations (mounts, pivot_root, ...), spawns the command and
reaps its whole tree; the zygote then answers on REP with the exit status and the
wait4 rusage of the tree. Requests and answers are marshal'ed dicts, length-prefixed.

This file is also imported by disco.mounts: `do()` is the one implementation of each
sandbox operation, whoever runs it. Keep it free of imports beyond the few builtins.
"""

from __future__ import annotations

import ctypes
import gc
import marshal
import os
import resource  # noqa: F401 -- os.wait4's result type, loaded before any pivot_root
import signal
import struct
import sys
import time
from typing import Any

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 1, 24, 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE,
                    signal.SIGXFSZ)  # fmt: skip
_RUSAGE = ("utime", "stime", "maxrss", "minflt", "majflt", "inblock", "oublock", "msgsnd",
           "msgrcv", "nsignals", "nvcsw", "nivcsw")  # fmt: skip
KILL_GRACE = 2.0  # seconds a live step gets to go after its timeout, before SIGKILL

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
# Resolved here, once: each first use in a forked init would look it up again (~20 us).
for _name in ("unshare", "setns", "sethostname", "syscall", "capget", "capset"):
    getattr(libc, _name)
DROPPED: set[int] = set()  # capabilities the zygote has dropped from its own bounding set
END = b"Z\n"  # the init's last line: the step's processes are gone, only its mounts are left


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


# ---- the operations, as wire tuples (see disco.mounts for the objects that plan them) ----


def do(op: tuple[Any, ...]) -> None:
    """Perform one operation: ("mount", target, source, fstype, flags, data), ("dir", path,
    mode), ("file", path, mode), ("chr", path, mode, major, minor), ("link", arg, path),
    ("net", fd or -1), ("hostname", name), ("pivot", path, cwd), ("caps", numbers)."""
    kind = op[0]
    if kind == "mount":
        _, target, source, fstype, flags, data = op
        err = libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data or None))
        check(err, "mount")
    elif kind == "dir":
        os.makedirs(op[1], op[2], exist_ok=True)
    elif kind == "file":
        # Opening an existing file for writing would copy it up into the layer.
        if not os.path.lexists(op[1]):
            os.close(os.open(op[1], os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, op[2]))
    elif kind == "chr":
        os.mknod(op[1], op[2] | 0o020000, os.makedev(op[3], op[4]))
    elif kind == "link":
        os.symlink(op[1], op[2])
    elif kind == "net":
        if op[1] >= 0:
            setns(op[1], CLONE_NEWNET)
        else:
            _loopback_up()
    elif kind == "hostname":
        name = op[1].encode()
        check(libc.sethostname(name, ctypes.c_size_t(len(name))), "sethostname")
    elif kind == "pivot":
        os.chdir(op[1])
        nr = _PIVOT_ROOT.get(os.uname().machine)
        if nr is None:
            raise OSError(38, f"pivot_root: no syscall number for {os.uname().machine}")
        check(libc.syscall(ctypes.c_long(nr), b".", b"."), "pivot_root")
        check(libc.umount2(b".", MNT_DETACH), "umount2")
        os.chdir(op[2])
    elif kind == "caps":
        if not DROPPED.issuperset(op[1]):  # else inherited from the zygote already
            _drop_caps(op[1])
    else:
        raise ValueError(f"unknown operation {kind!r}")


def _loopback_up() -> None:
    import fcntl  # only the zygote's first NOOP step needs these
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0))  # SIOCGIFFLAGS
        flags = struct.unpack("16sH14x", ifr)[1] | 1  # IFF_UP
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags))  # SIOCSIFFLAGS


def _drop_caps(caps: list[int]) -> None:
    for n in caps:
        check(libc.prctl(PR_CAPBSET_DROP, n, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    head, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    check(libc.capget(head, data), "capget")
    for n in caps:  # data = [eff, perm, inh] for caps 0-31, then for 32-63
        data[3 * (n // 32) + 2] &= ~(1 << (n % 32))
    check(libc.capset(head, data), "capset")


# ---- the zygote ----


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


def _which(name: str, path: str) -> str | None:
    if "/" in name:
        return name
    for d in path.split(":"):
        p = os.path.join(d or ".", name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def _open_stdio(spec: Any) -> int | None:
    """None (keep ours), an fd number, or (path, flags, mode) opened before the sandbox."""
    if spec is None or isinstance(spec, int):
        return spec
    path, flags, mode = spec
    return os.open(path, flags | os.O_CLOEXEC, mode)


class Zygote:
    def __init__(self) -> None:
        self.pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.net: int | None = None  # the loopback-only namespace NOOP steps share
        self.current = 0  # the init of the running step
        self.live = False
        self.deadline_hit = False
        self.pending = 0  # an init that has reported, still to be reaped
        self.stopping = False
        self.timed_out = False

    def reap(self) -> None:
        if self.pending:
            os.waitpid(self.pending, 0)
            self.pending = 0

    def loopback(self) -> int:
        if self.net is None:
            ours = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                unshare(CLONE_NEWNET)
                try:
                    self.net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                    _loopback_up()
                finally:
                    setns(ours, CLONE_NEWNET)
            finally:
                os.close(ours)
        return self.net

    def stop_step(self, *_: Any) -> None:
        """Kill the running step: its pid 1 takes the namespace along (NOOP); a live init,
        on SIGUSR1, kills the command and whatever it left, then SIGKILL after a grace."""
        if not self.current:
            return
        try:
            if self.live and not self.deadline_hit:
                os.kill(self.current, signal.SIGUSR1)
                signal.setitimer(signal.ITIMER_REAL, KILL_GRACE)
            else:
                os.kill(self.current, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.deadline_hit = True

    def interrupt(self, *_: Any) -> None:
        """disco was interrupted: stop the running step, and run no other."""
        self.stopping = True
        self.timed_out = False
        self.stop_step()

    def timeout(self, *_: Any) -> None:
        self.timed_out = not self.deadline_hit and not self.stopping
        self.stop_step()

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.stopping:
            return _failed("interrupted: no more steps")
        ops = [tuple(op) for op in req["ops"]]
        ops = [("net", self.loopback()) if op == ("net", "shared") else op for op in ops]
        stdio = [_open_stdio(s) for s in req["stdio"]]
        r, w = os.pipe2(os.O_CLOEXEC)
        self.live, self.deadline_hit, self.timed_out = not req["newpid"], False, False
        start = time.monotonic()
        if req["newpid"]:
            unshare(CLONE_NEWPID)  # our next child is pid 1 of a new pid namespace
        pid = -1
        try:
            pid = os.fork()
        except OSError:
            os.close(w)
            os.close(r)
            raise
        finally:
            if req["newpid"] and pid != 0:
                setns(self.pid_ns, CLONE_NEWPID)
        if pid == 0:
            os.close(r)
            _init(req, ops, stdio, w)
        os.close(w)
        for spec, fd in zip(req["stdio"], stdio):
            if isinstance(spec, (tuple, list)) and fd is not None:  # opened here from a path
                os.close(fd)
        self.current = pid
        if req.get("timeout"):
            signal.setitimer(signal.ITIMER_REAL, req["timeout"])
        try:
            data = b""
            while not data.endswith(END) and (chunk := os.read(r, 4096)):
                data += chunk
            # The init ends what it says with END once the step's processes are gone; it
            # takes a while yet to be gone itself (its mounts are torn down, ~0.6 ms):
            # disco is answered first and the init reaped after (pending). Without END it
            # failed before the command's end, and its end of the pipe closed as it exited.
            status, ru, ended = 0, None, data.endswith(END)
            if not ended:
                _, status, ru = os.wait4(pid, 0)
            else:
                self.pending = pid
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.current = 0
            os.close(r)
        wall = time.monotonic() - start
        lines = (data[: -len(END)] if ended else data).decode().splitlines()
        msgs = {k: v for k, _, v in (ln.partition(" ") for ln in lines)}
        if "U" in msgs:  # the command's own; else (no command ran) the init's
            usage = tuple(float(x) for x in msgs.pop("U").split())
        else:
            usage = tuple(getattr(ru, f"ru_{f}") for f in _RUSAGE) if ru else (0,) * 12
        return {
            "msgs": msgs,
            "status": status,
            "usage": usage,
            "wall": wall,
            "timed_out": self.timed_out,
        }


class _Command:
    """The init's command, and the signals that came for it."""

    def __init__(self) -> None:
        self.pid = 0
        self.pending: list[int] = []

    def forward(self, signum: int, _frame: Any = None) -> None:
        if self.pid:
            os.kill(self.pid, signum)
        else:
            self.pending.append(signum)

    def kill(self, _signum: int = 0, _frame: Any = None) -> None:
        self.forward(signal.SIGKILL)

    def started(self, pid: int) -> None:
        self.pid = pid
        for signum in self.pending:
            os.kill(pid, signum)


def _failed(message: str) -> dict[str, Any]:
    return {"msgs": {"F": message}, "status": 0, "usage": (0,) * 12, "wall": 0.0,
            "timed_out": False}  # fmt: skip


def _init(req: dict[str, Any], ops: list[tuple[Any, ...]], stdio: list[int | None], w: int) -> None:
    """The step's init: namespaces and mounts, then it spawns the command and reaps its
    whole tree, as pid 1 of the step's pid namespace (NOOP) or as a subreaper (live)."""
    code = 127
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        # A signal for the command may come before the command does: it is kept for it.
        # (SIGUSR1: disco was interrupted or the step ran out of time, kill it.)
        command = _Command()
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, command.forward)
        signal.signal(signal.SIGUSR1, command.kill)
        umask = os.umask(0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        unshare(req["flags"])
        for target, fd in enumerate(stdio):
            if fd is not None:
                os.dup2(fd, target)
        for i, op in enumerate(ops):
            try:
                do(op)
            except OSError as e:
                os.write(w, f"E {i} {e.errno or 0}\n".encode())
                os._exit(code)
        os.umask(umask)
        env, argv = req["env"], req["argv"]
        exe = _which(argv[0], env.get("PATH", "/usr/bin:/bin"))
        if exe is None:
            os.write(w, b"X 2\n")
            os._exit(code)
        live = not req["newpid"]
        if live:  # orphans of the command become ours, not init's
            check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
        try:
            pid = os.posix_spawn(exe, argv, env, setsigdef=_DEFAULT_SIGNALS)
            command.started(pid)
        except OSError as e:
            os.write(w, f"X {e.errno}\n".encode())
            os._exit(code)
        if not live:
            with open("/proc/self/comm", "w") as f:  # what `ps` shows as pid 1
                f.write("disco-init")
        for s in (signal.SIGINT, signal.SIGQUIT):  # the terminal signals the command itself
            signal.signal(s, signal.SIG_IGN)
        # The usage of the command's tree, not ours: we are a fork of the zygote, and our
        # memory is not the step's. (resource.struct_rusage was imported before the fork.)
        status, usage = 0, [0.0] * len(_RUSAGE)
        while True:
            try:
                got, st, ru = os.wait4(-1, 0)
            except ChildProcessError:
                break
            _add(usage, ru)
            if got == pid:
                status = st
                if live:
                    break
                try:  # NOOP: what the command left dies now, before disco reads the layer;
                    os.kill(-1, signal.SIGKILL)  # we reap it (as pid 1, we are spared)
                except ProcessLookupError:
                    pass
        os.write(w, f"S {status}\nU {' '.join(map(repr, usage))}\n".encode())
        if live:
            os.write(w, f"K {' '.join(map(str, _kill_children()))}\n".encode())
        os.write(w, END)
        code = 0
    except BaseException as e:  # noqa: B036 -- the child must never return into the loop
        os.write(w, f"F {type(e).__name__}: {e}".replace("\n", " ").encode() + b"\n")
    os._exit(code)


def _add(usage: list[float], ru: Any) -> None:
    """Add a reaped child's rusage: times and counts add up, the peak RSS is the largest."""
    for i, name in enumerate(_RUSAGE):
        value = getattr(ru, f"ru_{name}")
        usage[i] = max(usage[i], value) if name == "maxrss" else usage[i] + value


def _kill_children() -> list[int]:
    """Kill and reap every process left behind (live daemons, reparented to us): they would
    keep the step's mount namespace, and so its overlays, alive."""
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
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed.append(k)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return sorted(set(killed))


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError):
        return 0


def main() -> None:
    req_fd, rep_fd = int(sys.argv[1]), int(sys.argv[2])
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # never outlive disco
    zygote = Zygote()
    gc.freeze()  # a forked init then copies fewer of our pages: no collector touches them
    gc.disable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # disco decides; the command gets its own
    signal.signal(signal.SIGALRM, zygote.timeout)  # a step's time limit, or its grace
    signal.signal(signal.SIGUSR1, zygote.interrupt)  # disco was interrupted
    while (req := receive(req_fd)) is not None:
        if req.get("drop"):  # every step of this dance drops these: once, for all
            try:
                _drop_caps(req["drop"])
                DROPPED.update(req["drop"])
            except OSError:  # then each step drops them, and says so if it cannot
                pass
            continue
        if req.get("sync"):  # disco waits for the last step's init to be gone
            try:
                send(rep_fd, {})
            except OSError:
                break
            continue
        try:
            answer = zygote.run(req)
        except OSError as e:
            answer = _failed(f"zygote: {e}")
        try:
            send(rep_fd, answer)
        except OSError:  # disco is gone, or has stopped listening: so do we
            break
        finally:
            zygote.reap()
    zygote.reap()


if __name__ == "__main__":
    main()
