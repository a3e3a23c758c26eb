"""File names printed on one line, as `ls --quoting-style=escape` prints them.

A change record or an error names a path on one line and splits it at `" : "`; a name
holding a newline, a tab, a space or bytes that are not UTF-8 would break that line, or
the terminal. Names made only of printable characters other than space and backslash are
printed as they are, so the common case reads as before.
"""

from __future__ import annotations

ESCAPES = {
    "\\": "\\\\",
    " ": "\\ ",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def quote(name: str) -> str:
    """`name` (bytes that are not UTF-8 carried as surrogate escapes) escaped for one line."""
    if name.isprintable() and " " not in name and "\\" not in name:
        return name
    out = []
    for char in name:
        if char in ESCAPES:
            out.append(ESCAPES[char])
        elif 0xDC80 <= ord(char) <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\{ord(char) - 0xDC00:03o}")
        elif not char.isprintable():
            out.extend(f"\\{byte:03o}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)
