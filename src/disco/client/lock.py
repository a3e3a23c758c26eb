"""The dance lock: one dance (or rollback) at a time per state directory.

A POSIX record lock (fcntl F_SETLK) on `lock`: the kernel drops it when its process dies,
and a forked child never inherits it, so a step left running cannot keep it. The holder
writes its pid, command line and start time into the file and empties it when it lets go:
a lock found free but not empty was held by a process that died, and is taken over with a
warning.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from disco.clock import utc_now
from disco.errors import EXIT_LOCKED, DiscoError

_POLL = 0.1  # seconds between tries while waiting


@contextmanager
def hold(
    path: Path, wait: float = 0, warn: Callable[[str], None] = lambda _text: None
) -> Iterator[None]:
    """Hold the lock on `path`, waiting up to `wait` seconds for another holder."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise DiscoError(f"cannot take the lock {path}: {e.strerror}", _fix(e, path)) from None
    try:
        deadline = time.monotonic() + wait
        while not _try(fd):
            if time.monotonic() >= deadline:
                waited = f" for {wait:g} s" if wait else ""
                waited = f"; waited {wait:g} s" if wait else ""
                raise DiscoError(
                    f"another dance holds the lock {path} ({_holder(fd)}){waited}",
                    "wait for it to finish, or pass --wait SECONDS; the lock is released"
                    " when that process ends",
                    EXIT_LOCKED,
                )
            time.sleep(_POLL)
        if os.fstat(fd).st_size:
            warn(f"took over the lock {path} from a dance that died ({_holder(fd)})")
        command = shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{command}\n{utc_now()}\n".encode(errors="replace"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean release leaves it empty
    finally:
        os.close(fd)


def _fix(e: OSError, path: Path) -> str:
    state = path.parent
    if e.errno == errno.EROFS:
        return (
            f"the state directory {state} is on a read-only filesystem: give --state-dir"
            " (or DISCO_STATE) a writable directory, or remount it read-write"
        )
    if isinstance(e, PermissionError):
        return f"run it as root: the state directory {state} is root's"
    return f"give --state-dir (or DISCO_STATE) a directory root can write, not {state}"


def _try(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _holder(fd: int) -> str:
    """What the holder wrote: "pid 12, 'disco dance', started 2026-...Z"."""
    lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
    pid, command, started = (lines + ["unknown", "", ""])[:3]
    words = [f"pid {pid.strip() or 'unknown'}"]
    if command:
        words.append(f"'{command}'")
    if started:
        words.append(f"started {started}")
    return ", ".join(words)
