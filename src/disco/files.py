"""Files the boring way: written beside their target and renamed over it, directories
swapped in whole, so a crash never leaves half of anything; copies keep their holes."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


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
