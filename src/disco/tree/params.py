"""The parameters tree: a JSON document written as directories and files (DESIGN §3).

A file is a value (its content, one trailing newline dropped), a directory is a map.
Reads pass over disco's own temporary files (`.~NAME...`); any other name that breaks
the segment rule, and any symlink, is an error naming it: never skipped, never followed.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Union

from disco.errors import DiscoError, UsageError
from disco.files import remove_tree, swap_in, write_atomic
from disco.quoting import quote
from disco.tree.names import (
    NAME_MAX,
    PATH_MAX,
    ParamPath,
    check_segment,
    is_name,
    join,
    shorten,
    split_path,
)

Tree = dict[str, Union[str, "Tree"]]
Value = Union[str, Tree]

MAP = "{}"  # how a map shows in output


# -- reading ---------------------------------------------------------------------------


def decode(data: bytes) -> str:
    text = data.decode("utf-8", errors="surrogateescape")
    return text[:-1] if text.endswith("\n") else text


def encode(value: str) -> bytes:
    return (value + "\n").encode("utf-8", errors="surrogateescape")


def read_tree(directory: Path) -> Tree:
    """Read a directory as a tree; missing directory reads as an empty map.

    disco's own temporary files (`.~NAME...`) are passed over; anything else that is not
    a parameter (a name outside the segment rule, a symlink, a device) is an error that
    names it: a tree read in part would be a wrong answer."""
    tree: Tree = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return tree
    for entry in entries:
        if entry.name.startswith(".~"):
            continue
        if not is_name(entry.name):
            raise NotAParameter(Path(entry.path), "named outside A-Z a-z 0-9 _ . -", "rename")
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            tree[entry.name] = read_tree(Path(entry.path))
        elif stat.S_ISREG(st.st_mode):
            tree[entry.name] = decode(Path(entry.path).read_bytes())
        else:
            raise NotAParameter(Path(entry.path), _KINDS.get(stat.S_IFMT(st.st_mode), "special"))
    return tree


_KINDS = {stat.S_IFLNK: "a symlink", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}  # fmt: skip


class NotAParameter(DiscoError):
    """Something in a parameters tree that is no parameter: a name outside the rule, a
    symlink, a FIFO, ... `path` is where it was read; `shown(where)` says it of `where`
    (the server's file it was fetched from)."""

    def __init__(self, path: Path, what: str, fix: str = "replace") -> None:
        self.path, self.what, self.fix = path, what, fix
        super().__init__(*self._text(quote(str(path))))

    def _text(self, shown: str) -> tuple[str, str]:
        how = "a plain file (a value) or directory (a map) named A-Z a-z 0-9 _ . -"
        return (
            f"{shown} is in a parameters tree but is {self.what}",
            f"{self.fix} or remove it: a parameter is {how}",
        )

    def shown(self, where: str) -> DiscoError:
        message, hint = self._text(where)
        return DiscoError(message, hint)


def walk(tree: Tree, prefix: ParamPath = ()) -> Iterator[tuple[ParamPath, str | None]]:
    """Yield (path, value) in sorted order, maps first with value None, then their children."""
    for name in sorted(tree):
        path = (*prefix, name)
        child = tree[name]
        if isinstance(child, dict):
            yield path, None
            yield from walk(child, path)
        else:
            yield path, child


class Refused(DiscoError):
    """The filesystem refused to read or write a parameter."""

    def __init__(self, message: str, hint: str, *, path: ParamPath, error: OSError) -> None:
        super().__init__(message, hint)
        self.path, self.error = path, error


class ParamStore:
    """A parameters tree on disk, rooted at `root` (the state's `parameters/`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def file(self, path: ParamPath) -> Path:
        return self.root.joinpath(*path)

    def kind(self, path: ParamPath) -> str | None:
        """'map', 'value' or None when nothing is there."""
        if not path:
            return "map"  # the root: empty until something is set
        try:
            st = os.stat(self.file(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self.refused(path, e, setting=False) from None
        return "map" if stat.S_ISDIR(st.st_mode) else "value" if stat.S_ISREG(st.st_mode) else None

    def refused(self, path: ParamPath, e: OSError, setting: bool = True) -> DiscoError:
        """The filesystem said no: say so naming the parameter, and what to do."""
        hints = ["nothing was changed"] if setting else []
        if e.errno == errno.ENAMETOOLONG:
            hints.append(f"the state directory {shorten(str(self.root))} is too long a path")
        elif isinstance(e, PermissionError):
            hints.append("run it as root")
        verb = "set" if setting else "read"
        message = f"cannot {verb} '{shorten(join(path))}': {e.strerror}"
        return Refused(message, "; ".join(hints), path=path, error=e)

    def read(self, path: ParamPath = ()) -> Value:
        kind = self.kind(path)
        if kind is None:
            raise self.missing(path)
        if kind == "map":
            return read_tree(self.file(path))
        return decode(self.file(path).read_bytes())

    def get(self, path: ParamPath) -> str | None:
        """The value at `path`, None for a map; an error if nothing is there."""
        kind = self.kind(path)
        if kind is None:
            raise self.missing(path)
        return self.lookup(path) if kind == "value" else None

    def lookup(self, path: ParamPath, default: str | None = None) -> str | None:
        """The value at `path`, or `default` when there is none (settings use this)."""
        if self.kind(path) != "value":
            return default
        return decode(self.file(path).read_bytes())

    def keys(self, path: ParamPath = ()) -> list[str]:
        value = self.read(path)
        if not isinstance(value, dict):
            raise DiscoError(
                f"parameter '{join(path)}' is a value, not a map",
                f"read it with 'disco-param get {join(path)}'",
            )
        return sorted(value)

    def dump(self, path: ParamPath = ()) -> list[tuple[ParamPath, str | None]]:
        value = self.read(path)
        if not isinstance(value, dict):
            return [(path, value)]
        head: list[tuple[ParamPath, str | None]] = [(path, None)] if path else []
        return head + list(walk(value, path))

    def missing(self, path: ParamPath) -> DiscoError:
        """The error for `path`, naming the nearest map above it that exists (or the value
        in the way)."""
        message = f"parameter '{join(path) or '/'}' does not exist"
        for depth in range(len(path) - 1, 0, -1):
            kind = self.kind(path[:depth])
            if kind == "value":
                above = join(path[:depth])
                return DiscoError(
                    f"{message}: '{above}' is a value", f"read it with 'disco-param get {above}'"
                )
            if kind == "map":
                return DiscoError(
                    message, f"see what does with 'disco-param keys {join(path[:depth])}'"
                )
        return DiscoError(message, "see what does with 'disco-param keys'")

    # -- writing -----------------------------------------------------------------------

    def check_set(
        self,
        path: ParamPath,
        make_map: bool,
        kind_at: Callable[[ParamPath], str | None] | None = None,
    ) -> None:
        """Refuse a set that would lose data: a value in the way, or a map replaced."""
        kind_at = kind_at or self.kind
        for depth in range(1, len(path)):
            if kind_at(path[:depth]) == "value":
                raise DiscoError(
                    f"cannot set '{join(path)}': '{join(path[:depth])}' is a value, not a map",
                    f"delete it first with 'disco-param delete {join(path[:depth])}'",
                )
        existing = kind_at(path)
        if make_map and existing == "value":
            raise DiscoError(
                f"cannot make '{join(path)}' a map: it holds a value",
                f"delete it first with 'disco-param delete {join(path)}'",
            )
        if not make_map and existing == "map":
            raise DiscoError(
                f"cannot set '{join(path)}' to a value: it is a map",
                f"delete it first with 'disco-param delete -r {join(path)}'",
            )

    def set(self, path: ParamPath, value: str | None) -> None:
        """Set a value, or make a map when `value` is None. Missing parent maps are made."""
        self.set_many([(path, value)])

    def set_many(self, items: Sequence[tuple[ParamPath, str | None]]) -> None:
        """Apply several sets, all of them or (when one would lose data) none."""
        planned: dict[ParamPath, str] = {}

        def kind_at(path: ParamPath) -> str | None:
            return planned.get(path) or self.kind(path)

        for path, value in items:
            try:
                self.check_set(path, value is None, kind_at)
            except Refused as e:  # what could not be read is what was to be set
                raise self.refused(e.path, e.error) from None
            for depth in range(1, len(path)):
                planned[path[:depth]] = "map"
            planned[path] = "map" if value is None else "value"
        undo: list[Callable[[], None]] = []
        try:
            for path, value in items:
                self.write(path, value, undo)
        except BaseException:
            for step in reversed(undo):  # all of them or none: put back what was there
                step()
            raise

    def write(
        self, path: ParamPath, value: str | None, undo: list[Callable[[], None]] | None = None
    ) -> None:
        """Write one value or map; `undo` collects the steps that take the write back."""
        undo = [] if undo is None else undo
        try:
            self.make_maps(path if value is None else path[:-1], undo)
            if value is not None:
                target = self.file(path)
                old = target.read_bytes() if target.is_file() else None
                write_atomic(target, encode(value))
                undo.append(
                    (lambda: target.unlink())
                    if old is None
                    else (lambda: write_atomic(target, old))
                )
        except OSError as e:
            for step in reversed(undo):
                step()
            undo.clear()
            raise self.refused(path, e) from None

    def make_maps(self, path: ParamPath, undo: list[Callable[[], None]]) -> None:
        for depth in range(len(path) + 1):
            directory = self.file(path[:depth])
            if not directory.is_dir():
                directory.mkdir()
                undo.append(directory.rmdir)

    def delete(self, path: ParamPath, recursive: bool = False) -> None:
        kind = self.kind(path)
        target = self.file(path)
        if kind is None:
            raise self.missing(path)
        if kind == "value":
            target.unlink()
        elif any(is_name(name) for name in os.listdir(target)) and not recursive:
            raise DiscoError(
                f"parameter '{join(path)}' is a map with keys in it",
                f"delete it and all below with 'disco-param delete -r {join(path)}'",
            )
        else:
            remove_tree(target)

    def replace(self, path: ParamPath, tree: Tree) -> None:
        """Make `path` hold exactly `tree`: built beside it, then swapped in."""
        for depth in range(1, len(path)):
            if self.kind(path[:depth]) == "value":
                raise DiscoError(
                    f"cannot import into '{join(path)}': '{join(path[:depth])}' is a value",
                    f"delete it first with 'disco-param delete {join(path[:depth])}'",
                )
        target = self.file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".~import.", dir=target.parent))
        os.chmod(staged, 0o755)  # mkdtemp's 0700, made like any map
        try:
            write_tree(staged, tree)
            swap_in(staged, target)
        finally:
            if staged.exists():
                remove_tree(staged)


def write_tree(directory: Path, tree: Tree) -> None:
    for name, child in tree.items():
        if isinstance(child, dict):
            (directory / name).mkdir()
            write_tree(directory / name, child)
        else:
            (directory / name).write_bytes(encode(child))


# -- JSON and merging -----------------------------------------------------------------


JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number"}


def json_kind(value: object) -> str:
    """'an object', 'a string', 'null'...: what a JSON value is, for messages."""
    if value is None:
        return "null"
    kind = JSON_KINDS.get(type(value), "number")
    return f"an {kind}" if kind[0] in "ao" else f"a {kind}"


def check_tree(document: object, where: str = "") -> Tree:
    """Check that a JSON document is an object of objects and strings, with valid names."""
    if not isinstance(document, dict):
        raise DiscoError(
            f"cannot import: the document is {json_kind(document)}, not an object",
            "give a JSON object whose members are objects or strings",
        )
    for name, child in document.items():
        path = f"{where}/{name}" if where else name
        if not is_name(name) or len(name) > NAME_MAX:
            check_segment(name, f"cannot import: under '{shorten(where) or '/'}', key")
        if len(path) > PATH_MAX:
            raise DiscoError(
                f"cannot import: '{shorten(path)}' is {len(path)} characters long",
                f"a parameter path holds at most {PATH_MAX}",
            )
        if isinstance(child, dict):
            check_tree(child, path)
        elif not isinstance(child, str):
            raise DiscoError(
                f"cannot import: '{path}' is {json_kind(child)}, not a string or an object",
                'values must be strings: write it in quotes, e.g. "42"',
            )
        else:
            try:
                encode(child)
            except UnicodeEncodeError as e:
                raise DiscoError(
                    f"cannot import: '{path}' holds {e.object[e.start]!r}, a lone surrogate"
                    " that no UTF-8 text can carry",
                    "write the character itself, or a \\u pair that makes one",
                ) from None
    return document


def merge(layers: Iterable[Mapping[str, Value]]) -> Tree:
    """Merge trees, lowest first; a later layer wins per key, maps merge recursively."""
    merged: Tree = {}
    for layer in layers:
        for name, value in layer.items():
            below = merged.get(name)
            if isinstance(value, dict) and isinstance(below, dict):
                merged[name] = merge([below, value])
            elif isinstance(value, dict):
                merged[name] = merge([value])
            else:
                merged[name] = value
    return merged


def node_view(settings: Tree, node: str, node_tree: Tree, module_defaults: Sequence[Tree]) -> Tree:
    """The tree a module's steps see (DESIGN §3).

    Each module's `parameters/` tree, in dance order, lies under the node's own
    `parameters/`; the client's `disco/` settings ride along unchanged.
    """
    own = node_tree.get("parameters", {})
    merged = merge([*module_defaults, own if isinstance(own, dict) else {}])
    return {**settings, node: {**node_tree, "parameters": merged}}


# -- the line format of `dump` and `set -` ---------------------------------------------


def dump_line(path: ParamPath, value: str | None) -> str:
    """`path = value`, maps as `path = {}`; backslash and line breaks escaped as in `set -`."""
    if value is None:
        return f"{join(path)} = {MAP}"
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    if escaped == MAP:  # a value that reads like a map, told apart from one
        escaped = "\\" + MAP
    return f"{join(path)} = {escaped}"


def parse_assignments(text: str) -> list[tuple[ParamPath, str | None]]:
    """Parse `PATH=VALUE` (or dump's `PATH = VALUE`) lines; `{}` makes a map.

    Blank lines and lines starting with `#` are skipped; `\\n`, `\\r` and `\\\\` in a
    value stand for a newline, a carriage return and a backslash, and `\\{}` for a
    value that is `{}`; any other backslash is kept.
    """
    items: list[tuple[ParamPath, str | None]] = []
    # Only "\n" ends a line: a value may hold any other character.
    for number, line in enumerate(text.removesuffix("\n").split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        left, sep, right = line.partition("=")
        if not sep:
            raise UsageError(f"set -: line {number} has no '=': {line}", "write PATH=VALUE")
        if left.endswith(" ") and right.startswith(" "):
            right = right[1:]
        try:
            path = split_path(left.strip())
        except UsageError as e:
            raise UsageError(f"set -: line {number}: {e.message}", e.hint) from None
        items.append((path, None if right == MAP else unescape(right)))
    return items


def unescape(text: str) -> str:
    escapes = {"n": "\n", "r": "\r", "\\": "\\", "{": "{"}
    # An unknown escape (a Windows path's `\t`) stays as it was written.
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(0)), text, flags=re.DOTALL)
