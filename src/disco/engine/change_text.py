"""A change rendered as the seed prints it: the record line and the content diff (DESIGN §7).

Neither ends with a newline: print each with print(). Output of diff is decoded as UTF-8
with U+FFFD for bytes that are not.

A diff is cut after 2000 lines or 1 MiB (BOUND), with a last line saying how much
was left out, so a script that writes a 3-million-line file prints, and the report
keeps, 2000 of them. Neither the file nor diff's output is ever held whole: the lines
shown are read first, the rest only counted, a block at a time.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from disco.engine.changes import Change, ChangeKind, differences, specific
from disco.engine.xattrs import xattrs_text
from disco.files import open_regular, read_regular
from disco.quoting import quote
from disco.run import read_output

_WORDS = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink"}


_PROBE = 8192  # a NUL byte in this many first bytes makes a file binary


@dataclass(frozen=True)
class Bound:
    """How much of a diff is shown and kept in the report."""

    lines: int = 2000
    size: int = 1 << 20  # bytes


BOUND = Bound()


def header(change: Change) -> str:
    """The report line after "info: ", e.g. "File: file: /etc/passwd : Deleted"."""
    meta = change.after or change.before
    assert meta is not None
    # quote(): a newline, tab or " : " in a name would split or corrupt the record.
    path = quote(change.path)
    head = f"File: {_WORDS.get(meta.type, 'special')}: {path} : {change.kind.value}"
    if change.kind is ChangeKind.DELETED:
        return head
    if change.kind is ChangeKind.CREATED:
        fields = [("type", meta.kind), ("device", meta.device), ("mode", meta.mode)]
        fields.append(("selinux", meta.selinux))
        fields += [(name, value) for name, value in specific(meta) if value is not None]
        fields.append(("perms", meta.perms))
        if meta.xattrs:  # a file capability or an ACL: what setcap or setfacl made
            fields.append(("xattrs", xattrs_text(meta.xattrs)))
    else:
        assert change.before is not None and change.after is not None
        fields = differences(change.before, change.after)
    return head + " : " + " ".join(f"{name}=[{value}]" for name, value in fields)


def content_diff(change: Change, style: str = "normal", bound: Bound = BOUND) -> str:
    """The change of a regular file's content in GNU diff's "normal" or "unified" format.

    "" when no content diff applies (dirs, symlinks, specials, same content, an empty
    file created), "Binary files differ" if either side has a NUL byte in its first 8 KiB,
    "(content hidden: sensitive)" for a sensitive path. A side that is not a regular file
    (the path created, deleted, or of another type) reads as empty (/dev/null). Unified
    diffs are labelled a/PATH and b/PATH. Diff's final newline is dropped. The files are
    read now: render a change before it is committed. A side is read only while it is
    the regular file it was, never through a symlink (else OSError).
    """
    if style not in ("normal", "unified"):
        raise ValueError(f"unknown diff style {style!r}")
    old = change.old if change.before and change.before.type == stat.S_IFREG else None
    new = change.new if change.after and change.after.type == stat.S_IFREG else None
    if (old is None and new is None) or (
        change.before and change.after and change.before.md5 == change.after.md5
    ):
        return ""
    if change.sensitive:
        return "(content hidden: sensitive)"
    if old is None or new is None:  # all lines added or all removed: no need for diff
        one = new if old is None else old
        assert one is not None
        with os.fdopen(open_regular(one), "rb") as f:  # never through a planted link
            if b"\0" in f.read(_PROBE):  # one open for the probe and the lines
                return "Binary files differ"
            f.seek(0)
            return _one_sided(f, old is None, change.path, style, bound)
    if any(b"\0" in _probe(p) for p in (old, new)):
        return "Binary files differ"
    fds: list[int] = []
    try:
        for side in (old, new):
            fds.append(open_regular(side))
        argv = ["diff", "--text"]
        if style == "unified":
            argv += ["-u", "--label", f"a{change.path}", "--label", f"b{change.path}"]
        argv += [f"/proc/self/fd/{fd}" for fd in fds]  # diff opens what disco opened
        consume = lambda out: _Cut.read(out, bound)  # noqa: E731
        cut = read_output(argv, consume, ok=(0, 1), pass_fds=fds)  # 1: they differ
    finally:
        for fd in fds:
            os.close(fd)
    return cut.text(cut.lines, bound)


@dataclass(frozen=True)
class _Cut:
    """The first lines of a stream within the bounds (without their newlines), and how
    many lines and bytes came after them."""

    lines: list[bytes]
    newline: bool  # the stream ended with a newline (when nothing was cut)
    more_lines: int
    more_bytes: int

    @classmethod
    def read(cls, stream: IO[bytes], bound: Bound, extra: int = 0) -> _Cut:
        """`extra`: bytes each line gets when shown (diff's "> "), counted in the bound."""
        lines: list[bytes] = []
        size, line = 0, b""
        while len(lines) < bound.lines:
            line = stream.readline(bound.size - size + 1)
            if not line:
                return cls(lines, True, 0, 0)
            if size + len(line) + extra > bound.size:
                break
            size += len(line) + extra
            lines.append(line[:-1] if line.endswith(b"\n") else line)
            if not line.endswith(b"\n"):
                return cls(lines, False, 0, 0)
        else:
            line = b""
        more_lines = more_bytes = 0
        last = b"\n"
        for block in _blocks(line, stream):
            more_lines += block.count(b"\n")
            more_bytes += len(block)
            last = block[-1:]
        more_lines += last != b"\n"  # a last line without its newline
        return cls(lines, True, more_lines, more_bytes)

    def text(self, body: list[bytes], bound: Bound) -> str:
        """`body` (these lines, as shown) and, if the stream went on, a line saying so."""
        if self.more_lines:
            body = [*body, _cut_line(self.more_lines, self.more_bytes, bound).encode()]
        return b"\n".join(body).decode(errors="replace")


def _blocks(first: bytes, stream: IO[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    while block := stream.read(1 << 20):
        yield block


def _cut_line(lines: int, size: int, bound: Bound) -> str:
    """Where a diff is cut: like diff's own "\\ No newline" note, a line no diff line is."""
    return (
        f"\\ Diff cut: {lines} more line(s), {_amount(size)}, not shown"
        f" (disco shows at most {bound.lines} lines or {_amount(bound.size)} of a diff)"
    )


def _amount(size: int) -> str:
    return f"{size / (1 << 20):.3g} MiB" if size >= 1 << 20 else f"{size} bytes"


def _one_sided(f: IO[bytes], added: bool, path: str, style: str, bound: Bound = BOUND) -> str:
    """What GNU diff prints for a file against /dev/null (added) or the reverse."""
    cut = _Cut.read(f, bound, extra=2)
    if not cut.lines and not cut.more_lines:
        return ""
    n = len(cut.lines) + cut.more_lines
    span = "1" if n == 1 else f"1,{n}"
    if style == "unified":
        sign = "+" if added else "-"
        count = "" if n == 1 else f",{n}"
        hunk = f"@@ -0,0 +1{count} @@" if added else f"@@ -1{count} +0,0 @@"
        head = [f"--- a{path}".encode(), f"+++ b{path}".encode(), hunk.encode()]
    else:
        sign = "> " if added else "< "
        head = [(f"0a{span}" if added else f"{span}d0").encode()]
    body = [sign.encode() + line for line in cut.lines]
    if not cut.newline:
        body.append(b"\\ No newline at end of file")
    return cut.text(head + body, bound)


def _probe(path: Path) -> bytes:
    return read_regular(path, _PROBE)
