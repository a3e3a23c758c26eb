"""Modules ("disco balls"): reading one from disk, and making a new one (DESIGN §4)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from disco.errors import DiscoError, UsageError
from disco.tree.names import check_name
from disco.tree.params import Tree, read_tree

PARTS = ("files", "templates", "scripts", "parameters")


class Edge(enum.Enum):
    AFTER = "after"  # the named module runs before this one
    BEFORE = "before"  # this module runs before the named one


@dataclass(frozen=True)
class Requirement:
    edge: Edge
    name: str
    line: int


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    requires: tuple[Requirement, ...]

    def part(self, part: str) -> Path:
        return self.path / part

    def defaults(self) -> Tree:
        """The module's default parameters (its `parameters/` tree)."""
        return read_tree(self.part("parameters"))


def check_module_name(name: str, where: str = "module name") -> str:
    """A module name read from the server (a requires file, a node's modules map): a bad
    one is the server's error, not a usage error."""
    try:
        return check_name(name, where)
    except UsageError as e:
        raise DiscoError(e.message, e.hint) from None


def parse_requires(text: str, module: str) -> tuple[Requirement, ...]:
    """Parse a `requires` file: `NAME`, `after NAME` or `before NAME` per line."""
    found: list[Requirement] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        where = f"module '{module}': requires line {number}"
        if len(words) == 1:
            edge, name = Edge.AFTER, words[0]
        elif len(words) == 2 and words[0] in ("after", "before"):
            edge, name = Edge(words[0]), words[1]
        else:
            raise DiscoError(
                f"{where}: cannot read '{line}'",
                "write one module per line: NAME, 'after NAME' or 'before NAME'",
            )
        check_module_name(name, f"{where}: module name")
        found.append(Requirement(edge, name, number))
    return tuple(found)


def load_module(path: Path, name: str) -> Module:
    """Read the module at `path`; every part, `requires` included, is optional."""
    requires = path / "requires"
    text = requires.read_text(errors="replace") if requires.is_file() else ""
    return Module(name, path, parse_requires(text, name))


REQUIRES_TEMPLATE = """\
# Modules this one needs, one per line; '#' starts a comment.
#   NAME          NAME runs before this module (and joins the dance)
#   after NAME    the same
#   before NAME   this module runs before NAME (and NAME joins the dance)
"""


def init_module(path: Path) -> Module:
    """Lay out a new module skeleton at `path`; its name is the last path component."""
    name = check_name(path.name, "module name")  # given on the command line
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DiscoError(
            f"cannot create module at {path}: it exists and is not an empty directory",
            "choose a new path, or remove what is there",
        )
    for part in PARTS:
        (path / part).mkdir(parents=True, exist_ok=True)
    (path / "parameters" / name).mkdir(exist_ok=True)
    (path / "requires").write_text(REQUIRES_TEMPLATE)
    return load_module(path, name)
