"""Run one step in a fresh overlay layer, in its own namespaces (DESIGN §7, §12).

A layer is a directory holding `upper/` (the step's writes, laid out like the target
root: a write to /home/x on its own partition lands in upper/home/x) and, while the
step runs, `work/` (overlayfs work dirs and mount points, removed afterwards).

The parent plans the sandbox as a list of small operations, forks one child that
unshares its namespaces and does them with a few direct syscalls, then spawns the
command and reaps its whole tree (as pid 1 of a new pid namespace in NOOP, as a
subreaper killing what is left behind in live mode). Every mount lives in the child's
private mount namespace and dies with it: nothing is ever unmounted by the parent.
Each operation also describes itself as a shell command, so a failed setup comes back
with a script that reproduces it.
"""

from __future__ import annotations

import contextlib
import enum
import os
import resource
import shlex
import shutil
import signal
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn

from disco.errors import CommandError, DiscoError
from disco.mounts import (
    API_DIRS,
    CAPS,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    MS_BIND,
    MS_MOVE,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_PDEATHSIG,
    SAFE,
    DropCaps,
    Make,
    Mount,
    Network,
    Op,
    PivotRoot,
    SetHostname,
    Submount,
    check,
    libc,
    read_mounts,
    submounts,
    under,
    unshare,
)

# The capabilities that reach outside a NOOP sandbox.
NOOP_DROP_CAPS = (
    "sys_module sys_rawio sys_pacct sys_boot sys_time sys_tty_config audit_control mac_admin"
    " syslog wake_alarm block_suspend perfmon bpf"
).split()
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Fixed layer format for the change reader: no metacopy, redirects or index.
OVERLAY_OPTIONS = "redirect_dir=off,index=off,metacopy=off,xino=off"
_DEVICES = {"null": "1 3", "zero": "1 5", "full": "1 7", "random": "1 8", "urandom": "1 9",
            "tty": "5 0"}  # fmt: skip
_PAGE = 4096  # mount(2) options must fit in one page


class Mode(enum.Enum):
    LIVE = "live"
    NOOP = "noop"


# ---- data ----


@dataclass(frozen=True)
class Bind:
    """Show a host path inside the sandbox (e.g. the merged parameters, an interceptor)."""

    source: Path
    target: str  # absolute path in the sandbox; made there if missing
    readonly: bool = True


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    root: Path  # the target root: "/" or a scratch root
    layer: Path  # this step's layer directory; writes land in layer/upper
    lower_layers: tuple[Path, ...] = ()  # earlier layers, newest first
    mode: Mode = Mode.NOOP
    env: Mapping[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    cwd: str = "/"
    hostname: str | None = None  # the node's name; None keeps the host's
    hide: tuple[str, ...] = ()  # sandbox paths covered by an empty tmpfs (disco's state)
    binds: tuple[Bind, ...] = ()
    network: int | None = None  # NOOP: an fd from loopback_network(); None: a new one
    stdin: int | None = None  # fds; None: /dev/null for stdin, ours for stdout/stderr
    stdout: int | None = None
    stderr: int | None = None


@dataclass(frozen=True)
class Usage:
    """os.wait4 resource usage of the step's whole process tree (getrusage(2) names)."""

    utime: float
    stime: float
    maxrss: int  # KiB; at least the RSS of disco at fork time (see docs/sandbox-notes.md)
    minflt: int
    majflt: int
    inblock: int
    oublock: int
    msgsnd: int
    msgrcv: int
    nsignals: int
    nvcsw: int
    nivcsw: int

    @classmethod
    def of(cls, ru: resource.struct_rusage) -> Usage:
        return cls(*(getattr(ru, f"ru_{f}") for f in cls.__dataclass_fields__))


@dataclass(frozen=True)
class StepResult:
    returncode: int  # exit status, or -N if killed by signal N
    wall: float  # seconds, sandbox setup included
    usage: Usage
    stray_pids: tuple[int, ...] = ()  # live: processes the command left running, killed


def upper_of(layer: Path) -> Path:
    return layer / "upper"


# ---- planning (pure) ----


def _overlay(lowers: Sequence[Path], upper: Path, work: Path, target: str, flags: int) -> Mount:
    base = lowers[-1]  # the target root, or a filesystem mounted in it
    for low in lowers[:-1]:  # the kernel allows upper/work inside a lower, not lower in lower
        if under(str(low), str(base)) and low.stat().st_dev == base.stat().st_dev:
            raise DiscoError(
                f"cannot stack layer {low} on {base}: it lies inside it, on the same filesystem",
                "keep the layers of a NOOP dance on a filesystem of their own, e.g. a tmpfs",
            )
    paths = [*map(str, lowers), str(upper), str(work)]
    for p in paths:
        if any(c in p for c in ",:\\"):
            raise DiscoError(f"cannot use {p} as an overlay layer", "rename it without , : or \\")
    lower = ":".join(paths[:-2])
    data = f"lowerdir={lower},upperdir={upper},workdir={work},{OVERLAY_OPTIONS}"
    if len(data) >= _PAGE:
        raise DiscoError(
            f"{len(lowers)} stacked layers do not fit in one overlay mount",
            "squash earlier layers into one",
        )
    return Mount(target, "overlay", "overlay", flags, data)


def plan(step: Step, subs: Sequence[Submount], host_name: str) -> list[Op]:
    """The operations that build the step's sandbox, in order."""
    noop = step.mode is Mode.NOOP
    root, work, merged = str(step.root), step.layer / "work", str(step.layer / "work" / "mnt")
    ovl_flags = MS_NODEV if noop else 0

    def layers(rel: str) -> list[Path]:
        lows = [upper_of(x) / rel for x in step.lower_layers]
        return [p for p in lows if p.is_dir()] + [Path(root, rel)]

    ops: list[Op] = [Mount("/", flags=MS_REC | MS_PRIVATE)]
    if noop:
        ops.append(Network(step.network))
    for i, sub in enumerate(subs, 1):  # sub-overlays first, so no upper nests in a mounted one
        if not sub.readonly:
            up, stage = upper_of(step.layer) / sub.path, str(work / f"m{i}")
            ops.append(_overlay(layers(sub.path), up, work / str(i), stage, ovl_flags))
    ops.append(_overlay(layers(""), upper_of(step.layer), work / "0", merged, ovl_flags))
    for i, sub in enumerate(subs, 1):
        target = os.path.join(merged, sub.path)
        if sub.readonly:
            ops += [Mount(target, os.path.join(root, sub.path), flags=MS_BIND),
                    Mount(target, flags=MS_BIND | MS_REMOUNT | MS_RDONLY)]  # fmt: skip
        else:
            ops.append(Mount(target, str(work / f"m{i}"), flags=MS_MOVE))

    def at(path: str) -> str:
        return os.path.join(merged, path.lstrip("/"))

    ops += [Make("dir", at(d)) for d in API_DIRS]
    if noop:
        ops += [Mount(at("proc"), "proc", "proc", SAFE)]
        for p in [p for p in ("proc/sys", "proc/sysrq-trigger") if os.path.exists(f"/{p}")]:
            ops += [
                Mount(at(p), at(p), flags=MS_BIND),
                Mount(at(p), flags=MS_BIND | MS_REMOUNT | MS_RDONLY | SAFE),
            ]
        ops += [
            Mount(at("sys"), "sysfs", "sysfs", MS_RDONLY | SAFE),
            Mount(at("dev"), "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=4m"),
        ]
        ops += [Make("chr", at(f"dev/{n}"), dev, 0o666) for n, dev in _DEVICES.items()]
        pts = "newinstance,ptmxmode=0666,mode=620,gid=5"
        ops += [Make("dir", at("dev/pts")), Make("dir", at("dev/shm"), mode=0o1777),
                Mount(at("dev/pts"), "devpts", "devpts", MS_NOSUID | MS_NOEXEC, pts)]  # fmt: skip
        links = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
                 "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}  # fmt: skip
        ops += [Make("link", at(f"dev/{n}"), t) for n, t in links.items()]
        ops += [Mount(at("run"), "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")]
    else:
        ops += [Mount(at(d), f"/{d}", flags=MS_BIND | MS_REC) for d in API_DIRS]
    fresh = [f"/{d}" for d in API_DIRS] if noop else []  # already new and empty
    hide = [h for h in step.hide if Path(root, h.lstrip("/")).is_dir()]
    hide = [h for h in hide if not any(under(h, d) for d in fresh)]
    for h in hide:
        ops.append(Mount(at(h), "tmpfs", "tmpfs", SAFE, "mode=755,size=1m"))
    for b in step.binds:
        # A missing mount point is made in the view (in the layer: excluded from reports).
        ops.append(Make("dir" if b.source.is_dir() else "file", at(b.target)))
        ops.append(Mount(at(b.target), str(b.source), flags=MS_BIND | MS_REC))
        if b.readonly:
            ops.append(Mount(at(b.target), flags=MS_BIND | MS_REMOUNT | MS_RDONLY))
    ops += [Mount(at(h), flags=MS_REMOUNT | MS_RDONLY | SAFE, data="mode=755") for h in hide]
    if step.hostname and (noop or step.hostname != host_name):
        ops.append(SetHostname(step.hostname))
    ops.append(PivotRoot(merged, step.cwd))
    if noop:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        ops.append(DropCaps(tuple(n for n in map(CAPS.index, NOOP_DROP_CAPS) if n <= last)))
    return ops


def _unshare_flags(step: Step, host_name: str) -> int:
    if step.mode is Mode.NOOP:
        return CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET * (step.network is None)
    return CLONE_NEWNS | (CLONE_NEWUTS if step.hostname not in (None, host_name) else 0)


def describe(step: Step, ops: Sequence[Op]) -> str:
    """A shell command that rebuilds the sandbox and runs the step, for a human to debug."""
    flags = _unshare_flags(replace(step, network=None), os.uname().nodename)
    bits = {CLONE_NEWUTS: "--uts", CLONE_NEWIPC: "--ipc", CLONE_NEWNET: "--net"}
    names = [n for bit, n in bits.items() if flags & bit]
    names += ["--pid", "--fork"] if step.mode is Mode.NOOP else []
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(step.env.items()))
    lines = [op.describe() for op in ops if not isinstance(op, DropCaps)]
    caps = [op.describe() + " " for op in ops if isinstance(op, DropCaps)]
    lines.append(f"exec {''.join(caps)}env -i {env} {shlex.join(step.argv)}")
    body = "\n".join(lines)
    return shlex.join(["unshare", "--mount", *names, "bash", "-ec", body])


# ---- running ----


def _prepare(step: Step, subs: Sequence[Submount]) -> None:
    """Create upper/ and a fresh work/; dirs we create in upper/ copy their lower's metadata."""
    work = step.layer / "work"
    if work.exists():
        shutil.rmtree(work)
    for d in ["mnt", *map(str, range(len(subs) + 1)), *(f"m{i}" for i in range(1, len(subs) + 1))]:
        (work / d).mkdir(parents=True)
    for rel in ["", *(s.path for s in subs if not s.readonly)]:
        parts = Path(rel).parts
        for n in range(len(parts) + 1):
            part = os.path.join(*parts[:n]) if n else ""
            up = upper_of(step.layer) / part
            if up.is_dir():
                continue
            up.mkdir(parents=True)
            srcs = [upper_of(x) / part for x in step.lower_layers] + [step.root / part]
            src = next((s for s in srcs if s.is_dir()), None)
            if src is not None:
                st = src.stat()
                os.chown(up, st.st_uid, st.st_gid)
                os.chmod(up, stat.S_IMODE(st.st_mode))
                os.utime(up, ns=(st.st_atime_ns, st.st_mtime_ns))


@contextlib.contextmanager
def loopback_network() -> Iterator[int]:
    """A network namespace with only loopback, up, for the NOOP steps of one dance to share.

    Entering it costs a step microseconds where a new one costs about 1.5 ms. We make it
    ourselves, keep an fd on it, and go back to ours at once.
    """
    ours = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWNET)
        try:
            net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            Network().do()
        finally:
            check(libc.setns(ours, CLONE_NEWNET), "setns")
    finally:
        os.close(ours)
    try:
        yield net
    finally:
        os.close(net)


def _fork(noop: bool) -> int:
    """Fork; in NOOP the child is pid 1 of a new pid namespace, and we keep ours."""
    if not noop:
        return os.fork()
    fd, pid = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC), -1
    try:
        unshare(CLONE_NEWPID)
        pid = os.fork()
    finally:
        if pid != 0:
            check(libc.setns(fd, CLONE_NEWPID), "setns")
            os.close(fd)
    return pid


def _child(
    step: Step, ops: Sequence[Op], flags: int, stdio: Sequence[int | None], w: int
) -> NoReturn:
    """The forked child: namespaces and mounts, then it spawns the command and reaps its
    whole tree, as pid 1 of the step's pid namespace (NOOP) or as a subreaper (live)."""
    code = 127
    try:
        umask = os.umask(0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        unshare(flags)
        for target, fd in enumerate(stdio):
            if fd is not None:
                os.dup2(fd, target)
        for i, op in enumerate(ops):
            try:
                op.do()
            except OSError as e:
                os.write(w, f"E {i} {e.errno or 0}\n".encode())
                os._exit(code)
        os.umask(umask)
        env = dict(step.env)
        exe = shutil.which(step.argv[0], path=env.get("PATH", DEFAULT_PATH))
        if exe is None:
            os.write(w, b"X 2\n")
            os._exit(code)
        dfl = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE,
               signal.SIGXFSZ)  # fmt: skip
        if step.mode is Mode.LIVE:  # orphans of the command become ours, not init's
            check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
        try:
            pid = os.posix_spawn(exe, step.argv, env, setsigdef=dfl)
        except OSError as e:
            os.write(w, f"X {e.errno}\n".encode())
            os._exit(code)
        if step.mode is Mode.NOOP:
            Path("/proc/self/comm").write_text("disco-init")  # what `ps` shows as pid 1
        for s in (signal.SIGINT, signal.SIGQUIT):  # the terminal signals the command itself
            signal.signal(s, signal.SIG_IGN)
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, lambda n, _f: os.kill(pid, n))
        signal.signal(signal.SIGUSR1, lambda _n, _f: os.kill(pid, signal.SIGKILL))  # see _wait
        status = 0
        while True:
            try:
                got, st, _ = os.wait4(-1, 0)
            except ChildProcessError:
                break
            if got == pid:
                status = st
                break
        os.write(w, f"S {status}\n".encode())
        if step.mode is Mode.LIVE:  # in NOOP, our exit as pid 1 kills the rest
            os.write(w, f"K {' '.join(map(str, _kill_children()))}\n".encode())
        code = 0
    except BaseException as e:  # noqa: B036 -- the child must never return into our caller
        os.write(w, f"F {type(e).__name__}: {e}".replace("\n", " ").encode() + b"\n")
    os._exit(code)


def _kill_children() -> list[int]:
    """Kill and reap every process left behind (live daemons, reparented to us): they would
    keep the step's mount namespace, and so its overlays, alive."""
    killed: list[int] = []
    me = os.getpid()
    while True:
        try:
            kids = Path(f"/proc/{me}/task/{me}/children").read_text().split()
        except OSError:  # kernel without CONFIG_PROC_CHILDREN
            kids = [d for d in filter(str.isdigit, os.listdir("/proc")) if _ppid(d) == me]
        for k in map(int, kids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(k, signal.SIGKILL)
            killed.append(k)
        try:
            os.wait4(-1, 0)
        except ChildProcessError:
            return sorted(set(killed))


def _ppid(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError):
        return 0


def run_step(step: Step) -> StepResult:
    """Run `step.argv` in a fresh overlay layer over the target root; see the module doc.

    Raises DiscoError (with a script that reproduces the sandbox as hint) when the
    sandbox cannot be built, CommandError (status 127) when the command cannot be run.
    """
    if not step.argv:
        raise DiscoError("a step needs a command", "give at least the program to run")
    step = _absolute(step)
    host_name = os.uname().nodename
    hidden = [str(step.root / h.lstrip("/")) for h in step.hide]
    skip = [str(step.layer), *map(str, step.lower_layers), *hidden]
    subs = submounts(str(step.root), read_mounts(), skip)
    ops = plan(step, subs, host_name)
    _prepare(step, subs)
    flags = _unshare_flags(step, host_name)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) if step.stdin is None else None
    stdio = (step.stdin if devnull is None else devnull, step.stdout, step.stderr)
    r, w = os.pipe2(os.O_CLOEXEC)
    start = time.monotonic()
    try:
        pid = _fork(step.mode is Mode.NOOP)
        if pid == 0:
            os.close(r)
            _child(step, ops, flags, stdio, w)
        os.close(w)
        w = -1
        msgs, ru, status = _wait(pid, r, step.mode)
    finally:
        for fd in (r, w, devnull):
            if fd is not None and fd >= 0:
                os.close(fd)
    wall = time.monotonic() - start
    shutil.rmtree(step.layer / "work", ignore_errors=True)
    strays = tuple(map(int, msgs.get("K", "").split()))
    if "E" in msgs:
        i, err = map(int, msgs["E"].split())
        raise DiscoError(
            f"cannot build the step's sandbox: {ops[i].describe()}: {os.strerror(err)}",
            f"reproduce it as root with:\n{describe(step, ops)}",
        )
    if "X" in msgs:
        raise CommandError(
            step.argv, 127, f"cannot run {step.argv[0]}: {os.strerror(int(msgs['X']))}"
        )
    if "F" in msgs:
        raise DiscoError(f"the step's sandbox failed: {msgs['F']}", describe(step, ops))
    if "S" in msgs:
        status = int(msgs["S"])
    return StepResult(os.waitstatus_to_exitcode(status), wall, Usage.of(ru), strays)


def _wait(pid: int, r: int, mode: Mode) -> tuple[dict[str, str], resource.struct_rusage, int]:
    """Read the child's messages until it is done, then reap it. If we are interrupted, kill
    the step: pid 1 takes its namespace along (NOOP); a live child, on SIGUSR1, kills the
    command, then whatever it left."""
    try:
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
        _, status, ru = os.wait4(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL if mode is Mode.NOOP else signal.SIGUSR1)
        os.waitpid(pid, 0)
        raise
    msgs = {k: v for k, _, v in (ln.partition(" ") for ln in data.decode().splitlines())}
    return msgs, ru, status


def _absolute(step: Step) -> Step:
    env = step.env
    if step.mode is Mode.LIVE:  # so that systemctl reaches systemd from our pivoted root
        env = {"SYSTEMD_IGNORE_CHROOT": "1", **env}
    return replace(
        step,
        env=env,
        root=Path(os.path.realpath(step.root)),
        layer=Path(os.path.abspath(step.layer)),
        lower_layers=tuple(Path(os.path.abspath(p)) for p in step.lower_layers),
    )
