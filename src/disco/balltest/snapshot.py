"""What a scratch root holds, byte for byte, where it differs from what it was made of.

A scratch root is an overlay: every path a dance or a rollback touched is in its upper
directory (a parent directory too, copied up when a name in it changes). Comparing those
paths, and only those, compares the whole root; a path the upper directory did not hold
before is compared with the lower layer, which is what the root showed there then."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

# Never a dance's changes (DESIGN §7): the dance mounts its own there, or they are scratch.
UNWATCHED = ("tmp", "var/tmp", "proc", "sys", "dev", "run")


@dataclass(frozen=True)
class Entry:
    """One path's state: absent, or its type, mode, owner, mtime, xattrs and content."""

    kind: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    content: str = ""  # sha256 of a file, a symlink's target, a device's numbers
    xattrs: tuple[tuple[str, str], ...] = ()

    def differences(self, other: Entry) -> list[str]:
        if self.kind != other.kind:
            return [f"{self.kind} => {other.kind}"]
        said = []
        for name in ("mode", "uid", "gid", "mtime_ns", "content", "xattrs"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                shown = (oct(a), oct(b)) if name == "mode" else (a, b)
                said.append(f"{name} {shown[0]} => {shown[1]}")
        return said


ABSENT = Entry("absent")


@dataclass(frozen=True)
class Snapshot:
    entries: dict[str, Entry]  # "/etc/motd" -> its state, for every path the upper held


def upper_paths(upper: Path) -> set[str]:
    """Every path under the overlay's upper directory, as the root names it."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(upper):
        rel = os.path.relpath(dirpath, upper)
        here = "" if rel == "." else rel
        if here in UNWATCHED or any(here.startswith(u + "/") for u in UNWATCHED):
            dirnames[:] = []
            continue
        if here:
            found.add("/" + here)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(here, name)
            if path not in UNWATCHED:
                found.add("/" + path)
        dirnames[:] = [d for d in dirnames if os.path.join(here, d) not in UNWATCHED]
    return found


def take(root: Path, paths: set[str]) -> Snapshot:
    return Snapshot({path: describe(root, path) for path in sorted(paths)})


def describe(root: Path, path: str) -> Entry:
    full = str(root) + path
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return ABSENT
    mode = stat.S_IMODE(st.st_mode)
    xattrs = tuple(
        sorted(
            (n, os.getxattr(full, n, follow_symlinks=False).hex())
            for n in os.listxattr(full, follow_symlinks=False)
        )
    )
    base = Entry("", mode, st.st_uid, st.st_gid, st.st_mtime_ns, "", xattrs)
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(full, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return replace(base, kind="file", content=digest.hexdigest())
    if stat.S_ISDIR(st.st_mode):
        return replace(base, kind="directory")
    if stat.S_ISLNK(st.st_mode):  # a symlink's own mtime is not something a rollback keeps
        return replace(base, kind="symlink", mtime_ns=0, content=os.readlink(full))
    kind = "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "special"
    rdev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return replace(base, kind=kind, content=rdev)


def compare(before: Snapshot, now: Snapshot, lower: Path) -> list[str]:
    """The paths whose state differs, one line each: `before` was taken when the upper
    directory held fewer paths; a path it lacks was the lower layer's then."""
    lines = []
    for path in sorted(set(before.entries) | set(now.entries)):
        old = before.entries.get(path) or describe(lower, path)
        new = now.entries.get(path) or describe(lower, path)
        said = old.differences(new)
        if said:
            lines.append(f"{path}: " + ", ".join(said))
    return lines
