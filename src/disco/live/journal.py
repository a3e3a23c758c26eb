"""The journal of a live commit on disk: what it holds, reading it back, and writing it
durably (DESIGN §8). commit.py writes one before a commit touches the root; recovery.py
undoes one that a crash left in txn/journal.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import itertools
import json
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from disco.engine.changes import Meta
from disco.errors import DiscoError

FORMAT = 1
_OVERLAY = "trusted.overlay."
# Test-only: "K:SIG" sends SIG (KILL, TERM, INT) to disco at the K-th commit point of the
# process: 1 when journal.new is flushed, 2 when it is renamed to journal, then one after
# each operation, one after the root is flushed, one after the journal is in the history.
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


Times = tuple[tuple[str, int], ...]  # (directory, its mtime in ns), sorted


@dataclass(frozen=True)
class Journal:
    dance: str
    module: str
    step: str
    root: Path
    entries: tuple[Entry, ...]
    where: Path  # the journal's directory (its saved/ holds the content)
    # The directories that hold entries without being entries themselves (/etc for a new
    # /etc/x): their mtimes before the commit, which its renames and unlinks move, and
    # after it (None: not known, the commit was cut short or is older than this field).
    dirs: Times = ()
    dirs_after: Times | None = None

    def saved(self, entry: Entry) -> Path | None:
        file = entry.before.file if entry.before else None
        return None if file is None else self.where / "saved" / file


# -- commit ----------------------------------------------------------------------------------


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


def archive(txn: Path, journal: Journal) -> Journal:
    """A finished commit's journal moved into its dance's history (or dropped), unflushed."""
    if not journal.dance:
        discard(journal.where)
        return journal
    commits = txn / "history" / journal.dance / "commits"
    commits.mkdir(parents=True, exist_ok=True)
    number = _next_number(commits)
    os.rename(journal.where, commits / str(number))
    return replace(journal, where=commits / str(number))


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


def seal(txn: Path) -> None:
    """The last commit (txn/done) put on disk and its journal moved into the history, on
    disk too: at the end of a dance or a rollback, and by recovery in the same boot."""
    done = txn / DONE
    if not done.exists():
        return
    journal = load(done)
    if journal.root.is_dir() and os.stat(journal.root).st_dev != os.stat(txn).st_dev:
        syncfs(journal.root)
    syncfs(txn)
    archive(txn, journal)
    syncfs(txn)


def same_boot(where: Path) -> bool:
    """Whether the journal in `where` was written since this machine last booted: then
    what its commit did is all there, on disk or in the page cache, whatever killed it."""
    try:
        return bool(json.loads((where / "journal.json").read_bytes()).get(BOOT) == boot_id())
    except (OSError, ValueError, AttributeError):
        return False


def boot_id() -> str:
    global _BOOT
    if _BOOT is None:
        try:
            _BOOT = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            _BOOT = ""  # never the same: a done commit is undone after any crash
    return _BOOT


_BOOT: str | None = None


def discard(where: Path) -> None:
    trash = where.with_name(where.name + ".old")
    os.rename(where, trash)
    fsync(where.parent)
    shutil.rmtree(trash)


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
        dirs = _times(data.get("dirs", []))
        return Journal(str(data["dance"]), str(data["module"]), str(data["step"]),
                       Path(data["root"]), entries, where, dirs, _times_after(where))  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        raise DiscoError(f"the commit journal {path} is damaged ({e!r})", hint) from None


COPIES = "copies"  # in journal.json: the md5 of each saved copy, to tell a whole journal.new
BOOT = "boot"  # in journal.json: the boot it was written in (/proc/sys/kernel/random/boot_id)
DONE = "done"  # txn/done: the last commit, done, not yet known to be on disk (commit.py)

AFTER = "dirs-after.json"  # written when the commit is done, just before it is archived


def whole(where: Path) -> Journal | None:
    """The journal in `where` if it is whole: its json reads, and every saved original is
    there, each copy with its md5 (a journal.new a power cut left before its flush
    returned is not, and no operation of it ran)."""
    try:
        journal = load(where)
        copies = json.loads((where / "journal.json").read_bytes()).get(COPIES, {})
        for entry in journal.entries:
            saved = journal.saved(entry)
            if saved is None:
                continue
            if saved.name in copies:
                if md5_of(saved) != copies[saved.name]:
                    return None
            elif not saved.is_file():
                return None
    except (DiscoError, OSError, ValueError, AttributeError):
        return None
    return journal


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def times_data(times: Times) -> bytes:
    return json.dumps([[d, t] for d, t in times], separators=(",", ":")).encode()


def _times(data: Any) -> Times:
    out = tuple((d, t) for d, t in data)
    if not all(isinstance(d, str) and d.startswith("/") and isinstance(t, int) for d, t in out):
        raise ValueError(f"dirs {data!r}")
    return out


def _times_after(where: Path) -> Times | None:
    """The mtimes a finished commit left, if it wrote them (no fsync: a file lost in a
    crash only means a rollback does not know them)."""
    try:
        return _times(json.loads((where / AFTER).read_bytes()))
    except (OSError, ValueError, TypeError):
        return None


def entry_data(entry: Entry) -> dict[str, Any]:
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


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """Everything written to `path`'s filesystem made durable: data, inodes, directory
    entries, renames (syncfs(2): one flush of that filesystem, where an fsync of each file
    and directory a commit touched was one each; since Linux 5.8 it reports write errors)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def point() -> None:
    spec = os.environ.get(KILL_AT)
    if not spec:
        return
    at, _, name = spec.partition(":")
    if next(_points) == int(at):
        os.kill(os.getpid(), getattr(signal, f"SIG{name or 'KILL'}"))
