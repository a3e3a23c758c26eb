"""Files the boring way: written beside their target and renamed over it, directories
swapped in whole, so a crash never leaves half of anything; copies keep their holes; and
paths below a trusted directory walked one component at a time, never following a
symlink, where a step may have put the symlink (DESIGN §7)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# A directory opened without following a symlink: ELOOP or ENOTDIR if it is one.
NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A regular file read where a step may have put something else: no symlink followed, no
# wait for a FIFO's writer, no controlling terminal taken.
_REGULAR = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def write_atomic(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write beside `target` and rename over it, so a reader never sees half of it."""
    with writing_atomic(target, mode) as f:
        f.write(data)


@contextmanager
def writing_atomic(target: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file to write `target` through: written beside it, made durable, then renamed
    over it when the block ends (removed instead if it raises)."""
    fd, temp = tempfile.mkstemp(prefix=f".~{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)  # before the rename: never readable wider than meant
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def swap_in(new: Path, target: Path) -> None:
    """Put directory `new` where `target` is, then remove the old `target`.

    Between the two renames a crash leaves `target` missing and `.~NAME.old` beside it;
    `recover_swap` puts it back.
    """
    old = target.with_name(f".~{target.name}.old")
    if old.exists():
        remove_tree(old)
    if target.exists():
        os.rename(target, old)
    os.rename(new, target)
    if old.exists():
        remove_tree(old)


def recover_swap(target: Path) -> None:
    old = target.with_name(f".~{target.name}.old")
    if old.exists() and not target.exists():
        os.rename(old, target)


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# ---- never following a symlink ----


class OffPath(OSError):
    """A component on the way to a directory is a symlink or not a directory."""

    def __init__(self, names: Sequence[str], symlink: bool) -> None:
        what = "a symbolic link" if symlink else "not a directory"
        super().__init__(errno.ELOOP if symlink else errno.ENOTDIR, what, "/".join(names))
        self.names = tuple(names)  # the components up to the one that is in the way
        self.symlink = symlink


def open_dir(top: Path | str | int, names: Sequence[str] = ()) -> int:
    """A new descriptor of the directory `top`/names[0]/names[1]/..., reached one
    component at a time without following a symlink.

    `top` is a path, opened as given (the caller trusts it and its parents), or a
    directory descriptor (left open). Raises FileNotFoundError where a component is
    missing, OffPath where one is a symlink or not a directory, ValueError for a name
    that is not one component ("", ".", "..", or with a "/").
    """
    for name in names:
        if name in ("", ".", "..") or "/" in name:
            raise ValueError(f"not a name in a directory: {name!r}")
    if isinstance(top, int):
        fd = os.open(".", NOFOLLOW_DIR, dir_fd=top)
    else:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(names):
            try:
                step = os.open(name, NOFOLLOW_DIR, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                raise OffPath(names[: i + 1], stat.S_ISLNK(st.st_mode)) from e
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def opened_dir(top: Path | str | int, names: Sequence[str] = ()) -> Iterator[int]:
    """open_dir() for the block, closed after it."""
    fd = open_dir(top, names)
    try:
        yield fd
    finally:
        os.close(fd)


def open_regular(path: Path | str, *, dir_fd: int | None = None) -> int:
    """A descriptor of the regular file at `path` (relative to `dir_fd` if given), or
    OSError: the last component is never followed if it is a symlink, and nothing but a
    regular file is opened (lstat first: opening a FIFO or a device can wake a process
    or hang the reader; fstat after, that it is still the same file)."""
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
    fd = os.open(path, _REGULAR, dir_fd=dir_fd)
    now = os.fstat(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise OSError(errno.EINVAL, "changed while it was opened", os.fspath(path))
    return fd


def read_regular(path: Path | str, limit: int = -1) -> bytes:
    """The bytes of the regular file at `path` (the first `limit`, if given), read as
    open_regular() opens it."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read(limit)


def copy_data(src: int, dst: int) -> None:
    """Copy the content of the open file `src` into the empty file `dst`, keeping holes.

    A file with fewer blocks than its size has holes: only its data extents (SEEK_DATA,
    SEEK_HOLE) are written, and ftruncate gives the copy its size, so a 2 GB sparse file
    stays a few blocks wherever disco copies it (cp --sparse=auto does the same). Any
    other file is one sendfile stream."""
    st = os.fstat(src)
    if st.st_blocks * 512 >= st.st_size:
        _send(src, dst, 0, None)
        return
    offset = 0
    while offset < st.st_size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: nothing but a hole to the end
                raise
            break
        offset = os.lseek(src, start, os.SEEK_HOLE)
        os.lseek(dst, start, os.SEEK_SET)
        _send(src, dst, start, offset - start)
    os.ftruncate(dst, st.st_size)


def _send(src: int, dst: int, offset: int, count: int | None) -> None:
    """sendfile `count` bytes (None: to the end) of `src` from `offset`, at `dst`'s position."""
    while count is None or count > 0:
        sent = os.sendfile(dst, src, offset, 1 << 30 if count is None else min(count, 1 << 30))
        if not sent:
            break
        offset += sent
        if count is not None:
            count -= sent


def copy_file(source: str | Path, target: str | Path, mode: int = 0o600) -> None:
    """`source`'s content (holes kept) as the new file `target`, not following symlinks."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(target, flags, mode)
        try:
            copy_data(src, dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def tree_digest(top: Path, munged: str = "") -> str:
    """sha256 of a directory tree as a dance sees it: every name, type, permission bits,
    file content and symlink target (less the prefix `munged`, with which an rsync daemon
    keeps them), walked in sorted order without following links; "" if there is none.
    Times and owners are left out: a copy by rsync keeps neither the same everywhere."""
    if not os.path.lexists(top):
        return ""
    digest = hashlib.sha256()
    for here, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            path = os.path.join(here, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            digest.update(
                f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode()
            )
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                digest.update(
                    os.fsencode(
                        target[len(munged) :] if munged and target.startswith(munged) else target
                    )
                )
            digest.update(b"\n")
    return digest.hexdigest()
