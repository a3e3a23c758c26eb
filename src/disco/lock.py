"""The dance lock: one dance at a time per state directory."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from disco.errors import EXIT_LOCKED, DiscoError


@contextmanager
def hold(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path`; the kernel drops it if we die."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DiscoError(
                f"another dance holds the lock {path} (pid {holder})",
                "wait for it to finish; the lock is released when that process ends",
                EXIT_LOCKED,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
