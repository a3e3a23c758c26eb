"""Mounts and the few syscalls behind them (DESIGN §7, §12).

Each operation is a small object that does itself, in a sandbox's child, with a direct
syscall through libc, and describes itself as the command a person would type to do the
same, so a failed sandbox comes back as a script that rebuilds it. Also: what the mount
table says, and the mounts a dance makes for itself in its own namespace.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import shlex
import socket
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 1, 24, 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_FLAG_NAMES = ((MS_RDONLY, "ro"), (MS_NOSUID, "nosuid"), (MS_NODEV, "nodev"), (MS_NOEXEC, "noexec"))
SAFE = MS_NOSUID | MS_NODEV | MS_NOEXEC

# Filesystems that hold no files of the node: never overlaid.
PSEUDO_FS = frozenset(
    "proc sysfs devtmpfs devpts cgroup cgroup2 securityfs debugfs tracefs pstore bpf configfs"
    " fusectl mqueue hugetlbfs binfmt_misc efivarfs autofs selinuxfs rpc_pipefs nsfs"
    " overlay".split()
)
# Replaced (NOOP) or bound from the host (live): mounts below them are not overlaid.
API_DIRS = ("proc", "sys", "dev", "run")
# Capability names by number (linux/capability.h).
CAPS = (
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable"
    " net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio"
    " sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time"
    " sys_tty_config mknod lease audit_write audit_control setfcap mac_override mac_admin syslog"
    " wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore"
).split()

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


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


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
        check(libc.mount(*map(_b, args), self.flags, _b(self.data or None)), "mount")

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
            check(libc.setns(self.fd, CLONE_NEWNET), "setns")
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
        check(libc.sethostname(name, ctypes.c_size_t(len(name))), "sethostname")

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
        check(libc.syscall(ctypes.c_long(nr), b".", b"."), "pivot_root")
        check(libc.umount2(b".", MNT_DETACH), "umount2")
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
            check(libc.prctl(PR_CAPBSET_DROP, n, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        head, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
        check(libc.capget(head, data), "capget")
        for n in self.caps:  # data = [eff, perm, inh] for caps 0-31, then for 32-63
            data[3 * (n // 32) + 2] &= ~(1 << (n % 32))
        check(libc.capset(head, data), "capset")

    def describe(self) -> str:
        return "setpriv --inh-caps={0} --bounding-set={0} --".format(
            ",".join(f"-{CAPS[c]}" for c in self.caps)
        )


Op = Union[Mount, Make, Network, SetHostname, PivotRoot, DropCaps]


# ---- the mount table ----


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


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def submounts(root: str, mounts: Iterable[MountEntry], skip: Iterable[str] = ()) -> list[Submount]:
    """Filesystems mounted below `root` that hold real files, parents first."""
    skip = [*skip, *(os.path.join(root, d) for d in API_DIRS)]
    found: list[MountEntry] = []
    for m in mounts:
        found = [f for f in found if not under(f.mountpoint, m.mountpoint)]  # over-mounted
        if (
            m.mountpoint != root
            and under(m.mountpoint, root)
            and m.fstype not in PSEUDO_FS
            and not any(under(m.mountpoint, s) for s in skip)
        ):
            found.append(m)
    subs = [Submount(os.path.relpath(m.mountpoint, root), m.readonly) for m in found]
    return sorted(subs, key=lambda s: s.path.count("/"))


# ---- a dance's own mounts ----


def private_mounts() -> None:
    """Give this process a mount namespace of its own, private from the host's, so what
    a dance mounts for itself (a tmpfs for its layers) vanishes with it."""
    unshare(CLONE_NEWNS)
    Mount("/", flags=MS_REC | MS_PRIVATE).do()


def mount_tmpfs(path: Path) -> None:
    Mount(str(path), "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=700").do()


def bind_readonly(source: Path, target: Path) -> None:
    Mount(str(target), str(source), flags=MS_BIND | MS_REC).do()
    Mount(str(target), flags=MS_BIND | MS_REMOUNT | MS_RDONLY).do()
