"""Paths put back as they were: recovery from a commit cut short, and the undo of a
commit from its journal (DESIGN §8).

Undoing builds an undo layer, an upper dir holding each path as it was before (a
whiteout where there was nothing), and applies it like a step's layer; that brings every
path back whatever the moment of the crash, and can be done again if recovery itself is
cut short.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from disco.engine.changes import DEFAULT_SENSITIVE, Change, read_changes
from disco.errors import DiscoError
from disco.files import copy_file
from disco.live.changeset import apply, plan_commit
from disco.live.journal import (
    DONE,
    Journal,
    Saved,
    Times,
    discard,
    load,
    read_xattrs,
    same_boot,
    seal,
    syncfs,
    whole,
)
from disco.live.ops import parent, temp_name  # parent never follows a symlink


def recover(txn: Path, warn: Callable[[str], None]) -> None:
    """Undo the commit a crash cut short, if any, saying so in one warning."""
    for old in (txn / "journal.old", txn / "journal.new.old"):
        if old.exists():  # a discarded journal: its commit is undone or done
            shutil.rmtree(old)
    new = txn / "journal.new"
    if new.exists():
        if whole(new) is None:  # cut before its flush returned: no operation ran
            shutil.rmtree(new)
        else:  # flushed, its rename to journal lost in a power cut: operations may have run
            _recover(load(new), warn)
    if (txn / "journal").exists():
        _recover(load(txn / "journal"), warn)
    done = txn / DONE
    if done.exists():
        if same_boot(done):  # killed after the commit: all of it is there
            seal(txn)
        else:  # the machine went down before it was on disk: part of it may be lost
            _recover(load(done), warn, "went down before its commit of {} was on disk")


def _recover(
    journal: Journal, warn: Callable[[str], None], what: str = "was cut short while committing {}"
) -> None:
    if not journal.root.is_dir():
        raise DiscoError(
            f"an unfinished commit of dance {journal.dance} in {journal.root} cannot be undone:"
            " that root is not there",
            f"mount it again; if it is gone for good, remove {journal.where}",
        )
    changed = undo(journal)
    discard(journal.where)
    warn(
        f"dance {journal.dance or '?'} {what.format(f'{journal.module}: {journal.step}')};"
        f" undone, {changed} path(s) of {journal.root} put back as they were"
    )


def undo(journal: Journal) -> int:
    """Put every path of `journal` back as it was before its commit; how many changed."""
    desired = {e.path: (e.before, journal.saved(e)) for e in journal.entries}
    for entry in journal.entries:  # a crash between making a temp entry and its rename
        with contextlib.suppress(OSError, DiscoError):
            with parent(journal.root, entry.path) as (d, name):
                os.unlink(temp_name(name), dir_fd=d)
    return restore(journal.root, desired, journal.where.with_name("undo"), journal.dirs)


Desired = dict[str, "tuple[Saved | None, Path | None]"]


def restore(root: Path, desired: Desired, work: Path, dirs: Times = ()) -> int:
    """Bring each path of `desired` to its saved state (None: nothing there) through an undo
    layer in `work`, and the directories `dirs` to their mtimes; returns the number of
    paths changed."""
    try:
        changes = undo_changes(root, desired, work)
        apply(plan_commit(changes, root))
        restore_times(root, desired)
        restore_dir_times(root, dirs)
        syncfs(root)  # put back on disk before the journal is discarded
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return len(changes)


def undo_changes(
    root: Path, desired: Desired, work: Path, sensitive: Sequence[str] = DEFAULT_SENSITIVE
) -> list[Change]:
    """The change records that bring `root` to `desired`, read from an undo layer built in
    `work` (left there: the records point into it)."""
    if work.exists():
        shutil.rmtree(work)
    upper = work / "upper"
    upper.mkdir(parents=True)
    gone: list[str] = []
    for path in sorted(desired, key=lambda p: [x for x in p.split("/") if x]):
        before, content = desired[path]
        if any(path.startswith(g.rstrip("/") + "/") for g in gone):
            continue
        rel = path.lstrip("/")
        if not _parents_in(upper, root, rel):
            continue  # not in the target either, and nothing to put there
        dest = upper / rel
        if before is None:
            if os.path.lexists(root / rel):
                os.mknod(dest, stat.S_IFCHR | 0o600, os.makedev(0, 0))  # a whiteout
            gone.append(path)
            continue
        kind = stat.S_IFMT(before.mode)
        if kind == stat.S_IFDIR:
            dest.mkdir()
        elif kind == stat.S_IFREG:
            assert content is not None, path
            copy_file(content, dest)  # holes kept
        elif kind == stat.S_IFLNK:
            os.symlink(before.target or "", dest)
        else:
            os.mknod(dest, kind | 0o600, before.rdev)
        _give(dest, before)
    return read_changes(upper, [root], exclude=(), sensitive=sensitive)


def _parents_in(upper: Path, root: Path, rel: str) -> bool:
    """Make the directories above `rel` in the upper as the root has them; False if the
    root has no such directory."""
    parts = rel.split("/")[:-1]
    for i in range(len(parts)):
        here = "/".join(parts[: i + 1])
        if (upper / here).is_dir() and not (upper / here).is_symlink():
            continue
        if os.path.lexists(upper / here):
            return False  # a file or a whiteout there: nothing below it to restore
        lower = root / here
        if not lower.is_dir() or lower.is_symlink():
            return False
        (upper / here).mkdir()
        st = os.lstat(lower)
        _give(upper / here, Saved(st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns,
                                  st.st_mtime_ns, read_xattrs(lower)))  # fmt: skip
    return True


def _give(path: Path, saved: Saved) -> None:
    os.chown(path, saved.uid, saved.gid, follow_symlinks=False)
    if not stat.S_ISLNK(saved.mode):
        os.chmod(path, stat.S_IMODE(saved.mode))
    for key, value in saved.xattrs:
        os.setxattr(path, key, value, follow_symlinks=False)
    os.utime(path, ns=(saved.atime_ns, saved.mtime_ns), follow_symlinks=False)


def restore_times(root: Path, desired: Desired) -> None:
    """Saved mtimes (a change of times alone is no change record), directories last."""
    items = sorted(desired.items(), key=lambda kv: -kv[0].count("/"))
    for path, (before, _content) in items:
        if before is None or path == "/":
            continue
        with contextlib.suppress(OSError, DiscoError), parent(root, path) as (d, name):
            if os.stat(name, dir_fd=d, follow_symlinks=False).st_mtime_ns != before.mtime_ns:
                times = (before.atime_ns, before.mtime_ns)
                os.utime(name, ns=times, dir_fd=d, follow_symlinks=False)


def restore_dir_times(root: Path, dirs: Times) -> None:
    """The mtimes of directories that hold restored paths (what a commit or its undo
    renamed or unlinked in them moved them), deepest first."""
    for path, mtime in sorted(dirs, key=lambda d: -d[0].count("/")):
        with contextlib.suppress(OSError, DiscoError), parent(root, path) as (d, name):
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) and st.st_mtime_ns != mtime:
                os.utime(name, ns=(st.st_atime_ns, mtime), dir_fd=d, follow_symlinks=False)
