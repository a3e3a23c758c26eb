"""Files the boring way: written beside their target and renamed over it, directories
swapped in whole, so a crash never leaves half of anything."""

from __future__ import annotations

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
