"""Hard links across a copy-up (DESIGN §7, §8).

overlayfs (with index=off, as disco mounts it) copies a file up under the one name a
step wrote through: after `echo v2 >> a`, where `a` and `b` are one file in the target,
the layer holds a new `a` and nothing for `b`, so `b` would read as unchanged, where live
(one inode) both names change. A file the step made anew and renamed over `a` (sed -i)
is another inode live too: `b` keeps the old content, and nothing is linked. Before a
step's layer is read, `relink` gives it the other names too, as hard links of the
copied-up file: the change report names every path that changed, a NOOP stack shows
them all to the steps after, and a live commit (commit.keep_links) keeps them one file
in the root.

Which files were copied up from a hard-linked lower file overlayfs says itself (index=on
links each to an entry of the work dir's index). The other names of an inode are found
by walking the filesystem that holds it, within
the layer it comes from (the target root, or an earlier NOOP layer), and only when a
copied-up file had more than one name: config files rarely do, so a dance pays nothing.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence, Set
from pathlib import Path

from disco.engine.lower import lookup
from disco.engine.stack import copy_dir_meta, is_opaque
from disco.files import open_dir, opened_dir


def relink(
    upper: Path, lowers: Sequence[Path], copied: Set[tuple[int, int]], exclude: Sequence[str] = ()
) -> list[str]:
    """Link into `upper` every other name of each hard-linked lower file it copied up
    (`copied`: their (dev, inode), as the zygote found them in the step's work dir: see
    leftovers.copied_links); the target paths added, sorted."""
    wanted: list[tuple[str, Path]] = []  # (rel of the copy in upper, its lower file)
    for rel in _files(upper):
        st_up = (upper / rel).lstat()
        if (st_up.st_dev, st_up.st_ino) not in copied:
            continue  # made anew and renamed over the name (sed -i): the others keep the old
        below = lookup(lowers, rel)
        if below is None:
            continue
        st = below.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            wanted.append((rel, below))
    added: list[str] = []
    scans: dict[tuple[int, Path], dict[int, list[str]]] = {}
    for rel, below in wanted:
        st = below.lstat()
        layer, top = _layer_of(below, rel, lowers)
        key = (st.st_dev, top)
        if key not in scans:
            scans[key] = _names_by_inode(top, st.st_dev, layer)
        for other in scans[key].get(st.st_ino, []):
            if other == rel or any(_under("/" + other, e) for e in exclude):
                continue
            if lookup(lowers, other) != Path(layer, other):
                continue  # hidden by a later layer
            if _link(upper, rel, other, lowers):
                added.append("/" + other)
    return sorted(added)


def _files(top: Path, rel: str = "") -> Iterator[str]:
    """Relative paths of the regular files below `top` (whiteouts are char devices)."""
    with os.scandir(top / rel if rel else top) as entries:
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from _files(top, path)
            elif entry.is_file(follow_symlinks=False):
                yield path


def _layer_of(found: Path, rel: str, lowers: Sequence[Path]) -> tuple[Path, Path]:
    """The lower layer `found` (the entry at `rel`) belongs to, and the top of its
    filesystem inside that layer (a submount of the root has its own)."""
    layer = next(Path(p) for p in lowers if Path(p, rel) == found)
    dev, top = found.lstat().st_dev, found.parent
    while top != layer and top.parent.lstat().st_dev == dev:
        top = top.parent
    return layer, top


def _names_by_inode(top: Path, dev: int, layer: Path) -> dict[int, list[str]]:
    """Names (relative to `layer`) of the multiply-linked files of filesystem `dev`
    below `top`, by inode."""
    names: dict[int, list[str]] = {}
    stack = [top]
    while stack:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:  # unreadable, or gone meanwhile
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != dev:
                continue  # another filesystem mounted here: its own inodes
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
            elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                names.setdefault(st.st_ino, []).append(os.path.relpath(entry.path, layer))
    return names


def _link(upper: Path, rel: str, other: str, lowers: Sequence[Path]) -> bool:
    """Give the copy at `rel` in `upper` the name `other` too, with the directories on its
    way copied up as the lower view has them; False where the step's layer has `other`
    already (written, or deleted: a whiteout) or hides it (a directory on its way that the
    step deleted, made opaque, or replaced by a file or a symlink). The layer is walked
    from its top one directory at a time, never through a symlink of the step's."""
    names = other.split("/")
    with opened_dir(upper, rel.split("/")[:-1]) as src, _parents(upper, names, lowers) as d:
        if d is None:
            return False
        try:
            os.stat(names[-1], dir_fd=d, follow_symlinks=False)
            return False
        except FileNotFoundError:
            pass
        os.link(os.path.basename(rel), names[-1], src_dir_fd=src, dst_dir_fd=d,
                follow_symlinks=False)  # fmt: skip
        return True


@contextlib.contextmanager
def _parents(upper: Path, names: list[str], lowers: Sequence[Path]) -> Iterator[int | None]:
    """The directory of the last of `names` in `upper`, its missing parts made as the
    lower view has them; None where the step's layer hides what the lower view has."""
    fd = open_dir(upper)
    try:
        for i, name in enumerate(names[:-1]):
            below: Path | None = None
            try:
                st: os.stat_result | None = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st, below = None, lookup(lowers, "/".join(names[: i + 1]))
                assert below is not None  # the file's lower entry is below it
                os.mkdir(name, 0o700, dir_fd=fd)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                yield None  # deleted (a whiteout), or made a file or a symlink
                return
            step = open_dir(fd, [name])
            os.close(fd)
            fd = step
            if below is not None:
                copy_dir_meta(below, fd)
            elif is_opaque(fd):
                yield None  # emptied by the step: the lower names below are gone
                return
        yield fd
    finally:
        os.close(fd)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")
