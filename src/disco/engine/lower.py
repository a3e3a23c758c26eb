"""The lower view of a step's layer, looked up the way overlayfs does (DESIGN §7).

The view is a list of directories, newest first: the upper dirs of earlier layers (NOOP
stacks them), then the target root last. The newest layer holding a name wins, a
whiteout (char device 0:0) or a non-directory ends the lookup, and below a directory the
older layers merge in until one of them is opaque (xattr trusted.overlay.opaque=y).
Whiteouts and opaque dirs count in the earlier layers only, never in the target root.

On plain string paths: a dance reads a layer at every step, and pathlib's objects cost
more than the system calls they wrap.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

OVERLAY = "trusted.overlay."


# One directory of the lower view and the older layers merged below it, newest first;
# the bool says it is an overlay layer (whiteouts and opaque dirs count), not the root.
Dirs = list[tuple[str, bool]]


def realpath(path: Path | str) -> str:
    """os.path.realpath, directories remembered: a dance asks at every step for a new
    layer in the same few dirs, and realpath would lstat each of their components."""
    path = os.path.normpath(os.fspath(path))
    head, name = os.path.split(path)
    if not name or name == ".." or not os.path.isabs(path):
        return os.path.realpath(path)
    if head not in _REAL_DIRS:
        if len(_REAL_DIRS) > 256:
            _REAL_DIRS.clear()
        _REAL_DIRS[head] = realpath(head)
    full = os.path.join(_REAL_DIRS[head], name)
    return os.path.realpath(full) if os.path.islink(full) else full


_REAL_DIRS: dict[str, str] = {}


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY + "opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def child(dirs: Dirs, name: str) -> tuple[str | None, Dirs]:
    """Look `name` up below `dirs` as overlayfs does: the entry seen there (or None) and,
    if it is a directory, the merged dirs of it."""
    found: str | None = None
    merged: Dirs = []
    for d, layer in dirs:
        p = f"{d}/{name}" if d != "/" else f"/{name}"
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if layer and is_whiteout(st):
            break
        if found is None:
            found = p
        if not stat.S_ISDIR(st.st_mode):  # a non-dir is the entry, or ends the merge
            break
        merged.append((p, layer))
        if layer and is_opaque(p):
            break
    return found, merged


def listing(dirs: Dirs) -> dict[str, tuple[str, Dirs]]:
    """The entries of a merged directory, by name."""
    names = dict.fromkeys(n for d, _ in dirs for n in sorted(os.listdir(d)))
    out = {}
    for name in names:
        found, merged = child(dirs, name)
        if found is not None:
            out[name] = (found, merged)
    return out


def resolve(dirs: Dirs, rel: str) -> str | None:
    """The entry at `rel` in the view `dirs`, or None."""
    found: str | None = None
    for name in rel.split("/"):  # a non-dir leaves no dirs to look in: None below it
        found, dirs = child(dirs, name)
    return found


def view(lowers: Sequence[Path | str]) -> Dirs:
    """Upper dirs of layers, newest first, then the target root: as Dirs."""
    last = len(lowers) - 1
    return [(os.fspath(p).rstrip("/") or "/", i < last) for i, p in enumerate(lowers)]


class LowerView:
    """A lower view whose directories, once looked up, are remembered: for many lookups
    in the same few directories while the view does not change (a delivery's)."""

    def __init__(self, lowers: Sequence[Path | str]) -> None:
        self.dirs: dict[str, Dirs] = {"": view(lowers)}

    def _dirs(self, rel: str) -> Dirs:
        if rel not in self.dirs:
            head, name = os.path.split(rel)
            self.dirs[rel] = child(self._dirs(head), name)[1]
        return self.dirs[rel]

    def lookup(self, rel: str) -> str | None:
        """The entry at `rel` (not ""), or None."""
        head, name = os.path.split(rel)
        return child(self._dirs(head), name)[0]

    @property
    def root(self) -> str:
        return self.dirs[""][-1][0]


def lookup(lowers: Sequence[Path], rel: str) -> Path | None:
    """The entry at `rel` ("" for the top) in the view `lowers` (upper dirs of layers,
    newest first, then the target root), as overlayfs shows it; None if there is none."""
    dirs = view(lowers)
    if not rel:
        return Path(dirs[-1][0])
    found = resolve(dirs, rel)
    return None if found is None else Path(found)
