"""The zygote: one small process per dance and mode that runs every step's sandbox
(DESIGN §7, §12; docs/sandbox-notes.md tells the whole engine).

runner.py starts it with `python3 -I -S` and nothing of disco but disco.engine's zygote,
syscalls, stepinit and leftovers (about 10 MB where disco is 30). A NOOP zygote is pid 1
of a pid namespace of its own, in new uts, ipc and loopback-only network namespaces and a
new session keyring, which every NOOP step shares with a read-only /sys and a minimal
/dev made once; its steps run in a pid namespace below it, whose init (stepinit.py)
mounts their /proc. A live zygote stays in the host's namespaces, as a subreaper.

Per step the zygote unshares a fresh mount namespace, mounts the step's overlays and
binds, pivots, starts the command there (live: posix_spawn, a vfork; NOOP: a fork that
enters the steps' user namespace first, stepinit.step) and goes back to its own mount
namespace with setns. Once the command and what it left running are reaped, nothing can
use the step's mounts and its layer may change: live, the namespace died with them;
NOOP, we hold it, and unmount it once disco is answered, unless the step left it as
built and the next step alike may use it again (warm.py). The answer is the exit status
and the wait4 rusage of the command's tree.

Requests and answers are marshal'ed dicts, length-prefixed. Keep this file free of
imports beyond the few builtins.
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

from disco.engine import stepinit
from disco.engine.leftovers import copied_links, remove, remove_all, watchdog
from disco.engine.stepinit import DEFAULT_SIGNALS, RUSAGE, USAGE, add_usage
from disco.engine.syscalls import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_PDEATHSIG,
    check,
    do,
    do_all,
    forget_peak,
    libc,
    loopback_up,
    new_session_keyring,
    setns,
    unshare,
)
from disco.engine.warm import Keeper

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing too: imported, it would cost each step's maxrss a megabyte
    from typing import Any


# ---- the operations, as wire tuples (see mounts.py for the objects that plan them) ----


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
        self.userns = self.pidns = -1  # NOOP: the steps' user namespace, our pid namespace
        self.cgroups: list[int] = []  # cgroup.procs of the steps' cgroup, open for writing
        self.init = -1  # NOOP: a pidfd of the steps' pid namespace's pid 1 (stepinit.init)
        self.orphans = ""  # the /proc file that lists init's children
        self.orders = self.answers = -1  # our pipes to it, and its to us
        self.report = -1  # the running step says here why it could not run its command
        self.keeper = Keeper("")  # NOOP: the steps' namespaces we hold (warm.py)

    def setup(self, msg: dict[str, Any]) -> None:
        """Our namespaces, and what every step binds from them (msg["ops"])."""
        self.noop = bool(msg["noop"])
        self.keeper.tag = str(msg.get("tag", ""))
        if self.noop and os.getpid() != 1:
            raise OSError(22, "a NOOP zygote must be pid 1 of its own pid namespace")
        own_net = self.noop and not msg.get("host_network")
        flags = CLONE_NEWNS | (CLONE_NEWUTS | CLONE_NEWIPC) * self.noop | CLONE_NEWNET * own_net
        unshare(flags)
        self.own_uts = self.noop
        flags = os.O_WRONLY | os.O_CLOEXEC
        self.cgroups = [os.open(path, flags) for path in msg.get("cgroups", ())]
        if own_net:
            loopback_up()
        if self.noop:
            self.userns = msg["userns"]
            new_session_keyring()  # the steps' own, never disco's
            # In the steps' cgroup ourselves: a step forked there needs no move, which
            # costs an RCU grace period (milliseconds). Past its memory limit the OOM
            # killer takes the largest there: a step's hog, not us (10 MB).
            for procs in self.cgroups:
                os.write(procs, b"0")
            self.pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            with open("/proc/self/comm", "w") as f:  # what `ps` shows on the host
                f.write("disco-zygote")
        else:
            if self.cgroups:  # whatever of a step is left when we die: to the watchdog
                watchdog(msg["cgroups"][0])
                for procs in self.cgroups:
                    os.write(procs, b"0")
            # What the command leaves running comes to us, to be killed.
            check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
        do_all(msg["ops"])
        self.base = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        if self.noop:
            self.start_init(msg["early"], msg["init_root"])
        forget_peak()

    def prebuild(self, ops: list[Any]) -> None:
        """Mounts that later steps bind from (a view, its read-only binds), in our own
        namespace: a step then makes them in one recursive bind each."""
        do_all(ops)
        forget_peak()

    def start_init(self, early: list[Any], root: str) -> None:
        """The steps' pid namespace and its pid 1 (stepinit.init), which mounts its /proc
        in our mount namespace (`early`) before it says it is ready."""
        orders_r, self.orders = os.pipe2(os.O_CLOEXEC)
        self.answers, answers_w = os.pipe2(os.O_CLOEXEC)
        unshare(CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            setns(self.pidns, CLONE_NEWPID)
            raise
        if pid == 0:
            ours = [self.req, self.rep, self.base, self.pidns, self.orders, self.answers]
            ours += self.cgroups
            stepinit.init(orders_r, answers_w, ours, early, root)
        setns(self.pidns, CLONE_NEWPID)
        os.close(orders_r)
        os.close(answers_w)
        self.init = os.pidfd_open(pid)
        # Whatever a step leaves running becomes init's child (pid 1 in its namespace).
        self.orphans = os.path.join(early[0][1], "1/task/1/children")
        if os.read(self.answers, 1) != b"r":
            raise OSError(5, "the steps' init could not start")

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
        if self.noop:
            self.keeper.settle(req["layer"], req["discard"] == req["layer"])
        if self.report >= 0:  # the step is gone: it said why it failed, or nothing
            said = os.read(self.report, 4096).decode(errors="replace")
            os.close(self.report)
            self.report = -1
            if said:
                msgs[said[0]] = said[1:]
        if strays:
            msgs["K"] = " ".join(map(str, strays))
        return {"msgs": msgs, "status": status, "usage": tuple(usage),
                "wall": time.monotonic() - start, "timed_out": timed_out,
                "copied": copied_links(work) if os.path.isdir(work) else []}  # fmt: skip

    def spawn(self, req: dict[str, Any], stdio: list[int | None]) -> tuple[int, dict[str, str]]:
        """The step's mount namespace, and the command started in it; (0, why) if not.
        The operations name the paths in the step's layer relative to it."""
        if self.noop:
            return self.spawn_warm(req, stdio)
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
            if self.noop:
                return self.fork_step(req, stdio), {}
            # posix_spawnp searches our PATH (the child is a vfork, reading our memory):
            # the step's, so found as its shell would find it, in C.
            os.environ["PATH"] = env.get("PATH", "/usr/bin:/bin")
            actions = [(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(stdio) if fd is not None]
            try:
                pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions,
                                      setsigdef=DEFAULT_SIGNALS, setsigmask=(),
                                      scheduler=(os.SCHED_OTHER, os.sched_param(0)))  # fmt: skip
            except OSError as e:
                return 0, {"X": str(e.errno)}
            return pid, {}
        finally:
            os.umask(umask)
            # Back home: the step's namespace is now its processes' alone.
            setns(self.base, CLONE_NEWNS)

    def spawn_warm(
        self, req: dict[str, Any], stdio: list[int | None]
    ) -> tuple[int, dict[str, str]]:
        """NOOP: spawn() in the namespace the last step left unchanged, if this step's
        is alike and nothing below it changed; else in one built anew, which we hold
        (and keep, if the step leaves it as built and keeping pays): warm.py."""
        keeper, fresh = self.keeper, bool(req.get("fresh"))
        if keeper.enter(req["ops"], fresh):
            try:
                return self.fork_step(req, stdio), {}
            finally:
                setns(self.base, CLONE_NEWNS)
        warm = keeper.build(req["ops"], req["layer"], fresh)
        unshare(CLONE_NEWNS)
        umask = os.umask(0)
        try:
            warm.unshared()
            os.chdir(req["layer"])
            for i, op in enumerate(req["ops"]):
                try:
                    do(tuple(op))
                except OSError as e:
                    keeper.retire()
                    return 0, {"E": f"{i} {e.errno or 0}"}
            os.umask(umask)
            warm.built()
            return self.fork_step(req, stdio), {}
        finally:
            os.umask(umask)
            setns(self.base, CLONE_NEWNS)

    def fork_step(self, req: dict[str, Any], stdio: list[int | None]) -> int:
        """Fork the step's command into the steps' pid namespace, from the step's mount
        namespace we are in (stepinit.step). Its pipe says why it could not run."""
        self.report, out = os.pipe2(os.O_CLOEXEC)
        setns(self.init, CLONE_NEWPID)
        try:
            pid = os.fork()
            if pid == 0:
                stepinit.step(req, stdio, out, self.userns)
        finally:
            setns(self.pidns, CLONE_NEWPID)  # our next child is ours again
            os.close(out)
        return pid

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
        usage = [0.0] * len(RUSAGE)
        add_usage(usage, ru)
        strays = self.reap(usage)
        return status, usage, timed_out, strays

    def kill(self, pid: int) -> None:
        """Kill the running step's command (what it left, the reaping kills)."""
        try:
            os.kill(pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self, usage: list[float]) -> list[int]:
        """Kill and reap what the command left running: it would keep the step's mount
        namespace, and so its overlays, alive. Live, the pids killed."""
        if self.noop:  # the steps' init kills and reaps what is left, and says its usage
            with open(self.orphans, "rb") as f:
                if not f.read():  # nothing of the step's came to init: nothing is left
                    return []
            os.write(self.orders, b"k")
            data = b""
            while len(data) < USAGE.size:
                chunk = os.read(self.answers, USAGE.size - len(data))
                if not chunk:
                    raise OSError(5, "the steps' init is gone")
                data += chunk
            for i, value in enumerate(USAGE.unpack(data)):
                usage[i] = max(usage[i], value) if RUSAGE[i] == "maxrss" else usage[i] + value
            return []
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
            add_usage(usage, ru)


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
    try:
        serve(zygote, req_fd, rep_fd)
    finally:
        zygote.keeper.close()


def serve(zygote: Zygote, req_fd: int, rep_fd: int) -> None:
    while True:
        zygote.keeper.idle(req_fd)
        msg = receive(req_fd)
        if msg is None:
            break
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
        zygote.keeper.tidy()
        if "layer" in msg:
            remove_all([os.path.join(msg["layer"], "work"), msg["discard"], *msg["remove"]])


if __name__ == "__main__":
    main()
