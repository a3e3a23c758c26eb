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
import ctypes
import enum
import fcntl
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import stat
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn, Union

from disco.errors import CommandError, DiscoError

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 1, 24, 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_FLAG_NAMES = ((MS_RDONLY, "ro"), (MS_NOSUID, "nosuid"), (MS_NODEV, "nodev"), (MS_NOEXEC, "noexec"))
_SAFE = MS_NOSUID | MS_NODEV | MS_NOEXEC

# Filesystems that hold no files of the node: never overlaid.
PSEUDO_FS = frozenset(
    "proc sysfs devtmpfs devpts cgroup cgroup2 securityfs debugfs tracefs pstore bpf configfs"
    " fusectl mqueue hugetlbfs binfmt_misc efivarfs autofs selinuxfs rpc_pipefs nsfs"
    " overlay".split()
)
# Replaced (NOOP) or bound from the host (live): mounts below them are not overlaid.
API_DIRS = ("proc", "sys", "dev", "run")
# Capability names by number (linux/capability.h), and those that reach outside a NOOP sandbox.
CAPS = (
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable"
    " net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio"
    " sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time"
    " sys_tty_config mknod lease audit_write audit_control setfcap mac_override mac_admin syslog"
    " wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore"
).split()
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

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


class Mode(enum.Enum):
    LIVE = "live"
    NOOP = "noop"


# ---- operations: each does itself in the child and describes itself for a human ----


@dataclass(frozen=True)
class Mount:
    """One mount(2) call; covers mounts, binds, remounts, moves and propagation."""

    target: str
    source: str | None = None
    fstype: str | None = None
    flags: int = 0
    data: str = ""

    def do(self) -> None:
        args = (self.source, self.target, self.fstype)
        _check(_libc.mount(*map(_b, args), self.flags, _b(self.data or None)), "mount")

    def describe(self) -> str:
        q, f = shlex.quote, self.flags
        opts = ",".join([n for bit, n in _FLAG_NAMES if f & bit] + [self.data] * bool(self.data))
        if f & MS_PRIVATE:
            return f"mount --make-rprivate {q(self.target)}"
        if f & MS_MOVE:
            return f"mount --move {q(self.source or '')} {q(self.target)}"
        if f & MS_REMOUNT:
            bind = "bind," if f & MS_BIND else ""
            return f"mount -o remount,{bind}{opts} {q(self.target)}"
        if f & MS_BIND:
            kind = "--rbind" if f & MS_REC else "--bind"
            return f"mount {kind} {q(self.source or '')} {q(self.target)}"
        o = f" -o {q(opts)}" if opts else ""
        return f"mount -t {self.fstype}{o} {q(self.source or 'none')} {q(self.target)}"


@dataclass(frozen=True)
class Make:
    """A directory, an empty file (to bind a file onto), a char device or a symlink."""

    kind: str  # "dir", "file", "chr" (arg: "MAJOR MINOR"), "link" (arg: the link's target)
    path: str
    arg: str = ""
    mode: int = 0o755

    def do(self) -> None:
        if self.kind == "dir":
            os.makedirs(self.path, self.mode, exist_ok=True)
        elif self.kind == "file":
            # Opening an existing file for writing would copy it up into the layer.
            if not os.path.lexists(self.path):
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, self.mode))
        elif self.kind == "chr":
            major, minor = map(int, self.arg.split())
            os.mknod(self.path, self.mode | stat.S_IFCHR, os.makedev(major, minor))
        else:
            os.symlink(self.arg, self.path)

    def describe(self) -> str:
        p, m = shlex.quote(self.path), f"{self.mode:o}"
        return {"dir": f"mkdir -p -m {m} {p}", "file": f"touch {p}",
                "chr": f"mknod -m {m} {p} c {self.arg}"}.get(self.kind,
                f"ln -s {shlex.quote(self.arg)} {p}")  # fmt: skip


@dataclass(frozen=True)
class Network:
    """Bring up loopback in the new network namespace, or join one from loopback_network()."""

    fd: int | None = None

    def do(self) -> None:
        if self.fd is not None:
            _check(_libc.setns(self.fd, CLONE_NEWNET), "setns")
            return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifr = fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0))  # SIOCGIFFLAGS
            flags = struct.unpack("16sH14x", ifr)[1] | 1  # IFF_UP
            fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags))  # SIOCSIFFLAGS

    def describe(self) -> str:
        return "ip link set lo up"


@dataclass(frozen=True)
class SetHostname:
    name: str

    def do(self) -> None:
        name = self.name.encode()
        _check(_libc.sethostname(name, ctypes.c_size_t(len(name))), "sethostname")

    def describe(self) -> str:
        return f"hostname {shlex.quote(self.name)}"


@dataclass(frozen=True)
class PivotRoot:
    """Make `path` the root, detach the old one (pivot_root(".", ".")), go to `cwd`."""

    path: str
    cwd: str = "/"

    def do(self) -> None:
        os.chdir(self.path)
        nr = _PIVOT_ROOT.get(platform.machine())
        if nr is None:
            raise OSError(38, f"pivot_root: no syscall number for {platform.machine()}")
        _check(_libc.syscall(ctypes.c_long(nr), b".", b"."), "pivot_root")
        _check(_libc.umount2(b".", MNT_DETACH), "umount2")
        os.chdir(self.cwd)

    def describe(self) -> str:
        q = shlex.quote
        return f"cd {q(self.path)} && pivot_root . . && umount -l . && cd {q(self.cwd)}"


@dataclass(frozen=True)
class DropCaps:
    """Remove capabilities from the bounding, ambient and inheritable sets."""

    caps: tuple[int, ...]  # numbers the running kernel knows

    def do(self) -> None:
        for n in self.caps:
            _check(_libc.prctl(PR_CAPBSET_DROP, n, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
        _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        head, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
        _check(_libc.capget(head, data), "capget")
        for n in self.caps:  # data = [eff, perm, inh] for caps 0-31, then for 32-63
            data[3 * (n // 32) + 2] &= ~(1 << (n % 32))
        _check(_libc.capset(head, data), "capset")

    def describe(self) -> str:
        return "setpriv --inh-caps={0} --bounding-set={0} --".format(
            ",".join(f"-{CAPS[c]}" for c in self.caps)
        )


Op = Union[Mount, Make, Network, SetHostname, PivotRoot, DropCaps]


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


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    readonly: bool


@dataclass(frozen=True)
class Submount:
    """A filesystem mounted below the target root: overlaid, or bound read-only if it is."""

    path: str  # relative to the target root
    readonly: bool


def upper_of(layer: Path) -> Path:
    return layer / "upper"


def read_mounts(text: str | None = None) -> list[MountEntry]:
    """Parse /proc/self/mountinfo (or `text`), in mount order."""
    if text is None:
        text = Path("/proc/self/mountinfo").read_text()
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        point = fields[4].encode().decode("unicode_escape")  # \040 -> space
        out.append(MountEntry(point, right.split()[0], "ro" in fields[5].split(",")))
    return out


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def submounts(root: str, mounts: Iterable[MountEntry], skip: Iterable[str] = ()) -> list[Submount]:
    """Filesystems mounted below `root` that hold real files, parents first."""
    skip = [*skip, *(os.path.join(root, d) for d in API_DIRS)]
    found: list[MountEntry] = []
    for m in mounts:
        found = [f for f in found if not _under(f.mountpoint, m.mountpoint)]  # over-mounted
        if (
            m.mountpoint != root
            and _under(m.mountpoint, root)
            and m.fstype not in PSEUDO_FS
            and not any(_under(m.mountpoint, s) for s in skip)
        ):
            found.append(m)
    subs = [Submount(os.path.relpath(m.mountpoint, root), m.readonly) for m in found]
    return sorted(subs, key=lambda s: s.path.count("/"))


# ---- planning (pure) ----


def _overlay(lowers: Sequence[Path], upper: Path, work: Path, target: str, flags: int) -> Mount:
    base = lowers[-1]  # the target root, or a filesystem mounted in it
    for low in lowers[:-1]:  # the kernel allows upper/work inside a lower, not lower in lower
        if _under(str(low), str(base)) and low.stat().st_dev == base.stat().st_dev:
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
        ops += [Mount(at("proc"), "proc", "proc", _SAFE)]
        for p in [p for p in ("proc/sys", "proc/sysrq-trigger") if os.path.exists(f"/{p}")]:
            ops += [
                Mount(at(p), at(p), flags=MS_BIND),
                Mount(at(p), flags=MS_BIND | MS_REMOUNT | MS_RDONLY | _SAFE),
            ]
        ops += [
            Mount(at("sys"), "sysfs", "sysfs", MS_RDONLY | _SAFE),
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
    hide = [h for h in hide if not any(_under(h, d) for d in fresh)]
    for h in hide:
        ops.append(Mount(at(h), "tmpfs", "tmpfs", _SAFE, "mode=755,size=1m"))
    for b in step.binds:
        # A missing mount point is made in the view (in the layer: excluded from reports).
        ops.append(Make("dir" if b.source.is_dir() else "file", at(b.target)))
        ops.append(Mount(at(b.target), str(b.source), flags=MS_BIND | MS_REC))
        if b.readonly:
            ops.append(Mount(at(b.target), flags=MS_BIND | MS_REMOUNT | MS_RDONLY))
    ops += [Mount(at(h), flags=MS_REMOUNT | MS_RDONLY | _SAFE, data="mode=755") for h in hide]
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
        _unshare(CLONE_NEWNET)
        try:
            net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            Network().do()
        finally:
            _check(_libc.setns(ours, CLONE_NEWNET), "setns")
    finally:
        os.close(ours)
    try:
        yield net
    finally:
        os.close(net)


def private_mounts() -> None:
    """Give this process a mount namespace of its own, private from the host's, so what
    a dance mounts for itself (a tmpfs for its layers) vanishes with it."""
    _unshare(CLONE_NEWNS)
    Mount("/", flags=MS_REC | MS_PRIVATE).do()


def mount_tmpfs(path: Path) -> None:
    Mount(str(path), "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=700").do()


def bind_readonly(source: Path, target: Path) -> None:
    Mount(str(target), str(source), flags=MS_BIND | MS_REC).do()
    Mount(str(target), flags=MS_BIND | MS_REMOUNT | MS_RDONLY).do()


def _fork(noop: bool) -> int:
    """Fork; in NOOP the child is pid 1 of a new pid namespace, and we keep ours."""
    if not noop:
        return os.fork()
    fd, pid = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC), -1
    try:
        _unshare(CLONE_NEWPID)
        pid = os.fork()
    finally:
        if pid != 0:
            _check(_libc.setns(fd, CLONE_NEWPID), "setns")
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
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _unshare(flags)
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
            _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
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
