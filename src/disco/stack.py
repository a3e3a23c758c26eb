"""Folding one overlayfs upper directory into the one below it (DESIGN §7, §12).

A NOOP dance stacks every step on the steps before it. The kernel takes at most
about 100 lower layers in one mount (their paths must fit in a page), so each
finished layer is folded into a single accumulated layer instead: one layer below
any step, whatever the length of the dance. Folding moves entries by rename on the
same filesystem, so it costs what the step wrote, not what the root holds.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

OPAQUE = "trusted.overlay.opaque"


def is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def fold(top: Path, below: Path) -> None:
    """Move upper dir `top` into upper dir `below`: afterwards `below` alone shows what
    `below` then `top` showed together, over the same lower layers."""
    copy_dir_meta(top, below)
    for entry in os.scandir(top):
        src, dst = Path(entry.path), below / entry.name
        try:
            dst_st: os.stat_result | None = dst.lstat()
        except FileNotFoundError:
            dst_st = None
        if entry.is_dir(follow_symlinks=False) and not is_opaque(src):
            if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
                fold(src, dst)  # both merge with what is below: merge them with each other
                continue
            if dst_st is None:
                os.rename(src, dst)
            else:
                # It covers something of `below` (a file, a whiteout) that hid the
                # layers further down: it must hide them too.
                replace(src, dst)
                os.setxattr(dst, OPAQUE, b"y", follow_symlinks=False)
            continue
        # A file, a symlink, a whiteout or an opaque directory: it replaces all below.
        if dst_st is None:
            os.rename(src, dst)
        else:
            replace(src, dst)


def replace(src: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    else:
        dst.unlink()
    os.rename(src, dst)


def copy_dir_meta(src: Path, dst: Path) -> None:
    """A directory copied up in `src` carries its current owner, mode, times and xattrs."""
    st = src.lstat()
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    for name in os.listxattr(src, follow_symlinks=False):
        if not name.startswith("trusted.overlay."):
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
