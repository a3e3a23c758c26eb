"""The operations that apply a live step's layer to the target root (DESIGN §8).

changeset.py plans them from a layer's change list and applies them in order. Each
operation is a frozen dataclass that does and describes itself (a shell line) and names
the target paths it replaces or deletes (`paths()`), for a journal to save first.

The boring way (STYLE 6): a regular file is copied from the upper to `.NAME.disco-new`
beside its target, given owner, mode, xattrs and times and renamed over it, so
a reader sees the old file or the new one, never half of one. Replacing breaks hard
links (the other names keep the old content), as the overlay did inside the step.
Symlinks and special files are made beside and renamed over too. A changed directory,
or a file with the same content, gets its metadata in place (same inode, same contents).
Directory times are not set: what is put into them updates them, as it did in the step.
A removal takes a directory with everything below it, within one filesystem.

Every target is reached from the root one component at a time, never following a
symlink: a change below a symlink in the target (`etc -> /etc`) is refused, since a
layer holds real directories. `trusted.overlay.*` xattrs never reach the target. Nothing
is fsynced here: durability across a crash is the journal's job (commit.py: a syncfs
before the next commit, or at the end of the dance).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shlex
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from disco.errors import DiscoError
from disco.files import NOFOLLOW_DIR, OffPath, copy_data, open_dir

TEMP_SUFFIX = ".disco-new"
_OVERLAY_XATTR = "trusted.overlay."
SELINUX = "security.selinux"

NODE_TYPES = {stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}

Xattrs = tuple[tuple[str, bytes], ...]


def temp_name(name: str) -> str:
    """The name a new entry gets beside `name` before it is renamed over it."""
    temp = f".{name}{TEMP_SUFFIX}"
    if len(os.fsencode(temp)) <= 255:
        return temp
    return f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:32]}{TEMP_SUFFIX}"


@dataclass(frozen=True)
class Attrs:
    """What an entry gets besides its content: numeric owner, permission bits (with
    setuid/setgid/sticky; None for symlinks), xattrs, and mtime (None: leave the times)."""

    uid: int
    gid: int
    mode: int | None
    xattrs: Xattrs = ()
    mtime_ns: int | None = None


# ---- operations ----


@dataclass(frozen=True)
class _At:
    root: Path
    path: str  # absolute in the target: "/etc/x"

    @property
    def target(self) -> Path:
        return self.root / self.path.lstrip("/")

    def paths(self) -> tuple[Path, ...]:
        """The target paths this operation replaces, deletes or (SetMeta) changes in place."""
        return (self.target,)


@dataclass(frozen=True)
class PutFile(_At):
    """Copy a regular file from the upper beside the target, then rename it over."""

    source: Path
    attrs: Attrs

    def do(self) -> None:
        atime_ns = os.stat(self.source, follow_symlinks=False).st_atime_ns
        with parent(self.root, self.path) as (d, name):
            _beside(d, name, lambda tmp: _copy(self.source, d, tmp), self.attrs, atime_ns)

    def describe(self) -> str:
        a, src = self.attrs, shlex.quote(str(self.source))
        line = f"install -p -m {a.mode or 0:04o} -o {a.uid} -g {a.gid} {src} {_q(self.target)}"
        return line + _describe_xattrs(self.target, a.xattrs)


@dataclass(frozen=True)
class MakeDir(_At):
    """Make a directory (or adopt the one there) with owner, mode and xattrs."""

    attrs: Attrs

    def do(self) -> None:
        with parent(self.root, self.path) as (d, name):
            try:
                os.mkdir(name, 0o700, dir_fd=d)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(name, dir_fd=d, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=d)
                    os.mkdir(name, 0o700, dir_fd=d)
            _set_attrs(d, name, self.attrs)

    def describe(self) -> str:
        a = self.attrs
        line = f"install -d -m {a.mode or 0:04o} -o {a.uid} -g {a.gid} {_q(self.target)}"
        return line + _describe_xattrs(self.target, a.xattrs)


@dataclass(frozen=True)
class MakeLink(_At):
    """Make a symlink beside the target, then rename it over."""

    link: str  # what the symlink points to
    attrs: Attrs

    def do(self) -> None:
        with parent(self.root, self.path) as (d, name):
            _beside(d, name, lambda tmp: os.symlink(self.link, tmp, dir_fd=d), self.attrs)

    def describe(self) -> str:
        line = f"ln -sfn {shlex.quote(self.link)} {_q(self.target)}"
        return line + _describe_owner(self.target, self.attrs, "-h ")


@dataclass(frozen=True)
class MakeNode(_At):
    """Make a FIFO, socket or device node beside the target, then rename it over."""

    kind: str  # mknod's letter: "c", "b", "p", or "s" for a socket
    rdev: int
    attrs: Attrs

    def do(self) -> None:
        mode = {v: k for k, v in NODE_TYPES.items()}[self.kind] | 0o600
        with parent(self.root, self.path) as (d, name):
            _beside(d, name, lambda tmp: os.mknod(tmp, mode, self.rdev, dir_fd=d), self.attrs)

    def describe(self) -> str:
        dev = f" {os.major(self.rdev)} {os.minor(self.rdev)}" if self.kind in ("b", "c") else ""
        line = f"mknod -m {self.attrs.mode or 0:04o} {_q(self.target)} {self.kind}{dev}"
        if self.kind == "s":  # mknod(1) cannot, mknod(2) can
            line = f"python3 -c 'import os, stat; os.mknod({str(self.target)!r}, stat.S_IFSOCK)'"
        return line + _describe_owner(self.target, self.attrs, "")


@dataclass(frozen=True)
class SetMeta(_At):
    """Change owner, mode, xattrs (and for non-directories mtime) in place: same inode."""

    attrs: Attrs
    drop_xattrs: tuple[str, ...] = ()  # names the entry had and lost

    def do(self) -> None:
        with parent(self.root, self.path) as (d, name):
            _set_attrs(d, name, self.attrs, self.drop_xattrs)

    def describe(self) -> str:
        a, t = self.attrs, _q(self.target)
        line = f"chown -h {a.uid}:{a.gid} {t}"
        line += f" && chmod {a.mode:04o} {t}" if a.mode is not None else ""
        line += _describe_xattrs(self.target, a.xattrs, self.drop_xattrs)
        if a.mtime_ns is not None:
            secs, ns = divmod(a.mtime_ns, 10**9)
            line += f" && touch -h -m -d @{secs}.{ns:09d} {t}"
        return line


@dataclass(frozen=True)
class HardLink(_At):
    """Give the target a new name of the entry at `anchor` (a hard link, made beside and
    renamed over), so names that are one file in the layer stay one file. Where no link
    can be made (another filesystem, the anchor is not a regular file) it copies `source`
    as PutFile does."""

    anchor: str  # absolute in the target, put or left in place before this operation
    source: Path
    attrs: Attrs

    def do(self) -> None:
        with parent(self.root, self.anchor) as (a, anchor):
            with parent(self.root, self.path) as (d, name):
                linked = self._link(a, anchor, d, name)
        if not linked:
            PutFile(self.root, self.path, self.source, self.attrs).do()

    def _link(self, a: int, anchor: str, d: int, name: str) -> bool:
        tmp = temp_name(name)
        _unlink_quiet(d, tmp)
        try:
            if not stat.S_ISREG(os.stat(anchor, dir_fd=a, follow_symlinks=False).st_mode):
                return False
            os.link(anchor, tmp, src_dir_fd=a, dst_dir_fd=d, follow_symlinks=False)
        except OSError:
            return False
        try:
            with contextlib.suppress(FileNotFoundError):
                now = os.stat(name, dir_fd=d, follow_symlinks=False)
                if os.stat(tmp, dir_fd=d, follow_symlinks=False).st_ino == now.st_ino:
                    _unlink_quiet(d, tmp)  # already one file: a rename would do nothing
                    return True
            os.replace(tmp, name, src_dir_fd=d, dst_dir_fd=d)
        except BaseException:
            _unlink_quiet(d, tmp)
            raise
        return True

    def describe(self) -> str:
        return f"ln -f {_q(self.root / self.anchor.lstrip('/'))} {_q(self.target)}"


@dataclass(frozen=True)
class Remove(_At):
    """Delete an entry, a directory with everything below it; nothing there is fine."""

    def do(self) -> None:
        with contextlib.suppress(FileNotFoundError), parent(self.root, self.path) as (d, name):
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _remove_tree(d, name, st.st_dev, self.target)
            else:
                os.unlink(name, dir_fd=d)

    def describe(self) -> str:
        return f"rm -rf {_q(self.target)}"


Op = Union[PutFile, MakeDir, MakeLink, MakeNode, SetMeta, HardLink, Remove]


def keep_xattrs(xattrs: Xattrs) -> Xattrs:
    return tuple((k, v) for k, v in xattrs if not k.startswith(_OVERLAY_XATTR))


def parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split("/") if p)


# ---- doing ----


@contextlib.contextmanager
def parent(root: Path, path: str) -> Iterator[tuple[int, str]]:
    """An open descriptor of the directory holding `path` below `root`, and the last name.

    Walks from the root one component at a time and never follows a symlink; "/" gives the
    root itself and ".". Raises FileNotFoundError if a directory on the way is missing.
    """
    names = parts(path)
    try:
        fd = open_dir(root, names[:-1])
    except OffPath as e:
        where = root.joinpath(*e.names)
        raise DiscoError(
            f"refusing to commit {path}: {where} is {e.strerror} in the target",
            hint="the target changed since the step ran, or the layer is not a layer",
        ) from e
    try:
        yield fd, names[-1] if names else "."
    finally:
        os.close(fd)


def _beside(
    d: int, name: str, make: Callable[[str], int | None], attrs: Attrs, atime_ns: int | None = None
) -> None:
    """Make an entry under the temp name (`make` may return a descriptor to close), give it
    its attributes, rename it over `name`. A failure leaves no temp entry behind."""
    tmp = temp_name(name)
    _unlink_quiet(d, tmp)
    try:
        fd = make(tmp)
        try:
            _set_attrs(d, tmp, attrs, (), atime_ns)
        finally:
            if fd is not None:
                os.close(fd)
        os.replace(tmp, name, src_dir_fd=d, dst_dir_fd=d)
    except BaseException:
        _unlink_quiet(d, tmp)
        raise


def _set_attrs(
    d: int, name: str, attrs: Attrs, drop: Sequence[str] = (), atime_ns: int | None = None
) -> None:
    """Owner, then mode (chown clears setuid bits), then xattrs (chown clears file
    capabilities), then times, of `name` in the directory `d`, never following a symlink."""
    os.chown(name, attrs.uid, attrs.gid, dir_fd=d, follow_symlinks=False)
    st = os.stat(name, dir_fd=d, follow_symlinks=False)
    if attrs.mode is not None and not stat.S_ISLNK(st.st_mode):
        os.chmod(name, attrs.mode, dir_fd=d)
    where = f"/proc/self/fd/{d}/{name}"  # the xattr calls take no dir_fd
    for key in drop:
        try:
            os.removexattr(where, key, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
    for key, value in keep_xattrs(attrs.xattrs):
        os.setxattr(where, key, value, follow_symlinks=False)
    if attrs.mtime_ns is not None:
        atime = st.st_atime_ns if atime_ns is None else atime_ns
        os.utime(name, ns=(atime, attrs.mtime_ns), dir_fd=d, follow_symlinks=False)


def _copy(source: Path, d: int, tmp: str) -> int:
    """Copy `source` into a new file `tmp` in `d` (mode 0600 until its attributes are set)."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(tmp, flags, 0o600, dir_fd=d)
        try:
            copy_data(src, dst)  # holes kept
        except BaseException:
            os.close(dst)
            raise
        return dst
    finally:
        os.close(src)


def _unlink_quiet(d: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=d)


def _remove_tree(d: int, name: str, dev: int, shown: Path) -> None:
    """rm -r --one-file-system of the directory `name` in `d`."""
    fd = os.open(name, NOFOLLOW_DIR, dir_fd=d)
    try:
        for child in os.listdir(fd):
            st = os.stat(child, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(child, dir_fd=fd)
            elif st.st_dev != dev:
                raise DiscoError(f"refusing to remove {shown / child}: another filesystem")
            else:
                _remove_tree(fd, child, dev, shown / child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=d)


def _q(path: Path) -> str:
    return shlex.quote(str(path))


def _describe_owner(target: Path, attrs: Attrs, h: str) -> str:
    owner = f" && chown {h}{attrs.uid}:{attrs.gid} {_q(target)}" if attrs.uid or attrs.gid else ""
    return owner + _describe_xattrs(target, attrs.xattrs)


def _describe_xattrs(target: Path, xattrs: Xattrs, drop: Sequence[str] = ()) -> str:
    t = _q(target)
    sets = [
        f" && setfattr -h -n {shlex.quote(k)} -v 0x{v.hex()} {t}" for k, v in keep_xattrs(xattrs)
    ]
    return "".join(sets + [f" && setfattr -h -x {shlex.quote(k)} {t}" for k in drop])
