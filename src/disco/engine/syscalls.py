"""The few system calls the sandbox needs, through ctypes, and the operations the zygote
performs to build a step's sandbox (DESIGN §7, §12).

The zygote imports this file with nothing else of disco (its memory is every step's
floor): keep it free of imports beyond the few builtins. mounts.py plans the operations
as objects; `do()` here is the one implementation of each, whoever runs it.
"""

from __future__ import annotations

import ctypes
import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing too: imported, it would cost each step's maxrss a megabyte
    from typing import Any

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
CLONE_NEWUSER, CLONE_NEWCGROUP = 0x10000000, 0x2000000
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME = 1, 4, 15
PR_SET_CHILD_SUBREAPER = 36


_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}


libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


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


_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "s390x": 280}
KEYCTL_JOIN_SESSION_KEYRING = 1


def new_session_keyring() -> None:
    """Join a new, empty session keyring: a step never shares disco's (or the login
    session's) keys."""
    nr = _KEYCTL.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"keyctl: no syscall number for {os.uname().machine}")
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(KEYCTL_JOIN_SESSION_KEYRING), None)
    if ret < 0:
        check(ret, "keyctl(JOIN_SESSION_KEYRING)")
