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

An event counts if the entry it names lies in a lower layer, or is one of the
directories on a lower layer's path (renamed, removed, a symlink replaced). Its
directory is opened by handle and named by /proc/self/fd. A directory that can no
longer be opened (ESTALE) was removed since: its removal is an event of its own in a
directory that still exists, or whose removal is one, up to one that exists. A full
queue, an unknown filesystem, more than LIMIT events, or anything not understood:
changed.

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


class Lowers:
    """A fanotify group watching the filesystems of lower layers."""

    def __init__(self) -> None:
        self.fd = -1
        self.mounts: dict[bytes, int] = {}  # fsid: a descriptor on that filesystem
        if os.uname().machine not in _FSID_AT:
            return
        fd = libc.fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, os.O_RDONLY)
        self.fd = fd if fd >= 0 else -1

    def watch(self, paths: list[str]) -> list[tuple[bytes, str]] | None:
        """Watch the filesystems of `paths` from now on. Each path as named and as the
        kernel found it (a symlink on its way, as disco's layers/pending, is another
        directory once it changes), with its filesystem's id, for changed(); None if we
        cannot."""
        if self.fd < 0:
            return None
        out = []
        try:
            for path in paths:
                # open_by_handle_at takes no O_PATH descriptor
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    key = fsid(fd)
                    found = os.readlink(f"/proc/self/fd/{fd}")
                except BaseException:
                    os.close(fd)
                    raise
                out += [(key, path), (key, found)] if found != path else [(key, path)]
                if key in self.mounts:
                    os.close(fd)
                    continue
                flags = FAN_MARK_ADD | FAN_MARK_FILESYSTEM
                if libc.fanotify_mark(self.fd, flags, MASK, AT_FDCWD, os.fsencode(path)) != 0:
                    os.close(fd)
                    return None
                self.mounts[key] = fd
        except (OSError, KeyError):
            return None
        return out

    def close(self) -> None:
        """No more watching (the marks go with the group)."""
        for fd in (self.fd, *self.mounts.values()):
            if fd >= 0:
                os.close(fd)
        self.fd = -1
        self.mounts = {}

    def forget(self) -> None:
        """Drop what was said so far: it is older than what is about to be looked up."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def changed(self, paths: list[tuple[bytes, str]]) -> bool:
        """Whether anything changed in or on the way to `paths` (as watch() gave them)
        since the last call. An overlay's lower dir holds what is on its filesystem
        below it: what is mounted there is not in the layer."""
        seen: dict[bytes, str] = {}
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
                            verdict = self._counts(info, paths, seen)
                    at += length
        except BlockingIOError:
            pass
        except OSError:
            return True
        return verdict

    def _counts(self, info: bytes, paths: list[tuple[bytes, str]], seen: dict[bytes, str]) -> bool:
        if len(info) < 20:
            return True
        kind, _, size = struct.unpack_from("<BBH", info)
        if kind not in (INFO_DFID_NAME, INFO_DFID, INFO_FID):
            return True
        (hbytes,) = struct.unpack_from("<I", info, 12)
        key = bytes(info[4 : 20 + hbytes])  # the filesystem and the directory's handle
        on = [p for fs, p in paths if fs == key[:8]]
        if not on:
            return False
        where = seen.get(key)
        if where is None:
            where = seen[key] = self._where(key)
        if where == "":  # removed since: see the module doc
            return False
        if where == "?":
            return True
        name = info[20 + hbytes : size].split(b"\0", 1)[0].decode(errors="surrogateescape")
        entry = os.path.join(where, name) if name and name != "." else where
        return any(under(entry, p) or under(p, entry) for p in on)

    def _where(self, key: bytes) -> str:
        """The path of the directory of handle key[8:] on filesystem key[:8]; "" if it
        was removed since, "?" if it cannot be told."""
        mount = self.mounts.get(key[:8])
        if mount is None:
            return "?"
        handle = ctypes.create_string_buffer(key[8:])
        fd = libc.open_by_handle_at(mount, handle, os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            return "" if ctypes.get_errno() == ESTALE else "?"
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return "?" if where.endswith(" (deleted)") or not where.startswith("/") else where
