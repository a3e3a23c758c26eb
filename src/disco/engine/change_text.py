"""A change rendered as the seed prints it: the record line and the content diff (DESIGN §7).

Neither ends with a newline: print each with print(). Output of diff is decoded as UTF-8
with U+FFFD for bytes that are not.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from disco.engine.changes import Change, ChangeKind, differences, specific
from disco.errors import CommandError
from disco.files import open_regular, read_regular
from disco.quoting import quote
from disco.run import run

_WORDS = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink"}


_PROBE = 8192  # a NUL byte in this many first bytes makes a file binary


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
    else:
        assert change.before is not None and change.after is not None
        fields = differences(change.before, change.after)
    return head + " : " + " ".join(f"{name}=[{value}]" for name, value in fields)


def content_diff(change: Change, style: str = "normal") -> str:
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
    if any(p is not None and b"\0" in _head(p) for p in (old, new)):
        return "Binary files differ"
    if old is None or new is None:  # all lines added or all removed: no need for diff
        one = new if old is None else old
        assert one is not None
        return _one_sided(read_regular(one), old is None, change.path, style)
    fds: list[int] = []
    try:
        for side in (old, new):
            fds.append(open_regular(side))
        argv = ["diff", "--text"]
        if style == "unified":
            argv += ["-u", "--label", f"a{change.path}", "--label", f"b{change.path}"]
        argv += [f"/proc/self/fd/{fd}" for fd in fds]  # diff opens what disco opened
        result = run(argv, check=False, pass_fds=fds)
    finally:
        for fd in fds:
            os.close(fd)
    if result.returncode > 1:  # 1 only says that the files differ
        raise CommandError(argv, result.returncode, result.stderr.decode(errors="replace"))
    text = result.stdout.decode(errors="replace")
    return text[:-1] if text.endswith("\n") else text


def _one_sided(data: bytes, added: bool, path: str, style: str) -> str:
    """What GNU diff prints for a file against /dev/null (added) or the reverse."""
    if not data:
        return ""
    lines = data.split(b"\n")
    last_newline = lines[-1] == b""
    if last_newline:
        lines.pop()
    n = len(lines)
    span = "1" if n == 1 else f"1,{n}"
    if style == "unified":
        sign = "+" if added else "-"
        count = "" if n == 1 else f",{n}"
        hunk = f"@@ -0,0 +1{count} @@" if added else f"@@ -1{count} +0,0 @@"
        head = [f"--- a{path}".encode(), f"+++ b{path}".encode(), hunk.encode()]
    else:
        sign = "> " if added else "< "
        head = [(f"0a{span}" if added else f"{span}d0").encode()]
    body = [sign.encode() + line for line in lines]
    if not last_newline:
        body.append(b"\\ No newline at end of file")
    return b"\n".join(head + body).decode(errors="replace")


def _head(path: Path) -> bytes:
    return read_regular(path, _PROBE)
