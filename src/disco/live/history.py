"""Kept dances and their undo logs: what `disco history` lists and `disco rollback` undoes
(DESIGN §8).

Each dance gets an id, one more than the last one's, and a directory txn/history/ID/:
dance.json says when it started, its mode and root, and how it went; commits/N/ is the
journal of its N-th commit (journal.py) with the originals it saved, its undo log. The
last KEEP dances are kept, and the last KEEP live ones (a NOOP check every few minutes
must not push out what a rollback needs); when the undo logs together pass
disco/client/history/max_mb, the oldest are dropped (the dance stays listed, no longer
undoable), never the newest.

A rollback is a commit like a step's: the state before the dances it undoes, gathered
from their undo logs, is built as an undo layer, read as change records and committed
under a journal of its own, as a history entry of mode "rollback". A dance counts as
rolled back once the rollback that names it has finished its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from disco.clock import utc_now
from disco.engine.changes import Change, load_sensitive
from disco.errors import DiscoError
from disco.files import open_regular, write_atomic
from disco.live.changeset import plan_commit
from disco.live.commit import commit_ops, dir_times
from disco.live.journal import DONE, Expect, Journal, Times, load, read_xattrs, seal
from disco.live.recovery import Desired, restore_dir_times, restore_times, undo_changes
from disco.tree.params import ParamStore

KEEP = 50
MAX_MB = ("disco", "client", "history", "max_mb")
DEFAULT_MAX_MB = 100
_LIST = "'disco history' lists the dances kept"


@dataclass(frozen=True)
class Kept:
    id: str
    started: str
    mode: str  # "live", "noop" or "rollback"
    root: str
    pid: int
    node: str = ""
    changes: int = 0
    failures: int = 0
    exit: int | None = None  # None: running, or it died
    undoes: tuple[str, ...] = ()  # a rollback: the dances it undoes, newest first
    pruned: bool = False  # its undo log was dropped
    uncommitted: tuple[tuple[str, str, str], ...] = ()  # (module, step, path) of failed commits

    def commits(self, txn: Path) -> list[Journal]:
        """Its finished commits, the last one too while it waits in txn/done (commit.py)."""
        where = txn / "history" / self.id / "commits"
        numbers = (
            sorted(int(p.name) for p in where.iterdir() if p.name.isdigit())
            if where.is_dir()
            else []
        )
        kept = [load(where / str(n)) for n in numbers]
        if (txn / DONE).is_dir():
            last = load(txn / DONE)
            kept += [last] if last.dance == self.id else []
        return kept

    def done(self, txn: Path) -> bool:
        """Whether a rollback took effect (its commit finished, or it had none)."""
        return self.exit == 0 or (txn / "history" / self.id / "commits" / "1").is_dir()


# -- the entries -----------------------------------------------------------------------------


def begin(txn: Path, mode: str, root: Path, node: str, undoes: Sequence[str] = ()) -> Kept:
    """A new entry for the dance starting now."""
    history = txn / "history"
    history.mkdir(parents=True, exist_ok=True)
    ids = [int(p.name) for p in history.iterdir() if p.name.isdigit()]
    kept = Kept(str(max(ids, default=0) + 1), utc_now(), mode, str(root), os.getpid(), node,
                undoes=tuple(undoes))  # fmt: skip
    (history / kept.id).mkdir(mode=0o700)
    _write(txn, kept)
    return kept


def finish(
    txn: Path,
    kept: Kept,
    changes: int,
    failures: int,
    exit: int,
    uncommitted: Sequence[tuple[str, str, str]] = (),
) -> Kept:
    """`changes`: those committed; `uncommitted`: the paths of commits that failed."""
    done = replace(kept, changes=changes, failures=failures, exit=exit,
                   uncommitted=tuple(uncommitted))  # fmt: skip
    if kept.mode != "noop":  # the last commit on disk, in the history (commit.py)
        seal(txn)
    _write(txn, done)
    return done


def listing(txn: Path) -> list[Kept]:
    """Every kept dance, oldest first. A damaged entry is an error naming it."""
    history = txn / "history"
    if not history.is_dir():
        return []
    ids = sorted(int(p.name) for p in history.iterdir() if p.name.isdigit())
    return [_read(history / str(i) / "dance.json") for i in ids]


def rolled_back(txn: Path, kept: Sequence[Kept]) -> dict[str, str]:
    """dance id -> the id of the rollback that undid it."""
    out: dict[str, str] = {}
    for k in kept:
        if k.mode == "rollback" and k.done(txn):
            out.update({undone: k.id for undone in k.undoes})
    return out


def status(txn: Path, kept: Kept, undone: dict[str, str]) -> str:
    """Whether `kept` can be rolled back, as `disco history` says it."""
    if kept.id in undone:
        return f"rolled back by {undone[kept.id]}"
    if kept.mode != "live":
        return "no"
    if kept.pruned:
        return "no (undo log pruned)"
    if not _committed(txn, kept):
        return "no (nothing committed)"
    return "yes"


def line(txn: Path, kept: Kept, undone: dict[str, str]) -> str:
    how = "running or died" if kept.exit is None else f"exit {kept.exit}"
    return (
        f"{kept.id:>4}  {kept.started[:19]}Z  {kept.mode:<8}  {kept.root}  {kept.changes} change(s)"
        f"  {kept.failures} failure(s)  {how}  rollback: {status(txn, kept, undone)}"
    )


def max_bytes(store: ParamStore) -> int:
    text = (store.lookup(MAX_MB, str(DEFAULT_MAX_MB)) or "").strip()
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value >= 0:
        raise DiscoError(
            f"disco/client/history/max_mb is not a number of megabytes: {text!r}",
            f"set it, e.g. 'echo {DEFAULT_MAX_MB} | disco-param set disco/client/history/max_mb'",
        )
    return int(value * 1024 * 1024)


def prune(txn: Path, limit: int) -> list[str]:
    """Keep the last KEEP dances and at most `limit` bytes of undo logs (the newest dance's
    whatever its size). Returns what was dropped, a sentence each."""
    said: list[str] = []
    kept = listing(txn)
    # NOOP dances (a check every few minutes) never push a live dance's undo log out.
    live = {k.id for k in kept if k.mode == "live"}
    recent = {k.id for k in kept[-KEEP:]} | set(sorted(live, key=int)[-KEEP:])
    recent |= {k.id for k in kept if k.mode == "rollback" and recent & set(k.undoes)}
    for old in kept:
        if old.id not in recent:
            shutil.rmtree(txn / "history" / old.id)
            said.append(f"dance {old.id} ({old.started}) left the history: the last {KEEP}"
                        f" dances and the last {KEEP} live ones are kept")  # fmt: skip
    kept = [k for k in kept if k.id in recent]
    sizes = {k.id: _size(txn / "history" / k.id / "commits") for k in kept}
    total = sum(sizes.values())
    for old in kept[:-1]:
        if total <= limit:
            break
        if sizes[old.id] == 0 or old.pruned:
            continue
        shutil.rmtree(txn / "history" / old.id / "commits")
        _write(txn, replace(old, pruned=True))
        total -= sizes[old.id]
        said.append(
            f"the undo log of dance {old.id} ({old.started}) was dropped: undo logs are kept"
            f" up to disco/client/history/max_mb ({limit / 1048576:g} MB)"
        )
    return said


def _size(where: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirs, files in os.walk(where):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _write(txn: Path, kept: Kept) -> None:
    data = {"format": 1, **asdict(kept)}
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    write_atomic(txn / "history" / kept.id / "dance.json", text.encode())


def _read(path: Path) -> Kept:
    hint = f"move {path.parent} aside; the other dances are kept"
    try:
        data: Any = json.loads(path.read_bytes())
        if data.pop("format") != 1:
            raise ValueError("not format 1")
        data["undoes"] = tuple(str(u) for u in data["undoes"])
        failed = data.get("uncommitted", [])  # entries before issue 22 have none
        data["uncommitted"] = tuple((str(m), str(s), str(p)) for m, s, p in failed)
        kept = Kept(**data)
        if not kept.id.isdigit() or path.parent.name != kept.id:
            raise ValueError(f"id {kept.id!r}")
        return kept
    except FileNotFoundError:
        raise DiscoError(f"the history entry {path} is missing", hint) from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise DiscoError(f"the history entry {path} is damaged ({e})", hint) from None


# -- rollback --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollback:
    root: Path
    dances: tuple[Kept, ...]  # newest first
    desired: Desired  # every path as it was before the oldest of them
    changes: tuple[Change, ...]  # what the rollback changes, read from its undo layer
    work: Path  # the undo layer: the records point into it; remove it when done
    dirs: Times = ()  # directories holding those paths, with their mtimes to put back


def choose(txn: Path, root: Path, wanted: str | None) -> list[Kept]:
    """The dances a rollback to `wanted` (default: the last live one) undoes, newest first."""
    kept = listing(txn)
    undone = rolled_back(txn, kept)
    live = [k for k in kept if k.mode == "live" and Path(k.root) == root]
    if wanted is None:  # the last that changed something: a dance again changes nothing
        left = [k for k in live if k.id not in undone and _committed(txn, k)]
        if not left:
            failed = [k for k in live if k.id not in undone and k.uncommitted]
            said = f": {not_committed(failed[-1])[-1]}" if failed else ""
            raise DiscoError(f"no live dance on {root} to roll back{said}", _LIST)
        chosen = left[-1]
    else:
        by_id = {k.id: k for k in kept}
        if wanted not in by_id:
            raise DiscoError(f"no dance '{wanted}' in the history", _LIST)
        chosen = by_id[wanted]
        if chosen.mode == "noop":
            raise DiscoError(f"dance {wanted} was a NOOP dance: it changed nothing", _LIST)
        if chosen.mode != "live":
            raise DiscoError(
                f"dance {wanted} is a rollback (of {', '.join(chosen.undoes)}): it is not undone",
                "to apply those dances again, dance again ('disco dance')",
            )
        if Path(chosen.root) != root:
            raise DiscoError(f"dance {wanted} was on {chosen.root}, not on {root}",
                             f"pass --root {chosen.root}")  # fmt: skip
        if wanted in undone:
            raise DiscoError(f"dance {wanted} was rolled back already, by {undone[wanted]}",
                             _LIST)  # fmt: skip
    todo = [k for k in live if int(k.id) >= int(chosen.id) and k.id not in undone][::-1]
    for k in todo:
        if k.pruned:
            raise DiscoError(
                f"dance {k.id} cannot be rolled back: its undo log was dropped",
                "raise disco/client/history/max_mb to keep more of them",
            )
    return todo


def not_committed(kept: Kept) -> list[str]:
    """A sentence for each commit of `kept` that failed, naming its paths: it left them
    as they were, so a rollback has nothing of it to undo."""
    steps: dict[tuple[str, str], list[str]] = {}
    for module, step, path in kept.uncommitted:
        steps.setdefault((module, step), []).append(path)
    return [
        f"dance {kept.id} did not commit {module}: {step} (its commit failed; nothing to"
        f" undo): {' '.join(paths)}"
        for (module, step), paths in steps.items()
    ]


def _committed(txn: Path, kept: Kept) -> bool:
    where = txn / "history" / kept.id / "commits"
    return kept.pruned or (where.is_dir() and any(where.iterdir())) or bool(kept.commits(txn))


def prepare(txn: Path, root: Path, wanted: str | None, force: bool) -> Rollback:
    """What rolling back to `wanted` changes; DiscoError naming a path someone changed
    since, unless `force`."""
    dances = choose(txn, root, wanted)
    desired: Desired = {}
    expected: dict[str, Expect | None] = {}
    mtimes: dict[str, int] = {}  # directories holding entries: mtime before, and after
    left: dict[str, int | None] = {}
    for dance in dances:  # newest first: the first seen is the latest state
        for journal in reversed(dance.commits(txn)):
            for entry in journal.entries:
                expected.setdefault(entry.path, entry.after)
                desired[entry.path] = (entry.before, journal.saved(entry))
            after = None if journal.dirs_after is None else dict(journal.dirs_after)
            for d, mtime in journal.dirs:
                left.setdefault(d, None if after is None else after.get(d))
                mtimes[d] = mtime
    if not force:
        changed = changed_since(root, expected, desired)
        if changed:
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            ids = ", ".join(d.id for d in dances)
            raise DiscoError(
                f"{changed[0]}{more} changed since dance {ids}: a rollback would overwrite it",
                "look at it; 'disco rollback --force' overwrites it",
            )
    # A directory's mtime is put back unless someone changed it since (put a file in it).
    now = dict(dir_times(root, sorted(mtimes)))
    dirs = tuple(
        (d, t) for d, t in sorted(mtimes.items())
        if d not in desired and (force or left[d] is None or now.get(d) == left[d])
    )  # fmt: skip
    work = txn / "rollback"
    changes = undo_changes(root, desired, work, load_sensitive(root / "etc/disco"))
    return Rollback(root, tuple(dances), desired, tuple(changes), work, dirs)


def discard(rollback: Rollback) -> None:
    shutil.rmtree(rollback.work, ignore_errors=True)


def apply_rollback(txn: Path, rollback: Rollback, kept: Kept) -> None:
    """Commit the rollback under a journal, as history entry `kept`."""
    try:
        if rollback.changes:
            ops = plan_commit(rollback.changes, rollback.root)
            afters = {c.path: Expect.of(c.after) if c.after else None for c in rollback.changes}
            step = "undo " + " ".join(d.id for d in rollback.dances)
            commit_ops(txn, ops, rollback.root, afters, kept.id, "_rollback", step)
        restore_times(rollback.root, rollback.desired)
        restore_dir_times(rollback.root, rollback.dirs)
    finally:
        shutil.rmtree(rollback.work, ignore_errors=True)


def changed_since(root: Path, expected: dict[str, Expect | None], desired: Desired) -> list[str]:
    """The paths that are no longer as the dances left them, and what someone else put in
    a directory a dance created."""
    out: list[str] = []
    for path, want in sorted(expected.items()):
        target = root / path.lstrip("/")
        try:
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            if want is not None:
                out.append(path)
            continue
        if want is None or not _same(target, st, want):
            out.append(path)
        elif stat.S_ISDIR(st.st_mode) and desired.get(path, (None, None))[0] is None:
            out += [
                f"{path}/{n}" for n in sorted(os.listdir(target)) if f"{path}/{n}" not in expected
            ]
    return out


def _same(target: Path, st: os.stat_result, want: Expect) -> bool:
    if (st.st_mode, st.st_uid, st.st_gid) != (want.mode, want.uid, want.gid):
        return False
    if want.md5 is not None and _md5(target) != want.md5:
        return False
    if want.target is not None and os.readlink(target) != want.target:
        return False
    if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and st.st_rdev != want.rdev:
        return False
    xattrs = tuple((k, v) for k, v in read_xattrs(target) if k != "security.selinux")
    return xattrs == tuple(want.xattrs)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with os.fdopen(open_regular(path), "rb") as f:  # what lstat saw, never a FIFO
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
