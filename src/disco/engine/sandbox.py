"""Run steps in fresh overlay layers, in namespaces of their own (DESIGN §7, §12).

A layer is a directory holding `upper/` (the step's writes, laid out like the target
root: a write to /home/x on its own partition lands in upper/home/x) and, while the
step runs, `work/` (overlayfs work dirs and mount points, removed afterwards).

disco plans each step's sandbox as a list of small operations (mounts.py) and hands
it to the zygote (zygote.py, runner.py), a small process started once per dance and mode. What
does not change from step to step it builds once in a mount namespace of its own: in
NOOP a /proc, a read-only /sys and a minimal /dev, and for every step the binds (the
view at /var/disco, with the real binaries read-only inside it), each made once and
then bound into a step in one recursive bind. Per step, the zygote unshares a mount
namespace, mounts the step's overlays, binds those, pivots, spawns the command and
returns to its own namespace; the step's mounts die with its processes, which the
zygote reaps all (in NOOP as pid 1 of the dance's pid namespace, in live mode as a
subreaper killing what is left behind). Nothing is ever unmounted by disco. Each
operation also describes itself as a shell command, so a failed setup comes back with
a script that reproduces it.
"""

from __future__ import annotations

import enum
import os
import resource
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from disco.engine.mounts import (
    API_DIRS,
    MS_BIND,
    MS_MOVE,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    SAFE,
    Make,
    Mount,
    Op,
    PivotRoot,
    Submount,
    under,
)
from disco.errors import DiscoError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Fixed layer format for the change reader: no metacopy or redirects. The index keeps a
# copied-up hard-linked file linked to an entry of work/*/index (links.py reads it).
OVERLAY_OPTIONS = "redirect_dir=off,index=on,metacopy=off,xino=off"
_DEVICES = ("null", "zero", "full", "random", "urandom")  # bound from the host's /dev
_DEV_LINKS = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
              "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}  # fmt: skip
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
    shims: Path | None = None  # a dir laid out like the root, shown over it (interceptors)
    # None: /dev/null for stdin, ours for stdout/stderr; an fd (of the zygote's: pass it
    # to Zygote(), as run_step does); or a file that stdout/stderr are written to.
    stdin: int | None = None
    stdout: int | Path | None = None
    stderr: int | Path | None = None
    timeout: float | None = None  # seconds; then the step is killed with its whole tree


@dataclass(frozen=True)
class Usage:
    """os.wait4 resource usage of the step's whole process tree (getrusage(2) names)."""

    utime: float
    stime: float
    maxrss: int  # KiB; at least the zygote's ~10 MB, spawned from (docs/sandbox-notes.md)
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
    wall: float  # seconds, from the zygote's taking the step to the last of it reaped
    usage: Usage
    stray_pids: tuple[int, ...] = ()  # live: processes the command left running, killed
    timed_out: bool = False
    # (dev, inode) of the files copied up from a hard-linked lower file (links.py)
    copied: frozenset[tuple[int, int]] = frozenset()
    limit: str = ""  # the cgroup limit a failed step ran into, named with its setting


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


def dev_ops(dev: str) -> list[Op]:
    """A minimal /dev at `dev` (an existing dir), a nodev tmpfs: null, zero, full, random,
    urandom bound from the host's (no tty: a step has no terminal), a private devpts, shm,
    and the fd links. A node a step makes there cannot be opened."""
    ops: list[Op] = [Mount(dev, "tmpfs", "tmpfs", SAFE, "mode=755,size=4m")]
    for n in _DEVICES:
        ops += [
            Make("file", f"{dev}/{n}", mode=0o666),
            Mount(f"{dev}/{n}", f"/dev/{n}", flags=MS_BIND),
        ]
    pts = "newinstance,ptmxmode=0666,mode=620,gid=5"
    ops += [Make("dir", f"{dev}/pts"), Make("dir", f"{dev}/shm", mode=0o1777),
            Mount(f"{dev}/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC, pts)]  # fmt: skip
    ops += [Make("link", f"{dev}/{n}", t) for n, t in _DEV_LINKS.items()]
    return ops


def base_ops(mode: Mode, scratch: Path) -> list[Op]:
    """What a zygote builds once in its own mount namespace. NOOP: at scratch/api a
    read-only /sys of its network namespace and a minimal /dev, which every step binds,
    and an empty directory under each read-only submount's overlay."""
    ops: list[Op] = [Mount("/", flags=MS_REC | MS_PRIVATE)]
    if mode is Mode.NOOP:
        api = scratch / "api"
        ops += [Make("dir", str(api / d)) for d in ("proc", "sys", "dev", "empty", "init")]
        ops.append(Mount(str(api / "sys"), "sysfs", "sysfs", MS_RDONLY | SAFE))
        ops += dev_ops(str(api / "dev"))
    return ops


# What the kernel lets root change through /proc beyond its own processes: read-only in
# a step (and locked so); what it tells of the host's keys and timers: hidden.
_PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs", "acpi", "scsi", "driver")
_PROC_HIDDEN = ("keys", "key-users", "timer_list", "sched_debug", "kcore", "kallsyms")


def pid1_ops(scratch: Path) -> list[Op]:
    """What pid 1 of the NOOP steps' pid namespace mounts in the zygote's mount namespace
    (stepinit.init): at scratch/api/proc a /proc of that pid namespace, with the host's
    settings read-only and its keys hidden; every step binds it."""
    proc = str(scratch / "api" / "proc")
    ops: list[Op] = [Mount(proc, "proc", "proc", SAFE)]
    for p in (p for p in _PROC_READONLY if os.path.exists(f"/proc/{p}")):
        ops += [Mount(f"{proc}/{p}", f"{proc}/{p}", flags=MS_BIND | MS_REC),
                Mount(f"{proc}/{p}", flags=MS_BIND | MS_REMOUNT | MS_RDONLY | SAFE)]  # fmt: skip
    ops += [Mount(f"{proc}/{p}", "/dev/null", flags=MS_BIND)
            for p in _PROC_HIDDEN if os.path.isfile(f"/proc/{p}")]  # fmt: skip
    return ops


@dataclass(frozen=True)
class Prebuilt:
    """A bind and the binds below its target, made once by the zygote at `place`."""

    top: Bind
    nested: tuple[Bind, ...]
    place: str

    def ops(self) -> list[Op]:
        ops: list[Op] = []
        for b in (self.top, *self.nested):
            at = self.place + b.target[len(self.top.target) :]
            ops += [Make("dir" if b.source.is_dir() else "file", at),
                    Mount(at, str(b.source), flags=MS_BIND | MS_REC)]  # fmt: skip
        for b in (*reversed(self.nested), self.top):  # read-only last: nested ones made inside
            if b.readonly:
                at = self.place + b.target[len(self.top.target) :]
                ops.append(Mount(at, flags=MS_BIND | MS_REMOUNT | MS_RDONLY))
        return ops


def bind_groups(binds: Sequence[Bind]) -> list[tuple[Bind, tuple[Bind, ...]]]:
    """Each bind whose target lies under no other's, with those that lie under it."""
    tops = [b for b in binds if not any(o is not b and under(b.target, o.target) for o in binds)]
    return [(t, tuple(b for b in binds if b is not t and under(b.target, t.target))) for t in tops]


def lowers_of(step: Step, rel: str) -> list[Path]:
    """The lower dirs of the overlay at `rel`: the earlier layers and the shims that have
    it as a directory, then the root's."""
    lows = [upper_of(x) / rel for x in step.lower_layers]
    if step.shims is not None:
        lows.append(step.shims / rel)
    return [p for p in lows if p.is_dir()] + [Path(step.root, rel)]


def plan(
    step: Step, subs: Sequence[Submount], scratch: Path, binds: Sequence[Prebuilt] = ()
) -> list[Op]:
    """The operations that build the step's sandbox in the zygote's new mount namespace,
    in order; `binds` are the zygote's prebuilt ones for step.binds. Paths inside the
    step's layer are relative to it (the zygote works from there): one plan serves every
    step alike but for its layer."""
    noop = step.mode is Mode.NOOP
    root, work, merged = str(step.root), Path("work"), "work/mnt"
    ovl_flags = MS_NODEV if noop else 0
    ops: list[Op] = [Make("dir", f"work/{d}") for d in _work_dirs(subs)]
    for i, sub in enumerate(subs, 1):  # sub-overlays first, so no upper nests in a mounted one
        if not sub.readonly:
            up, stage = Path("upper", sub.path), str(work / f"m{i}")
            ops.append(_overlay(lowers_of(step, sub.path), up, work / str(i), stage, ovl_flags))
    ops.append(_overlay(lowers_of(step, ""), Path("upper"), work / "0", merged, ovl_flags))
    for i, sub in enumerate(subs, 1):
        target = os.path.join(merged, sub.path)
        shim = step.shims / sub.path if step.shims is not None else None
        if sub.readonly and shim is not None and shim.is_dir():
            # Interceptors over a read-only filesystem: an overlay with no upper, read-only.
            data = f"lowerdir={shim}:{os.path.join(root, sub.path)},{OVERLAY_OPTIONS}"
            ops.append(Mount(target, "overlay", "overlay", MS_RDONLY | ovl_flags, data))
        elif sub.readonly and noop:
            # A read-only overlay, not a bind: the host's sockets, FIFOs, locks and leases
            # on it are not reached through an overlay's inodes.
            empty = scratch / "api" / "empty"
            data = f"lowerdir={empty}:{os.path.join(root, sub.path)},{OVERLAY_OPTIONS}"
            ops.append(Mount(target, "overlay", "overlay", MS_RDONLY | ovl_flags, data))
        elif sub.readonly:
            ops += [Mount(target, os.path.join(root, sub.path), flags=MS_BIND),
                    Mount(target, flags=MS_BIND | MS_REMOUNT | MS_RDONLY)]  # fmt: skip
        else:
            ops.append(Mount(target, str(work / f"m{i}"), flags=MS_MOVE))

    def at(path: str) -> str:
        return os.path.join(merged, path.lstrip("/"))

    if noop:
        api = scratch / "api"
        ops += [Mount(at(d), str(api / d), flags=MS_BIND | MS_REC, make="dir")
                for d in ("proc", "sys", "dev")]  # fmt: skip
        ops += [Mount(at("run"), "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755", "dir")]
    else:
        ops += [Mount(at(d), f"/{d}", flags=MS_BIND | MS_REC, make="dir") for d in API_DIRS]
    fresh = [f"/{d}" for d in API_DIRS] if noop else []  # already new and empty
    covered = {b.target for b in step.binds if b.source.is_dir()}  # a bind hides it anyway
    hide = [h for h in step.hide if Path(root, h.lstrip("/")).is_dir() and h not in covered]
    hide = [h for h in hide if not any(under(h, d) for d in fresh)]
    inside = [h for h in hide if any(under(b.top.target, h) for b in binds)]
    for h in hide:  # read-only at once, unless a bind is made inside it first
        flags = SAFE if h in inside else SAFE | MS_RDONLY
        ops.append(Mount(at(h), "tmpfs", "tmpfs", flags, "mode=755,size=1m"))
    for b in binds:
        # A missing mount point is made in the view (in the layer: excluded from reports).
        kind = "dir" if b.top.source.is_dir() else "file"
        ops.append(Mount(at(b.top.target), b.place, flags=MS_BIND | MS_REC, make=kind))
    ops += [Mount(at(h), flags=MS_REMOUNT | MS_RDONLY | SAFE, data="mode=755") for h in inside]
    ops.append(PivotRoot(merged, step.cwd))
    return ops


def describe(step: Step, built: Sequence[Op], ops: Sequence[Op], early: Sequence[Op] = ()) -> str:
    """A shell command that rebuilds the sandbox and runs the step, for a human to debug:
    what the zygote built once (base_ops, the prebuilt binds); in NOOP, what the step's
    pid 1 mounts first in its pid and mount namespaces (`early`: pid1_ops), then the
    step's `ops`, then (NOOP) the user namespace that locks them (here only root is
    mapped; disco maps every id to itself)."""
    names = ["--uts", "--ipc", "--net"] if step.mode is Mode.NOOP else []
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(step.env.items()))
    work = shlex.quote(str(step.layer / "work"))
    outer = [op.describe() for op in built]
    if step.mode is Mode.NOOP:
        outer.insert(0, "ip link set lo up")
    if step.hostname:
        outer.insert(0, f"hostname {shlex.quote(step.hostname)}")
    lines = [op.describe() for op in early]
    lines += [f"rm -rf {work}", f"cd {shlex.quote(str(step.layer))}"]  # ops make work/
    lines += [op.describe() for op in ops]
    run = f"env -i {env} {shlex.join(step.argv)}"
    if step.mode is Mode.NOOP:
        lines.append(f"exec unshare --cgroup --user --map-root-user --mount setsid {run}")
        pid1 = shlex.join(
            ["unshare", "--pid", "--fork", "--mount", "bash", "-ec", "\n".join(lines)]
        )
        outer.append(f"exec {pid1}")
    else:
        outer += [*lines, f"exec {run}"]
    return shlex.join(["unshare", "--mount", *names, "bash", "-ec", "\n".join(outer)])


def _work_dirs(subs: Sequence[Submount]) -> list[str]:
    """What the zygote makes in a step's work/: the overlays' work dirs, mount points."""
    rw = [i for i, sub in enumerate(subs, 1) if not sub.readonly]
    return ["mnt", "0", *(d for i in rw for d in (str(i), f"m{i}"))]
