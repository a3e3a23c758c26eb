"""A module's delivery staged straight into a layer, with no sandbox (DESIGN §6, §12).

Delivering `files/` and the templates' outputs onto / is a copy, so no process needs to
run for it: disco writes the entries into a fresh layer's upper directory itself, as
`cp -RP --preserve=all --parents SOURCE/. /` through the step's overlay would have
written them, and the layer is then read, reported and committed like any step's.

- A directory of the source that the target has (after the dance's earlier steps)
  keeps the target's owner and mode; a missing one is made with the source's.
  Empty directories are delivered too.
- Files, symlinks and special files arrive with their content, mode, numeric owner,
  xattrs and mtime; files hard-linked to each other in the source are linked in the
  layer. An entry replaces whatever the target has there but a directory, and a
  symlink is replaced, never written through.
- A directory of the target's path that is a symlink (`/lib -> usr/lib`) is followed,
  inside the target root, as cp would follow it: the entry lands where it points.
- Nothing is ever written through a symlink in the layer: a directory the delivery needs
  where it put a symlink or a file itself is an error.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from disco.engine.lower import LowerView
from disco.errors import DiscoError
from disco.files import copy_file

_MAX_LINKS = 40  # symlinks followed in one path, as the kernel's ELOOP limit


@dataclass(frozen=True)
class Source:
    """A tree to deliver: `tree`, shown as `shown` in messages (module and part)."""

    tree: Path
    shown: str
    keep_owner: bool = True  # False: root:root, as a template's output is root's


def stage(sources: Sequence[Source], upper: Path, lowers: Sequence[Path]) -> None:
    """Write every entry of `sources` into the layer `upper` over the view `lowers`
    (upper dirs of earlier layers, newest first, then the target root)."""
    stager = _Stager(upper, list(lowers))
    for source in sources:
        if source.tree.is_dir():
            stager.tree(source)


class _Stager:
    def __init__(self, upper: Path, lowers: list[Path]) -> None:
        self.upper = os.fspath(upper)
        self.view = LowerView(lowers)
        self.made: dict[str, str] = {}  # target dir (relative) -> where it really is
        self.links: dict[tuple[int, int], str] = {}  # source inode -> its staged copy

    def up(self, rel: str) -> str:
        return f"{self.upper}/{rel}" if rel else self.upper

    def tree(self, source: Source) -> None:
        base = os.fspath(source.tree)
        for top, dirs, files in os.walk(base):
            dirs.sort()
            rel_top = os.path.relpath(top, base)
            rel_top = "" if rel_top == "." else rel_top
            where = self.directory(rel_top, top, source)
            links = [d for d in dirs if os.path.islink(os.path.join(top, d))]
            for name in [*sorted(files), *links]:
                self.entry(os.path.join(top, name), f"{where}/{name}".lstrip("/"), source)
            dirs[:] = [d for d in dirs if d not in links]

    def directory(self, rel: str, src: str, source: Source) -> str:
        """Make target dir `rel` in the upper (and its parents); where it really is."""
        if rel in self.made:
            return self.made[rel]
        if not rel:
            self.made[rel] = ""
            self.copy_dir(self.view.root, self.upper, None)
            return ""
        parent = self.directory(os.path.dirname(rel), os.path.dirname(src), source)
        asked = f"{parent}/{os.path.basename(rel)}".lstrip("/")
        real = self.follow(asked, source)
        if real != asked:
            self.ensure(os.path.dirname(real), source)
        self.made[rel] = real
        up = self.up(real)
        if not self.is_dir(real, f"{source.shown}/{rel}"):
            below = self.view.lookup(real)
            if below is not None and not os.path.isdir(below):
                what = f"{source.shown}/{rel}"
                raise DiscoError(
                    f"cannot deliver directory {what}: /{real} is a file in the target",
                    f"remove /{real} first, or deliver {what} as a file",
                )
            os.mkdir(up)
            if below is None:  # made new: the source's metadata
                self.copy_dir(src, up, source)
            else:  # the target's stays as it is
                self.copy_dir(below, up, None)
        return real

    def ensure(self, rel: str, source: Source) -> None:
        """Directory `rel` of the target, with its parents, in the upper as they are below."""
        done = ""
        for name in [n for n in rel.split("/") if n]:
            done = f"{done}/{name}".lstrip("/")
            up = self.up(done)
            if self.is_dir(done, source.shown):
                continue
            below = self.view.lookup(done)
            if below is None or not stat.S_ISDIR(os.lstat(below).st_mode):
                raise DiscoError(
                    f"cannot deliver {source.shown}: /{done} of the target is not a directory",
                    f"make /{done} a directory, or fix the symlink that leads there",
                )
            os.mkdir(up)
            self.copy_dir(below, up, None)

    def is_dir(self, rel: str, what: str) -> bool:
        """Whether the upper has directory `rel` (False: nothing there yet); an error if it
        has something else, never followed if a symlink."""
        try:
            st = os.lstat(self.up(rel))
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file"
            raise DiscoError(
                f"cannot deliver {what}: /{rel} is {kind} delivered by this module",
                f"deliver /{rel} as a directory, or deliver {what} where the link points",
            )
        return True

    def follow(self, rel: str, source: Source) -> str:
        """`rel` with each symlink to a directory resolved inside the target root."""
        for _ in range(_MAX_LINKS):
            found = self.view.lookup(rel)
            if found is None or not os.path.islink(found):
                return rel
            target = os.readlink(found)
            base = "" if target.startswith("/") else os.path.dirname(rel)
            rel = os.path.normpath(os.path.join("/", base, target)).lstrip("/")
            parent = os.path.dirname(rel)
            if parent:  # the link's target may itself lie below other links
                rel = f"{self.follow(parent, source)}/{os.path.basename(rel)}"
        raise DiscoError(
            f"cannot deliver {source.shown}: too many symlinks in /{rel} of the target",
            "fix the symlink loop in the target",
        )

    def copy_dir(self, src: str, up: str, source: Source | None) -> None:
        st = os.stat(src)
        owner = source is None or source.keep_owner
        os.chown(up, st.st_uid if owner else 0, st.st_gid if owner else 0)
        os.chmod(up, stat.S_IMODE(st.st_mode))
        _copy_xattrs(src, up)
        os.utime(up, ns=(st.st_atime_ns, st.st_mtime_ns))

    def entry(self, src: str, rel: str, source: Source) -> None:
        up = self.up(rel)
        below = self.view.lookup(rel)
        if below is not None and os.path.isdir(below) and not os.path.islink(below):
            what = f"{source.shown}/{os.path.relpath(src, source.tree)}"
            raise DiscoError(
                f"cannot deliver {what}: /{rel} is a directory in the target",
                f"remove /{rel} first, or make {what} a directory",
            )
        try:
            old = os.lstat(up)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(old.st_mode):
                shutil.rmtree(up)
                self.made = {k: v for k, v in self.made.items() if not _under(v, rel)}
            else:
                os.unlink(up)
        st = os.lstat(src)
        key = (st.st_dev, st.st_ino)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in self.links:
            os.link(self.links[key], up)
            return
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), up)
        elif stat.S_ISREG(st.st_mode):
            copy_file(src, up)  # holes kept
            if st.st_nlink > 1:
                self.links[key] = up
        else:
            os.mknod(up, st.st_mode, st.st_rdev)
        owner = source.keep_owner
        os.chown(up, st.st_uid if owner else 0, st.st_gid if owner else 0, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(up, stat.S_IMODE(st.st_mode))
            _copy_xattrs(src, up)
        os.utime(up, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(f"{top}/")


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:  # a filesystem without xattrs
        return
    for name in names:
        if not name.startswith("trusted.overlay."):
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                        follow_symlinks=False)  # fmt: skip
