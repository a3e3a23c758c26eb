"""A layer's change list turned into operations on the root, and applied (DESIGN §8).

`plan_commit` turns a layer's change list into operations (ops.py): every removal first,
deepest first, then everything put in place, parents first (a directory that becomes
something else, or the other way round, is removed, then put). `keep_links` keeps the
upper's hard links as links. `apply` does them in order.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from disco.engine.changes import Change, ChangeKind, Meta
from disco.errors import DiscoError
from disco.live.ops import (
    NODE_TYPES,
    SELINUX,
    Attrs,
    HardLink,
    MakeDir,
    MakeLink,
    MakeNode,
    Op,
    PutFile,
    Remove,
    SetMeta,
    Xattrs,
    keep_xattrs,
    parts,
)


def plan_commit(changes: Sequence[Change], root: Path) -> list[Op]:
    """The operations that apply `changes` to `root`: removals deepest first, then the rest
    parents first. Pure: reads neither the target nor the upper."""
    removals: list[Op] = []
    puts: list[Op] = []
    for change in changes:
        _check_path(change.path)
        before, after = change.before, change.after
        if change.kind is ChangeKind.DELETED:
            if change.path == "/":
                raise DiscoError("refusing to commit: the change list deletes the root")
            removals.append(Remove(root, change.path))
            continue
        if after is None or change.new is None:
            raise ValueError(f"{change.path}: {change.kind.value} without a new entry")
        if before and before.type != after.type and stat.S_IFDIR in (before.type, after.type):
            removals.append(Remove(root, change.path))  # to or from a directory: old one first
        puts.append(_put(root, change.path, change.new, before, after))
    removals.sort(key=lambda op: parts(op.path), reverse=True)
    puts.sort(key=lambda op: parts(op.path))
    return removals + puts


def keep_links(changes: Sequence[Change], ops: list[Op], root: Path) -> list[Op]:
    """`ops` with link identity kept: regular files that are one inode in the upper (a
    step's `ln a b`, hard links delivered from `files/`) become one inode in the target.

    Of each group of names, one is put (or, if the step left it as it was, stays) and the
    others become HardLink operations to it, after every other put. Reads the upper only
    when a changed file there has more than one name; then it walks the upper once to
    find the names that are not changes.
    """
    linked: dict[tuple[int, int], list[str]] = {}
    upper: Path | None = None
    for change in changes:
        if change.new is None or change.after is None or change.after.type != stat.S_IFREG:
            continue
        st = os.lstat(change.new)
        if st.st_nlink > 1:
            linked.setdefault((st.st_dev, st.st_ino), []).append(change.path)
            upper = change.new.parents[len(parts(change.path)) - 1]
    if upper is None:
        return ops
    new = {c.path: c.new for c in changes if c.new is not None}
    changed = set(new)
    unchanged: dict[tuple[int, int], list[str]] = {}
    for dirpath, _dirs, files in os.walk(upper):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            key = (st.st_dev, st.st_ino)
            path = "/" + os.path.relpath(os.path.join(dirpath, f), upper)
            if key in linked and path not in changed and stat.S_ISREG(st.st_mode):
                unchanged.setdefault(key, []).append(path)
    links: dict[str, HardLink] = {}
    for key, names in linked.items():
        names.sort(key=parts)
        kept = sorted(unchanged.get(key, []), key=parts)
        anchor = kept[0] if kept else names[0]
        for name in names:
            if name == anchor:
                continue
            put = next(op for op in ops if op.path == name and not isinstance(op, Remove))
            assert isinstance(put, (PutFile, SetMeta)) and name in new
            links[name] = HardLink(root, name, anchor, new[name], put.attrs)
    if not links:
        return ops
    rest = [op for op in ops if isinstance(op, Remove) or op.path not in links]
    return rest + sorted(links.values(), key=lambda op: parts(op.path))


def apply(ops: Sequence[Op]) -> None:
    """Do the operations in order; the first failure stops and names the operation."""
    for op in ops:
        try:
            op.do()
        except OSError as e:
            raise DiscoError(
                f"cannot commit {op.target}: {e.strerror or e}",
                hint=f"the failed operation was: {op.describe()}",
            ) from e


def _put(root: Path, path: str, new: Path, before: Meta | None, after: Meta) -> Op:
    kind = after.type
    mtime = None if kind == stat.S_IFDIR else after.mtime_ns
    perms = None if kind == stat.S_IFLNK else after.bits
    attrs = Attrs(after.uid, after.gid, perms, _xattrs_of(after), mtime)
    if before is not None and before.type == kind and _same_data(before, after):
        return SetMeta(root, path, attrs, _dropped(_xattrs_of(before), attrs.xattrs))
    if kind == stat.S_IFDIR:
        return MakeDir(root, path, attrs)
    if kind == stat.S_IFREG:
        return PutFile(root, path, new, attrs)
    if kind == stat.S_IFLNK:
        return MakeLink(root, path, after.target or "", attrs)
    return MakeNode(root, path, NODE_TYPES[kind], after.rdev, attrs)


def _same_data(before: Meta, after: Meta) -> bool:
    """Whether only metadata changed: a directory, the same content, symlink target or
    device numbers."""
    if after.type == stat.S_IFREG:
        return before.md5 is not None and before.md5 == after.md5
    return (before.target, before.rdev) == (after.target, after.rdev)


def _xattrs_of(meta: Meta) -> Xattrs:
    """The xattrs to set: the others and the SELinux label (which Meta holds apart)."""
    label = () if meta.selinux == "?" else ((SELINUX, meta.selinux.encode()),)
    return keep_xattrs(meta.xattrs) + label


def _dropped(old: Xattrs, new: Xattrs) -> tuple[str, ...]:
    """The xattrs to remove; never the SELinux label (a policy would label it anyway)."""
    names = {k for k, _ in new} | {SELINUX}
    return tuple(k for k, _ in keep_xattrs(old) if k not in names)


def _check_path(path: str) -> None:
    parts = path.split("/")[1:]
    bad = not path.startswith("/") or "\0" in path or any(p in ("", ".", "..") for p in parts)
    if bad and path != "/":
        raise DiscoError(f"refusing to commit {path!r}: not a plain absolute path")
