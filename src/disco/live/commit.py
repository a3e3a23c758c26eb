"""A live step's layer committed to the root under a durable journal (DESIGN §8).

Before a step's operations touch the root, `commit` writes a journal (journal.py): every
target path they create, replace, delete or change in place, in order, each with its
state before (owner, mode, xattrs, times, symlink target, device numbers in
journal.json; a regular file's content under saved/). The saved content never shares an
inode with a file of the root: it is a hard link of the original only where the commit
takes that inode out of the root (a rename over its one name, an unlink), else a copy
(holes kept). A link to a file that stays would make the "original" follow every later
edit of it, and give it one more name each dance.

One flush a commit, whatever its number of paths, in the order of a write-ahead log (the
log on disk before the data, the data on disk before the log is retired):
1. the journal is built in txn/journal.new, unsynced; one syncfs(2) of txn's filesystem
   puts all of it on disk, and with it the changes of the commit before (txn/done, whose
   journal is then moved into the dance's history, txn/history/ID/commits/N; a root on
   another filesystem gets a syncfs of its own first). Only then does the first
   operation run: whatever of the root reaches the disk from then on has a journal on
   disk to undo it. It is renamed to txn/journal unflushed: a power cut can leave it as
   journal.new, which recovery undoes if it is whole (it was flushed, operations may
   have run) and drops if it is not (the flush never returned, no operation ran). Whole:
   its json reads and every saved original is there (each copy with the md5 the json
   gives it).
2. the operations write beside and rename over, with no flush of their own.
3. the journal is renamed to txn/done: the commit is done. Its changes are on disk with
   the next commit's flush, or at the end of the dance (journal.seal: two syncfs a
   dance). Killed before that, the machine still up, all of it is there: recovery keeps
   it (the journal records the boot). After a reboot it may be half on disk: recovery
   undoes it whole, as it does txn/journal.
The saved originals become the undo log `disco rollback` uses.

SIGINT and SIGTERM are blocked while a commit runs: a commit in progress finishes, and
the signal arrives right after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from disco.engine.changes import Change
from disco.errors import DiscoError
from disco.files import copy_file
from disco.live.changeset import apply, keep_links, plan_commit
from disco.live.journal import (
    AFTER,
    BOOT,
    COPIES,
    DONE,
    FORMAT,
    Entry,
    Expect,
    Journal,
    Saved,
    Times,
    archive,
    boot_id,
    discard,
    entry_data,
    load,
    md5_of,
    point,
    read_xattrs,
    signals_held,
    syncfs,
    times_data,
    whole,
)
from disco.live.ops import Op, Remove, SetMeta, parent
from disco.live.recovery import undo


def commit(
    txn: Path, changes: Sequence[Change], root: Path, dance: str, module: str, step: str
) -> Journal:
    """Apply a step's changes to `root` under a journal; returns the journal, as kept in
    the history of `dance` ("": kept nowhere). A failed operation undoes what was done."""
    ops = keep_links(changes, plan_commit(changes, root), root)
    afters = {c.path: Expect.of(c.after) if c.after else None for c in changes}
    return commit_ops(txn, ops, root, afters, dance, module, step)


def commit_ops(
    txn: Path,
    ops: Sequence[Op],
    root: Path,
    afters: dict[str, Expect | None],
    dance: str,
    module: str,
    step: str,
) -> Journal:
    with signals_held():
        journal = _prepare(txn, ops, root, afters, dance, module, step)
        point()
        try:
            for op in ops:
                apply([op])
                point()
        except DiscoError:
            with contextlib.suppress(DiscoError, OSError):
                undo(journal)  # if this fails too, the next dance's recovery tries again
                discard(journal.where)
            raise
        journal = replace(journal, dirs_after=dir_times(root, [d for d, _ in journal.dirs]))
        (journal.where / AFTER).write_bytes(times_data(journal.dirs_after or ()))
        os.rename(journal.where, txn / DONE)  # on disk with the next commit's flush
        point()
        journal = replace(journal, where=txn / DONE)
        _remember(txn, journal)
        return journal


def _done(txn: Path) -> Journal | None:
    """txn/done's journal: the one this process left there, unless it is another now;
    else read (a dance's next commit asks for the last, which it made)."""
    where = txn / DONE
    try:
        st = os.stat(where / "journal.json")
    except FileNotFoundError:
        return load(where) if where.exists() else None  # no json: load() says so
    known = _DONE.get(txn)
    if known is not None and known[0] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
        return known[1]
    return load(where)


def _remember(txn: Path, journal: Journal) -> None:
    with contextlib.suppress(OSError):
        st = os.stat(journal.where / "journal.json")
        _DONE.clear()  # one dance's txn at a time
        _DONE[txn] = ((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), journal)


_DONE: dict[Path, tuple[tuple[int, int, int, int], Journal]] = {}


def _prepare(
    txn: Path,
    ops: Sequence[Op],
    root: Path,
    afters: dict[str, Expect | None],
    dance: str,
    module: str,
    step: str,
) -> Journal:
    """Write the journal of `ops` to disk, as txn/journal; nothing in the root changes."""
    final = txn / "journal"
    for left in (final, txn / "journal.new"):
        if left.exists() and (left == final or whole(left) is not None):
            raise DiscoError(
                f"an unfinished commit is in {left}", "run 'disco dance' or 'disco rollback' first"
            )
    try:
        return _write_journal(txn, ops, root, afters, dance, module, step)
    except OSError as e:
        raise DiscoError(
            f"cannot write the commit journal in {txn}: {e.strerror or e}; nothing was committed",
            "make room on its filesystem (or lower disco/client/history/max_mb)",
        ) from e


def _write_journal(
    txn: Path,
    ops: Sequence[Op],
    root: Path,
    afters: dict[str, Expect | None],
    dance: str,
    module: str,
    step: str,
) -> Journal:
    new, final = txn / "journal.new", txn / "journal"
    if new.exists():
        shutil.rmtree(new)
    (new / "saved").mkdir(parents=True, mode=0o700)
    entries: list[Entry] = []
    seen: set[str] = set()
    removed: list[str] = []
    copies: list[Path] = []
    for op in ops:
        paths = _below(root, op.path) if isinstance(op, Remove) else [op.path]
        stays = isinstance(op, SetMeta)  # the only operation that keeps the inode in place
        for path in paths:
            if path in seen:  # its first entry has its state before the commit
                continue
            seen.add(path)
            gone = any(path == r or path.startswith(r.rstrip("/") + "/") for r in removed)
            before = None if gone else _save(root, path, new / "saved", len(entries), copies, stays)
            entries.append(Entry(path, before, afters.get(path)))
        if isinstance(op, Remove):
            removed.append(op.path)
    named = {e.path for e in entries}
    dirs = dir_times(root, sorted({os.path.dirname(p) for p in named} - named))
    data = {"format": FORMAT, "dance": dance, "module": module, "step": step,
            "root": str(root), "entries": [entry_data(e) for e in entries],
            "dirs": [list(d) for d in dirs], BOOT: boot_id(),
            COPIES: {c.name: md5_of(c) for c in copies}}  # fmt: skip
    (new / "journal.json").write_bytes(json.dumps(data, separators=(",", ":")).encode())
    last = _done(txn)
    if last is not None and os.stat(last.root).st_dev != os.stat(txn).st_dev:
        syncfs(last.root)  # the last commit's operations, where txn's flush does not reach
    syncfs(txn)  # journal.new whole on disk, and with it the last commit's operations
    point()
    if last is not None:  # on disk now: its journal retired
        archive(txn, last)
    os.rename(new, final)  # unflushed: a whole journal.new is undone just the same
    return Journal(dance, module, step, root, tuple(entries), final, dirs)


def dir_times(root: Path, dirs: Sequence[str]) -> Times:
    """The mtimes of those of `dirs` that are directories of `root` (symlinks not followed)."""
    out = []
    for d in dirs:
        with contextlib.suppress(OSError, DiscoError), parent(root, d) as (fd, name):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                out.append((d, st.st_mtime_ns))
    return tuple(out)


def _below(root: Path, path: str) -> list[str]:
    """`path` and, if it is a directory, everything below it within its filesystem (as
    Remove takes it), each directory after its content."""
    top = root / path.lstrip("/")
    try:
        dev = os.lstat(top).st_dev if top.is_dir() and not top.is_symlink() else None
    except OSError:
        dev = None
    if dev is None:
        return [path]
    out: list[str] = []

    def walk(d: Path, rel: str) -> None:
        for name in sorted(os.listdir(d)):
            st = os.lstat(d / name)
            if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                walk(d / name, f"{rel}/{name}")
            else:
                out.append(f"{rel}/{name}")
        out.append(rel)

    walk(top, path)
    return out


def _save(
    root: Path, path: str, saved: Path, n: int, copies: list[Path], stays: bool
) -> Saved | None:
    """The state of `path` before the commit; `stays`: its inode stays in the root."""
    target = root / path.lstrip("/")
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return None
    file = None
    if stat.S_ISREG(st.st_mode):
        file = str(n)
        # A link only where the inode leaves the root with the commit; else (or on
        # another filesystem) a copy, fsynced with the journal.
        if stays or st.st_nlink > 1 or not _linked(target, saved / file):
            copy_file(target, saved / file)
            copies.append(saved / file)
    return Saved(
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns,
        xattrs=read_xattrs(target),
        target=os.readlink(target) if stat.S_ISLNK(st.st_mode) else None,
        rdev=st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
        file=file,
    )


def _linked(target: Path, link: Path) -> bool:
    try:
        os.link(target, link, follow_symlinks=False)
    except OSError:
        return False
    return True
