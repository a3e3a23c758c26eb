"""Names in the server tree: parameter path segments, module and node names (DESIGN §3, §4).

A parameter path is `[A-Za-z0-9_.-]+` segments joined by `/`; never absolute, never `.`
or `..` segments. Module and node names start with a letter or a digit besides.
"""

from __future__ import annotations

import re

from disco.errors import UsageError

ParamPath = tuple[str, ...]


SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")


NAME_MAX = 255  # bytes in one file name (ext4, xfs, tmpfs); a segment is ASCII


PATH_MAX = 2048  # bytes in a parameter path: under the state's root it stays below 4096


def check_segment(name: str, what: str) -> str:
    """Return `name` if it is one valid segment, else raise naming `what` it is."""
    bad = sorted(set(re.sub(r"[A-Za-z0-9_./-]", "", name)))
    if not name:
        raise UsageError(f"{what} is empty", "give a name made of A-Z a-z 0-9 _ . -")
    if "/" in name:
        raise UsageError(f"{what} '{name}' contains '/'", "a name is a single path segment")
    if bad:
        chars = " ".join(repr(c) for c in bad)
        raise UsageError(
            f"{what} '{name}' contains {chars}", "use only the characters A-Z a-z 0-9 _ . -"
        )
    if name in (".", ".."):
        raise UsageError(f"{what} '{name}' is not a name", "'.' and '..' are not allowed")
    if len(name) > NAME_MAX:
        raise UsageError(
            f"{what} '{name[:40]}...' is {len(name)} characters long",
            f"a name holds at most {NAME_MAX} (the filesystem's limit)",
        )
    return name


def check_name(name: str, what: str) -> str:
    """A module or node name: a segment that starts with a letter or a digit, since it
    becomes an rsync module name, a command argument and a hostname (DESIGN §4)."""
    check_segment(name, what)
    if not name[0].isalnum():
        raise UsageError(
            f"{what} '{name}' starts with '{name[0]}'", "start it with a letter or a digit"
        )
    return name


HOST_NAME_MAX = 64  # Linux's limit on a hostname: a step's sandbox is named after the node


def check_node(name: str) -> str:
    """A node name: a module name's rule, and short enough to be the sandbox's hostname."""
    check_name(name, "node name")
    if len(name) > HOST_NAME_MAX:
        raise UsageError(
            f"node name '{name[:40]}...' is {len(name)} characters long",
            f"a node name is a hostname: at most {HOST_NAME_MAX} characters",
        )
    return name


def split_path(text: str) -> ParamPath:
    """Parse a parameter path like `disco/server/uri` into its segments."""
    if text.startswith("/"):
        raise UsageError(
            f"parameter path '{text}' is absolute",
            f"write it without the leading /: '{text.lstrip('/')}'",
        )
    if text == "":
        raise UsageError("parameter path is empty", "name a parameter, e.g. disco/server/uri")
    segments = text.split("/")
    if "" in segments:
        raise UsageError(
            f"parameter path '{text}' has an empty segment",
            "write segments joined by single slashes, with none at the end",
        )
    for segment in segments:
        check_segment(segment, f"parameter path '{shorten(text)}': segment")
    if len(text) > PATH_MAX:
        raise UsageError(
            f"parameter path '{shorten(text)}' is {len(text)} characters long",
            f"a path holds at most {PATH_MAX}",
        )
    return tuple(segments)


def shorten(text: str) -> str:
    return text if len(text) <= 80 else text[:60] + "..." + text[-16:]


def join(path: ParamPath) -> str:
    return "/".join(path)


def is_name(name: str) -> bool:
    return SEGMENT.fullmatch(name) is not None and name not in (".", "..")


def is_hidden(name: str) -> bool:
    """A hidden file where disco lists names (a `.gitkeep`, an editor's `.web.swp`): a
    name that starts with one dot. One that starts with two (`..evil`) looks like a
    path's way up and is no such file: it is refused like any name that breaks the rule."""
    return name.startswith(".") and not name.startswith("..")
