"""What the host side of a package fetch already knows (DESIGN §12: no program spawned
where the answer is known; §17).

A NOOP that installs the same packages as the last one, on a root whose apt inputs did
not change, gets the same answer from apt: the same sources, the same files with the
same SHA256. So packages.py keeps that answer, keyed by the request and a signature of
everything apt read to give it (the root's sources, preferences, configuration, lists,
dpkg status and archives, and the host's apt configuration, which apt reads before the
root's): each file's name, size, inode, mtime and ctime. A change to any of them (a new
`apt-get update`, an install, an edited sources.list) makes another key.

A file in the cache is hashed once: disco verified it when it wrote it, and notes its
SHA256 with its inode, size, mtime and ctime. Nothing but disco writes the cache (root's,
in the state dir), and no write to a file leaves its ctime as it was (userspace cannot
set a ctime), so a file whose stat is the noted one has the noted content.

Both live under STATE/cache/apt, never shown to a step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from disco.files import write_atomic

KEPT = 64  # answers kept; the oldest go first
_WALKED = ("etc/apt", "var/lib/apt/lists", "var/cache/apt/archives")  # their entries
_FILES = ("var/lib/dpkg/status", "var/lib/dpkg/arch", "var/lib/apt/extended_states")


def _stats(base: str, rel: str, depth: int = 3) -> Iterator[str]:
    """A line per entry under base/rel (its own symlinks followed, as apt follows them):
    rel, and size, inode, mtime and ctime, or "-" for none."""
    try:
        st = os.stat(os.path.join(base, rel))
    except OSError:
        yield f"{rel} -"
        return
    yield f"{rel} {st.st_size} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}"
    if depth and os.path.isdir(os.path.join(base, rel)):
        names: list[str] = []
        with contextlib.suppress(OSError), os.scandir(os.path.join(base, rel)) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            yield from _stats(base, os.path.join(rel, name), depth - 1)


def signature(root: Path, request: Sequence[str]) -> str:
    """A key for apt's answer to `request` on `root`: the request, and the stat of every
    input apt read for it (by its path in the root: two clones of a root made at the
    same moment get the same answer, and so the same key)."""
    digest = hashlib.sha256("\0".join(request).encode())
    base = os.path.realpath(root)
    lines = [line for rel in (*_WALKED, *_FILES) for line in _stats(base, rel)]
    if base != "/":
        lines += [f"host {line}" for line in _stats("/", "etc/apt")]
    for line in lines:
        digest.update(line.encode(errors="surrogateescape") + b"\n")
    return digest.hexdigest()


def recall(memo: Path, key: str) -> dict[str, object] | None:
    """The answer noted under `key`, or None."""
    try:
        found = json.loads((memo / f"{key}.json").read_bytes())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def note(memo: Path, key: str, answer: dict[str, object]) -> None:
    """Keep `answer` under `key`, and no more than KEPT answers."""
    memo.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(memo / f"{key}.json", json.dumps(answer).encode(), 0o600)
    kept = sorted(memo.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    for old in kept[:-KEPT]:
        old.unlink(missing_ok=True)


class Verified:
    """The SHA256 of each file in the cache as disco verified it, with its stat."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            loaded = json.loads(path.read_bytes())
        except (OSError, ValueError):
            loaded = {}
        self.known: dict[str, list[object]] = loaded if isinstance(loaded, dict) else {}
        self.changed = False

    @staticmethod
    def _stat(st: os.stat_result) -> list[object]:
        return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]

    def knows(self, name: str, st: os.stat_result, sha256: str) -> bool:
        """Whether the file `name`, as `st` says it is, was verified to have `sha256`."""
        return self.known.get(name) == [sha256, *self._stat(st)]

    def add(self, name: str, st: os.stat_result, sha256: str) -> None:
        self.known[name] = [sha256, *self._stat(st)]
        self.changed = True

    def save(self) -> None:
        if self.changed:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            write_atomic(self.path, json.dumps(self.known).encode(), 0o600)
            self.changed = False
