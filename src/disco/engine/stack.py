"""Folding one overlayfs upper directory into the one below it (DESIGN §7, §12).

A NOOP dance stacks every step on the steps before it. The kernel takes at most
about 100 lower layers in one mount (their paths must fit in a page), so each
finished layer is folded into a single accumulated layer instead: one layer below
any step, whatever the length of the dance. Folding moves entries by rename on the
same filesystem, so it costs what the step wrote, not what the root holds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from disco.files import NOFOLLOW_DIR, remove_tree

OPAQUE = "trusted.overlay.opaque"


def is_opaque(path: Path | str | int) -> bool:
    """Whether the directory at `path` (or a descriptor of it) is opaque."""
    try:
        if isinstance(path, int):
            return os.getxattr(path, OPAQUE) == b"y"
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def fold(top: Path | str, below: Path | str, lower: Path | str | None) -> None:
    """Move upper dir `top` into upper dir `below`: afterwards `below` alone shows what
    `below` then `top` showed together, over the same lower layers.

    `lower` is the same directory in the layer under `below` (the target root), or None
    where nothing there can show through. overlayfs hides whiteouts only in directories
    it merges with a lower one, so a deletion with nothing beneath it is applied, not
    kept as a whiteout.
    """
    top, below = os.fspath(top), os.fspath(below)
    low = None if lower is None else os.fspath(lower)
    copy_dir_meta(top, below)
    with os.scandir(top) as entries:
        for entry in list(entries):
            src, dst = entry.path, os.path.join(below, entry.name)
            try:
                dst_st: os.stat_result | None = os.lstat(dst)
            except FileNotFoundError:
                dst_st = None
            beneath = os.path.join(low, entry.name) if low is not None else None
            if beneath is not None and not os.path.lexists(beneath):
                beneath = None
            if is_whiteout(entry):
                if dst_st is not None:
                    remove_tree(Path(dst))
                if beneath is not None:
                    os.rename(src, dst)
                continue
            if entry.is_dir(follow_symlinks=False) and not is_opaque(src):
                if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
                    # Both merge with what is beneath: merge them with each other.
                    shows = beneath if beneath is not None and _is_dir(beneath) else None
                    fold(src, dst, None if is_opaque(dst) else shows)
                    continue
                if dst_st is None:
                    os.rename(src, dst)
                else:
                    # It covers something of `below` (a file, a whiteout) that hid what is
                    # beneath: it must hide it too.
                    remove_tree(Path(dst))
                    os.rename(src, dst)
                    os.setxattr(dst, OPAQUE, b"y", follow_symlinks=False)
                continue
            # A file, a symlink or an opaque directory: it replaces all below.
            if dst_st is not None:
                remove_tree(Path(dst))
            os.rename(src, dst)


def _is_dir(path: str) -> bool:
    """A directory itself: a symlink in the target is no directory to overlayfs, which
    never follows one when it merges layers (and may lead out of the target)."""
    return stat.S_ISDIR(os.lstat(path).st_mode)


def is_whiteout(entry: os.DirEntry[str]) -> bool:
    st = entry.stat(follow_symlinks=False)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def copy_dir_meta(src: Path | str, dst: Path | str | int) -> None:
    """A directory copied up in `src` carries its current owner, mode, times and xattrs
    (set only where they differ: a fold meets the same directories at every step).
    `dst`, a path or a directory's descriptor, is never a symlink followed (OSError)."""
    mine = not isinstance(dst, int)
    fd = dst if isinstance(dst, int) else os.open(dst, NOFOLLOW_DIR)
    try:
        st, was = os.lstat(src), os.fstat(fd)
        chown = (st.st_uid, st.st_gid) != (was.st_uid, was.st_gid)
        if chown:
            os.chown(fd, st.st_uid, st.st_gid)
        if chown or stat.S_IMODE(st.st_mode) != stat.S_IMODE(was.st_mode):  # chown may clear bits
            os.chmod(fd, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(src, follow_symlinks=False):
            if not name.startswith("trusted.overlay."):
                os.setxattr(fd, name, os.getxattr(src, name, follow_symlinks=False))
        if (st.st_atime_ns, st.st_mtime_ns) != (was.st_atime_ns, was.st_mtime_ns):
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        if mine:
            os.close(fd)
