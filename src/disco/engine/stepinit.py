"""The processes of the steps' pid namespace (DESIGN §7, §12; docs/sandbox-notes.md).

A NOOP zygote makes, once, a pid namespace for its steps whose pid 1 is `init` here: it
mounts that namespace's /proc (the host's settings read-only) in the zygote's mount
namespace, where every step binds it, then pivots into an empty root, drops every fd but
its pipes and is no longer dumpable: nothing of disco's is seen or reached through it.
Orphans of a step come to it; once a step's command is gone it kills whatever is left
(`kill(-1)`, which pid 1 may) and says what they used.

Each step's command is a process the zygote forks into that namespace once it has built
the step's mounts (overlays, binds, pivot_root) in a mount namespace of its own, as root
of the host: it unshares a cgroup namespace (rooted at the steps' cgroup, where it was
born), enters the steps' user namespace and a mount namespace of its own, which locks
every mount the zygote made; then a session of its own, no fd but its stdio, and it
becomes the command.

Imported by the zygote: keep it free of imports beyond the few builtins.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C half: no enum (see zygote.py)
import ctypes
import os
import struct

from disco.engine.syscalls import (
    CLONE_NEWCGROUP,
    CLONE_NEWNS,
    CLONE_NEWUSER,
    PR_SET_DUMPABLE,
    PR_SET_NAME,
    PR_SET_PDEATHSIG,
    do,
    do_all,
    libc,
    setns,
    unshare,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing too: imported, it would cost each step's maxrss a megabyte
    from typing import Any, NoReturn

DEFAULT_SIGNALS = (_signal.SIGINT, _signal.SIGQUIT, _signal.SIGTERM, _signal.SIGHUP,
                   _signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGUSR1, _signal.SIGALRM)  # fmt: skip
RUSAGE = ("utime", "stime", "maxrss", "minflt", "majflt", "inblock", "oublock", "msgsnd",
          "msgrcv", "nsignals", "nvcsw", "nivcsw")  # fmt: skip
USAGE = struct.Struct("<12d")


def add_usage(usage: list[float], ru: Any) -> None:
    """Add a reaped process's rusage: times and counts add up, the peak RSS is the largest."""
    for i, name in enumerate(RUSAGE):
        value = getattr(ru, f"ru_{name}")
        usage[i] = max(usage[i], value) if name == "maxrss" else usage[i] + value


def init(orders: int, answers: int, ours: list[int], early: list[Any], root: str) -> NoReturn:
    """Be pid 1 of the steps' pid namespace: `early` mounts its /proc in the zygote's
    mount namespace, then an empty tmpfs at `root` becomes ours. Each byte on `orders`:
    kill what is left of the last step, reap it, and answer with its usage. End of file:
    the zygote is done. Never returns."""
    try:
        libc.prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0)  # dies with the zygote
        libc.prctl(PR_SET_NAME, b"init", 0, 0, 0)  # what `ps` shows as pid 1
        _retitle(b"init")
        for fd in ours:
            os.close(fd)
        do_all(early)
        unshare(CLONE_NEWNS)
        null = os.open("/dev/null", os.O_RDWR)
        do(("mount", root, "tmpfs", "tmpfs", 2 | 4 | 8 | 1, "mode=555,size=4k", ""))
        do(("pivot", root, "/"))
        for n in range(3):
            os.dup2(null, n)
        os.closerange(3, min(orders, answers))
        os.closerange(max(orders, answers) + 1, 1 << 20)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        _nobody_who_kills()
        os.write(answers, b"r")
        while os.read(orders, 1):
            try:
                os.kill(-1, _signal.SIGKILL)  # as pid 1: everything but us
            except ProcessLookupError:
                pass
            usage = [0.0] * len(RUSAGE)
            while True:
                try:
                    _, _, ru = os.wait4(-1, 0)
                except ChildProcessError:
                    break
                add_usage(usage, ru)
            os.write(answers, USAGE.pack(*usage))
    finally:
        os._exit(0)


CAP_KILL, PR_SET_KEEPCAPS, NOBODY = 5, 8, 65534


def _nobody_who_kills() -> None:
    """Become nobody, with no capability but CAP_KILL (what `kill(-1)` of a step's
    leftovers needs): a step, root of its own user namespace alone, may not even signal
    us, and we hold nothing of root's."""
    libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    head = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)(1 << CAP_KILL, 1 << CAP_KILL, 0, 0, 0, 0)
    if libc.capset(head, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _retitle(title: bytes) -> None:
    """Our command line, as /proc/1/cmdline shows it, made `title`: the zygote's, whose
    copy we are, names disco's files. Written over the arguments where the kernel
    keeps them (/proc/self/stat: arg_start, arg_end), as setproctitle does."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    start, end = int(fields[45]), int(fields[46])  # fields 48 and 49 of stat(5)
    if end - start > len(title):
        ctypes.memset(start, 0, end - start)
        ctypes.memmove(start, title, len(title))


def step(req: dict[str, Any], stdio: list[int | None], out: int, userns: int) -> NoReturn:
    """Be the step's command: forked by the zygote into the steps' pid namespace, in the
    step's mount namespace it built. Why the command could not run goes to `out`
    (nothing if it did). Never returns."""
    stage = "F"
    try:
        libc.prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0)  # dies with the zygote
        unshare(CLONE_NEWCGROUP)  # rooted at the steps' cgroup, born in it
        setns(userns, CLONE_NEWUSER)
        unshare(CLONE_NEWNS)
        os.setsid()
        for n, given in enumerate(stdio):
            if given is not None and given != n:
                os.dup2(given, n)
        os.closerange(3, out)
        os.closerange(out + 1, 1 << 20)
        for sig in DEFAULT_SIGNALS:
            _signal.signal(sig, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        stage = "X"
        execute(req["argv"], req["env"])
    except BaseException as e:  # noqa: B036 -- nothing may escape a forked child
        what = str(getattr(e, "errno", 0) or 0) if stage == "X" else f"{e}"
        os.write(out, f"{stage}{what}".encode(errors="replace")[:4000])
    finally:
        os._exit(127)


def execute(argv: list[str], env: dict[str, str]) -> None:
    """execve `argv`, found in the step's PATH as a shell finds it (os.execvpe imports a
    module, and ours are not to be found after pivot_root)."""
    name = argv[0]
    if "/" in name:
        os.execve(name, argv, env)
    error: OSError = FileNotFoundError(2, "No such file or directory")
    for d in env.get("PATH", "/usr/bin:/bin").split(":"):
        try:
            os.execve(os.path.join(d or ".", name), argv, env)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:  # found but not runnable: say so, unless another one runs
            error = e
    raise error
