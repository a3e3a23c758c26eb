"""Whether the lower layers of a kept sandbox changed (warm.py; DESIGN §7, §12).

An overlay caches what it looked up in its lower layers (which entry a name is, which
are missing, how a directory merges) and does not look again: a lower layer that
changes under a mounted overlay leaves it undefined. A kept sandbox (warm.py) is
therefore used again only if nothing changed in any of its lower layers since it was
built: not disco's own commits (live) or folds (NOOP), not another process's writes.
The kernel says so: a fanotify group with a mark on each filesystem that holds a lower
layer reports every entry made, removed or renamed there and every change of an
inode's metadata (FAN_REPORT_DFID_NAME: the directory's handle and the entry's name).
File data needs no watching: an overlay reads it from the lower inode itself.

An event counts if the entry it names lies in a lower dir: its directory is opened by
handle through the lower dir's own mount (a directory below the lower dir is always
reached so, and named as the kernel names the lower dir) and named by /proc/self/fd. A
directory that can no longer be opened (ESTALE) was removed since: its removal is an
event of its own in a directory that still exists, or whose removal is one, up to one
that exists. A full queue, more than LIMIT events, or anything not understood: changed.
What is on the way to a lower dir is checked by name at each use: each lower dir's name
must still lead to the same directory (a symlink replaced, as disco's layers/pending, or
a parent renamed), with the same owner, mode and mtime (a new sandbox's upper dir takes
them from it).

Imported by the zygote: keep it free of imports beyond the few builtins.
"""

from __future__ import annotations

import ctypes
import os
import struct

from disco.engine.syscalls import libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FAN_CLOEXEC, FAN_NONBLOCK, FAN_REPORT_DFID_NAME = 0x1, 0x2, 0xC00
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_ATTRIB, FAN_MOVED_FROM, FAN_MOVED_TO, FAN_CREATE, FAN_DELETE = 0x4, 0x40, 0x80, 0x100, 0x200
FAN_DELETE_SELF, FAN_MOVE_SELF, FAN_Q_OVERFLOW, FAN_ONDIR = 0x400, 0x800, 0x4000, 0x40000000
MASK = (FAN_ATTRIB | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE | FAN_DELETE | FAN_DELETE_SELF
        | FAN_MOVE_SELF | FAN_ONDIR)  # fmt: skip
INFO_DFID_NAME, INFO_DFID, INFO_FID = 2, 3, 1
AT_FDCWD, ESTALE = -100, 116
LIMIT = 256  # events read one by one at most; more: changed
METADATA = struct.Struct("<IBBHQii")  # struct fanotify_event_metadata
# struct statfs's f_fsid, where glibc puts it (64-bit Linux but s390x)
_FSID_AT = {"x86_64": 56, "aarch64": 56, "riscv64": 56, "ppc64le": 56}

libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                               ctypes.c_char_p]  # fmt: skip


def under(path: str, top: str) -> bool:
    # mounts.under's twin: mounts.py imports dataclasses and pathlib, too much for the zygote.
    return path == top or path.startswith(top.rstrip("/") + "/")


def fsid(fd: int) -> bytes:
    buf = ctypes.create_string_buffer(128)
    if libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    at = _FSID_AT[os.uname().machine]
    return buf.raw[at : at + 8]


def overlay_lowers(ops: list[Any]) -> list[str]:
    """The lower dirs of the overlays the operations mount."""
    out = []
    for op in ops:
        if op[0] == "mount" and op[3] == "overlay":
            for part in op[5].split(","):
                if part.startswith("lowerdir="):
                    out += part[len("lowerdir=") :].split(":")
    return out


class Lower:
    """One lower dir of a kept namespace's overlays, open: how it was named, where the
    kernel found it, and what its name led to then."""

    def __init__(self, named: str, fd: int, fsid: bytes, mount: int) -> None:
        self.named, self.fd, self.fsid, self.mount = named, fd, fsid, mount
        self.found = os.readlink(f"/proc/self/fd/{fd}")
        self.stat = _key(os.fstat(fd))

    def moved(self) -> bool:
        """Whether its name leads elsewhere now (a symlink on the way replaced, a parent
        renamed), or its own owner, mode or times changed (a new sandbox's upper dir
        would take them)."""
        try:
            return _key(os.stat(self.named)) != self.stat
        except OSError:
            return True


def _key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)


def _mount_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    return -fd  # no mount id said: a mount of its own


class Lowers:
    """A fanotify group watching the filesystems of lower layers."""

    def __init__(self) -> None:
        self.fd = -1
        self.marked: set[bytes] = set()  # the filesystems (fsid) we watch
        if os.uname().machine not in _FSID_AT:
            return
        fd = libc.fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, os.O_RDONLY)
        self.fd = fd if fd >= 0 else -1

    def watch(self, paths: list[str]) -> list[Lower] | None:
        """Watch the filesystems of `paths` from now on; the paths, open, for changed()
        (close() them when done); None if we cannot."""
        if self.fd < 0:
            return None
        out: list[Lower] = []
        try:
            for path in dict.fromkeys(paths):
                # open_by_handle_at takes no O_PATH descriptor
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    lower = Lower(path, fd, fsid(fd), _mount_id(fd))
                except BaseException:
                    os.close(fd)
                    raise
                out.append(lower)
                if lower.fsid not in self.marked:
                    flags = FAN_MARK_ADD | FAN_MARK_FILESYSTEM
                    if libc.fanotify_mark(self.fd, flags, MASK, AT_FDCWD, os.fsencode(path)):
                        raise OSError(ctypes.get_errno(), "fanotify_mark")
                    self.marked.add(lower.fsid)
        except (OSError, KeyError):
            close(out)
            return None
        return out

    def close(self) -> None:
        """No more watching (the marks go with the group)."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
        self.marked = set()

    def forget(self) -> None:
        """Drop what was said so far: it is older than what is about to be looked up."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def changed(self, lowers: list[Lower]) -> bool:
        """Whether anything changed in `lowers` (as watch() gave them) since the last
        call, or they are no longer what their names lead to. An overlay's lower dir
        holds what is on its filesystem below it: what is mounted there is not in it."""
        if any(lower.moved() for lower in lowers):
            self.forget()
            return True
        seen: dict[tuple[int, bytes], str] = {}
        count = 0
        verdict = False
        try:
            while True:
                data = os.read(self.fd, 65536)
                if not data:
                    break
                at = 0
                while at + METADATA.size <= len(data):
                    length, _, _, meta_len, mask, _, _ = METADATA.unpack_from(data, at)
                    if not verdict:
                        count += 1
                        if count > LIMIT or mask & FAN_Q_OVERFLOW:
                            verdict = True
                        else:
                            info = data[at + meta_len : at + length]
                            verdict = _counts(info, lowers, seen)
                    at += length
        except BlockingIOError:
            pass
        except OSError:
            return True
        return verdict


def close(lowers: list[Lower]) -> None:
    for lower in lowers:
        os.close(lower.fd)
    lowers.clear()


def _counts(info: bytes, lowers: list[Lower], seen: dict[tuple[int, bytes], str]) -> bool:
    """Whether the event `info` (its first record) names an entry in one of `lowers`:
    its directory, opened by handle through that lower's own mount (where a directory
    below it is always reached, so named as the kernel names the lower), lies there."""
    if len(info) < 20:
        return True
    kind, _, size = struct.unpack_from("<BBH", info)
    if kind not in (INFO_DFID_NAME, INFO_DFID, INFO_FID):
        return True
    (hbytes,) = struct.unpack_from("<I", info, 12)
    fs, handle = bytes(info[4:12]), bytes(info[12 : 20 + hbytes])
    for lower in lowers:
        if lower.fsid != fs:
            continue
        key = (lower.mount, handle)
        where = seen.get(key)
        if where is None:
            where = seen[key] = _where(lower.fd, handle)
        if where == "?" or (where and under(where, lower.found)):
            return True
    return False


def _where(mount: int, handle: bytes) -> str:
    """The path of the directory of `handle`, opened through the mount of `mount`; ""
    if it was removed since (see the module doc), "?" if it cannot be told."""
    fd = libc.open_by_handle_at(
        mount, ctypes.create_string_buffer(handle), os.O_PATH | os.O_CLOEXEC
    )
    if fd < 0:
        return "" if ctypes.get_errno() == ESTALE else "?"
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return "?" if where.endswith(" (deleted)") or not where.startswith("/") else where
