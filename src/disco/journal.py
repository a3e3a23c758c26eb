"""The commit journal of live steps, and recovery from a commit cut short (DESIGN §8).

Before a step's operations touch the root, `commit` writes a journal: every target path
they create, replace, delete or change in place, in order, each with its state before
(owner, mode, xattrs, times, symlink target, device numbers in journal.json; a regular
file's content as a hard link of its inode under saved/, since a rename over the target
or an unlink leaves that inode as it was, else as a copy). The journal is built in
txn/journal.new and renamed to txn/journal once its files and directories are fsynced;
only then does the first operation run. When the last one is done and the directories it
touched are fsynced, the journal is renamed into the dance's history
(txn/history/ID/commits/N): that rename is the end of the commit, and the saved originals
become the undo log `disco rollback` uses.

A journal still in txn/journal is a commit cut short: `recover` undoes it. Undoing builds
an undo layer, an upper dir holding each path as it was before (a whiteout where there
was nothing), and applies it like a step's layer; that brings every path back whatever
the moment of the crash, and can be done again if recovery itself is cut short.

SIGINT and SIGTERM are blocked while a commit runs: a commit in progress finishes, and
the signal arrives right after it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import signal
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from disco.changes import DEFAULT_SENSITIVE, Change, Meta, read_changes
from disco.commit import Op, Remove, apply, keep_links, plan_commit, temp_name
from disco.commit import _parent as parent  # never follows a symlink on the way
from disco.errors import DiscoError

FORMAT = 1
_OVERLAY = "trusted.overlay."
# Test-only: "K:SIG" sends SIG (KILL, TERM, INT) to disco at the K-th commit point of the
# process: 1 when the journal is durable, then one after each operation, one after the
# touched directories are fsynced, one after the journal is in the history.
KILL_AT = "DISCO_TEST_KILL_AT"
_points = itertools.count(1)
Xattrs = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Saved:
    """A path's state before a commit. `file`: its content, under the journal's saved/."""

    mode: int  # st_mode: type and permission bits
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    xattrs: Xattrs  # all but trusted.overlay.*
    target: str | None = None  # symlinks
    rdev: int = 0  # device nodes
    file: str | None = None  # regular files


@dataclass(frozen=True)
class Expect:
    """What a commit left at a path, to tell later whether someone changed it since."""

    mode: int
    uid: int
    gid: int
    md5: str | None
    target: str | None
    rdev: int
    xattrs: Xattrs  # without the SELinux label

    @classmethod
    def of(cls, meta: Meta) -> Expect:
        return cls(int(meta.mode, 16), meta.uid, meta.gid, meta.md5, meta.target, meta.rdev,
                   meta.xattrs)  # fmt: skip


@dataclass(frozen=True)
class Entry:
    path: str  # absolute in the target
    before: Saved | None  # None: nothing was there
    after: Expect | None  # None: nothing is there after the commit


@dataclass(frozen=True)
class Journal:
    dance: str
    module: str
    step: str
    root: Path
    entries: tuple[Entry, ...]
    where: Path  # the journal's directory (its saved/ holds the content)

    def saved(self, entry: Entry) -> Path | None:
        file = entry.before.file if entry.before else None
        return None if file is None else self.where / "saved" / file


# -- commit ----------------------------------------------------------------------------------


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
    with _signals_held():
        journal = _prepare(txn, ops, root, afters, dance, module, step)
        _point()
        try:
            for op in ops:
                apply([op])
                _point()
        except DiscoError:
            with contextlib.suppress(DiscoError, OSError):
                undo(journal)  # if this fails too, the next dance's recovery tries again
                _discard(journal.where)
            raise
        _sync_dirs(root, {os.path.dirname(e.path) for e in journal.entries})
        _point()
        kept = _archive(txn, journal)
        _point()
        return kept


def _prepare(
    txn: Path,
    ops: Sequence[Op],
    root: Path,
    afters: dict[str, Expect | None],
    dance: str,
    module: str,
    step: str,
) -> Journal:
    """Write the journal of `ops` durably to txn/journal; nothing in the root changes."""
    final = txn / "journal"
    if final.exists():
        raise DiscoError(
            f"an unfinished commit is in {final}", "run 'disco dance' or 'disco rollback' first"
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
        for path in paths:
            if path in seen:  # its first entry has its state before the commit
                continue
            seen.add(path)
            gone = any(path == r or path.startswith(r.rstrip("/") + "/") for r in removed)
            before = None if gone else _save(root, path, new / "saved", len(entries), copies)
            entries.append(Entry(path, before, afters.get(path)))
        if isinstance(op, Remove):
            removed.append(op.path)
    data = {"format": FORMAT, "dance": dance, "module": module, "step": step,
            "root": str(root), "entries": [_entry_data(e) for e in entries]}  # fmt: skip
    _write_synced(new / "journal.json", json.dumps(data, separators=(",", ":")).encode())
    for copy in copies:
        _fsync(copy)
    if any(e.before and e.before.file for e in entries):
        _fsync(new / "saved")  # the links and copies in it
    _fsync(new)
    os.rename(new, final)
    _fsync(txn)
    return Journal(dance, module, step, root, tuple(entries), final)


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


def _save(root: Path, path: str, saved: Path, n: int, copies: list[Path]) -> Saved | None:
    target = root / path.lstrip("/")
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return None
    file = None
    if stat.S_ISREG(st.st_mode):
        file = str(n)
        try:
            os.link(target, saved / file, follow_symlinks=False)
        except OSError:  # another filesystem: a copy, fsynced with the journal
            shutil.copyfile(target, saved / file, follow_symlinks=False)
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


def read_xattrs(path: Path) -> Xattrs:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    return tuple(
        (k, os.getxattr(path, k, follow_symlinks=False))
        for k in sorted(names)
        if not k.startswith(_OVERLAY)
    )


def _archive(txn: Path, journal: Journal) -> Journal:
    """The commit's end: its journal moved into the dance's history (or dropped)."""
    if not journal.dance:
        _discard(journal.where)
        return journal
    commits = txn / "history" / journal.dance / "commits"
    commits.mkdir(parents=True, exist_ok=True)
    number = _next_number(commits)
    os.rename(journal.where, commits / str(number))
    _fsync(commits)
    _fsync(txn)
    return Journal(journal.dance, journal.module, journal.step, journal.root,
                   journal.entries, commits / str(number))  # fmt: skip


def _next_number(commits: Path) -> int:
    """The number of a dance's next commit: counted on from the last one this process
    made, the directory listed only when that is taken or unknown (listing it for every
    commit made a long dance's commits cost more and more: 3.9 ms to 7.5 ms a commit
    over 4000)."""
    number = _NEXT.get(commits)
    if number is None or os.path.lexists(commits / str(number)):
        number = 1 + max((int(p.name) for p in commits.iterdir() if p.name.isdigit()), default=0)
    _NEXT[commits] = number + 1
    return number


_NEXT: dict[Path, int] = {}


def _discard(where: Path) -> None:
    trash = where.with_name(where.name + ".old")
    os.rename(where, trash)
    _fsync(where.parent)
    shutil.rmtree(trash)


# -- recovery and undo -----------------------------------------------------------------------


def recover(txn: Path, warn: Callable[[str], None]) -> None:
    """Undo the commit a crash cut short, if any, saying so in one warning."""
    for leftover in (txn / "journal.new", txn / "journal.old"):
        if leftover.exists():  # never in force: the root was not touched by it
            shutil.rmtree(leftover)
    if not (txn / "journal").exists():
        return
    journal = load(txn / "journal")
    if not journal.root.is_dir():
        raise DiscoError(
            f"an unfinished commit of dance {journal.dance} in {journal.root} cannot be undone:"
            " that root is not there",
            f"mount it again; if it is gone for good, remove {journal.where}",
        )
    changed = undo(journal)
    _discard(journal.where)
    warn(
        f"dance {journal.dance or '?'} was cut short while committing {journal.module}:"
        f" {journal.step}; undone, {changed} path(s) of {journal.root} put back as they were"
    )


def undo(journal: Journal) -> int:
    """Put every path of `journal` back as it was before its commit; how many changed."""
    desired = {e.path: (e.before, journal.saved(e)) for e in journal.entries}
    for entry in journal.entries:  # a crash between making a temp entry and its rename
        with contextlib.suppress(OSError, DiscoError):
            with parent(journal.root, entry.path) as (d, name):
                os.unlink(temp_name(name), dir_fd=d)
    return restore(journal.root, desired, journal.where.with_name("undo"))


Desired = dict[str, "tuple[Saved | None, Path | None]"]


def restore(root: Path, desired: Desired, work: Path) -> int:
    """Bring each path of `desired` to its saved state (None: nothing there) through an undo
    layer in `work`; returns the number of paths changed."""
    try:
        changes = undo_changes(root, desired, work)
        apply(plan_commit(changes, root))
        restore_times(root, desired)
        _sync_dirs(root, {os.path.dirname(p) for p in desired})
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
            shutil.copyfile(content, dest)
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


# -- reading a journal -----------------------------------------------------------------------


def load(where: Path) -> Journal:
    path = where / "journal.json"
    hint = f"disco cannot use {where}; move it aside to go on (the root may be half-committed)"
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DiscoError(f"the commit journal {path} is missing", hint) from None
    except (OSError, ValueError) as e:
        raise DiscoError(f"the commit journal {path} cannot be read ({e})", hint) from None
    if isinstance(data, dict) and isinstance(data.get("format"), int) and data["format"] > FORMAT:
        raise DiscoError(
            f"the commit journal {path} is of format {data['format']}, from a newer disco",
            "run the disco that wrote it, or a newer one, to finish it",
        )
    try:
        if data["format"] != FORMAT:
            raise ValueError(f"format {data['format']!r}")
        entries = tuple(_entry(e) for e in data["entries"])
        return Journal(str(data["dance"]), str(data["module"]), str(data["step"]),
                       Path(data["root"]), entries, where)  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        raise DiscoError(f"the commit journal {path} is damaged ({e!r})", hint) from None


def _entry_data(entry: Entry) -> dict[str, Any]:
    def plain(obj: Saved | Expect | None) -> dict[str, Any] | None:
        if obj is None:
            return None
        data = asdict(obj)
        data["xattrs"] = [[k, v.hex()] for k, v in obj.xattrs]
        return data

    return {"path": entry.path, "before": plain(entry.before), "after": plain(entry.after)}


def _entry(data: dict[str, Any]) -> Entry:
    def xattrs(d: dict[str, Any]) -> dict[str, Any]:
        return {**d, "xattrs": tuple((str(k), bytes.fromhex(v)) for k, v in d["xattrs"])}

    before, after = data["before"], data["after"]
    path = data["path"]
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"path {path!r}")
    return Entry(
        path,
        None if before is None else Saved(**xattrs(before)),
        None if after is None else Expect(**xattrs(after)),
    )


# -- durability, signals, the test hook -----------------------------------------------------


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dirs(root: Path, dirs: set[str]) -> None:
    """fsync the directories whose entries changed, so the renames are on disk."""
    for d in sorted(dirs):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            _fsync(root / d.lstrip("/"))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _point() -> None:
    spec = os.environ.get(KILL_AT)
    if not spec:
        return
    at, _, name = spec.partition(":")
    if next(_points) == int(at):
        os.kill(os.getpid(), getattr(signal, f"SIG{name or 'KILL'}"))
