"""Mounts and the few syscalls behind them (DESIGN §7, §12).

Each operation is a small object that plans one syscall: `wire()` is what the zygote
(zygote.py, which also does it) receives, and `describe()` the command a person
would type to do the same, so a failed sandbox comes back as a script that rebuilds it.
Also: what the mount table says, and the mounts a dance makes for itself in its own
namespace.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from disco.engine.syscalls import CLONE_NEWNS, do, unshare

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
_FLAG_NAMES = ((MS_RDONLY, "ro"), (MS_NOSUID, "nosuid"), (MS_NODEV, "nodev"), (MS_NOEXEC, "noexec"))
SAFE = MS_NOSUID | MS_NODEV | MS_NOEXEC

# Filesystems that hold no files of the node: never overlaid. An overlay mount in the
# root (a container's or a live system's /usr) is overlaid like any other: the kernel
# takes an overlay as a lower layer (stacking depth 2).
PSEUDO_FS = frozenset(
    "proc sysfs devtmpfs devpts cgroup cgroup2 securityfs debugfs tracefs pstore bpf configfs"
    " fusectl mqueue hugetlbfs binfmt_misc efivarfs autofs selinuxfs rpc_pipefs nsfs".split()
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

# ---- operations: each does itself in the child and describes itself for a human ----


@dataclass(frozen=True)
class Mount:
    """One mount(2) call; covers mounts, binds, remounts, moves and propagation."""

    target: str
    source: str | None = None
    fstype: str | None = None
    flags: int = 0
    data: str = ""
    make: str = ""  # "dir" or "file": made first if missing (mostly it is not: no call)

    def wire(self) -> tuple[Any, ...]:
        return ("mount", self.target, self.source, self.fstype, self.flags, self.data, self.make)

    def do(self) -> None:
        do(self.wire())

    def describe(self) -> str:
        q = shlex.quote
        made = {"dir": f"mkdir -p {q(self.target)} && ", "file": f"touch {q(self.target)} && "}
        return made.get(self.make, "") + self._mount()

    def _mount(self) -> str:
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

    def wire(self) -> tuple[Any, ...]:
        if self.kind == "chr":
            major, minor = map(int, self.arg.split())
            return ("chr", self.path, self.mode, major, minor)
        if self.kind == "link":
            return ("link", self.arg, self.path)
        return (self.kind, self.path, self.mode)

    def describe(self) -> str:
        p, m = shlex.quote(self.path), f"{self.mode:o}"
        return {"dir": f"mkdir -p -m {m} {p}", "file": f"touch {p}",
                "chr": f"mknod -m {m} {p} c {self.arg}"}.get(self.kind,
                f"ln -s {shlex.quote(self.arg)} {p}")  # fmt: skip


@dataclass(frozen=True)
class PivotRoot:
    """Make `path` the root, detach the old one (pivot_root(".", ".")), go to `cwd`."""

    path: str
    cwd: str = "/"

    def wire(self) -> tuple[Any, ...]:
        return ("pivot", self.path, self.cwd)

    def describe(self) -> str:
        q = shlex.quote
        return f"cd {q(self.path)} && pivot_root . . && umount -l . && cd {q(self.cwd)}"


Op = Union[Mount, Make, PivotRoot]


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


def mount_tmpfs(path: Path, size_mb: int = 0) -> None:
    """A tmpfs of `size_mb` (0: the kernel's default, half the memory) at `path`."""
    size = f",size={size_mb}m" if size_mb else ""
    Mount(str(path), "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=700{size}").do()


def bind_readonly(source: Path, target: Path) -> None:
    Mount(str(target), str(source), flags=MS_BIND | MS_REC).do()
    Mount(str(target), flags=MS_BIND | MS_REMOUNT | MS_RDONLY).do()
