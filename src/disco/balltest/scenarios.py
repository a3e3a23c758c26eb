"""A ball's test scenarios on disk (DESIGN §16): `BALL/tests/<scenario>/` with `parameters/`,
and optional `setup`, `verify` and `volatile`; and the balls it requires, found beside it."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from disco.errors import DiscoError, UsageError
from disco.tree.modules import load_module
from disco.tree.names import check_name

PARTS = ("parameters", "setup", "verify", "volatile")


@dataclass(frozen=True)
class Volatile:
    """A glob of paths that change on every dance, and why."""

    glob: str
    reason: str

    def matches(self, path: str) -> bool:
        return fnmatch.fnmatchcase(path, self.glob)


@dataclass(frozen=True)
class Scenario:
    ball: str
    name: str
    path: Path
    volatile: tuple[Volatile, ...]
    dances: tuple[str, ...]  # the node's modules: the ball, and the balls beside it that
    # the scenario gives parameters to (users/... with the files ball: balls used together)
    modules: tuple[tuple[str, Path], ...]  # those and every module they bring, by name

    @property
    def parameters(self) -> Path:
        return self.path / "parameters"

    def script(self, name: str) -> Path | None:
        return self.path / name if (self.path / name).is_file() else None

    def volatile_reason(self, path: str) -> str | None:
        return next((v.reason for v in self.volatile if v.matches(path)), None)


@dataclass(frozen=True)
class Ball:
    name: str
    path: Path
    scenarios: tuple[Scenario, ...]


def find_balls(words: list[str], cwd: Path) -> list[Ball]:
    """The balls named (a path, or a name in `cwd`); none named: `cwd` if it is a ball with
    tests, else every ball under `cwd` that has tests."""
    if words:
        return [load_ball(locate(word, cwd)) for word in words]
    if (cwd / "tests").is_dir():
        return [load_ball(cwd)]
    found = sorted(d for d in cwd.iterdir() if d.is_dir() and (d / "tests").is_dir())
    if not found:
        raise UsageError(
            f"no ball with tests in {cwd}",
            "name a ball (a path, or a name in the current directory), or cd to the balls",
        )
    return [load_ball(d) for d in found]


def locate(word: str, cwd: Path) -> Path:
    path = Path(word) if "/" in word else cwd / word
    if not path.is_dir():
        where = "" if "/" in word else f" in {cwd}"
        raise UsageError(
            f"ball {word}: no such directory{where}",
            "give a ball's directory, or its name in the current directory",
        )
    return path.absolute()


def load_ball(path: Path) -> Ball:
    name = check_name(path.name, f"ball {path}: name")
    tests = path / "tests"
    if not tests.is_dir():
        raise DiscoError(
            f"ball {name}: no tests/ directory in {path}",
            "add a scenario: tests/NAME/parameters/ (DESIGN §16, README 'Testing a ball')",
        )
    names = sorted(d.name for d in tests.iterdir() if not d.name.startswith("."))
    if not names:
        raise DiscoError(f"ball {name}: {tests} holds no scenario", "add tests/NAME/parameters/")
    scenarios = tuple(load_scenario(name, path, tests / n) for n in names)
    return Ball(name, path, scenarios)


def load_scenario(ball: str, ball_path: Path, path: Path) -> Scenario:
    where = f"ball {ball}: scenario {path.name}"
    check_name(path.name, f"ball {ball}: scenario name")
    if not path.is_dir():
        raise DiscoError(f"{where}: {path} is not a directory", "a scenario is tests/NAME/")
    unknown = sorted(p.name for p in path.iterdir() if p.name not in PARTS)
    if unknown:
        raise DiscoError(
            f"{where}: unknown entry '{unknown[0]}' in {path}",
            "a scenario holds parameters/, setup, verify and volatile only",
        )
    # No parameters/ is none (git keeps no empty directory); anything else there is a mistake.
    if os.path.lexists(path / "parameters") and not (path / "parameters").is_dir():
        raise DiscoError(
            f"{where}: {path / 'parameters'} is not a directory",
            "make it a directory of the node's parameters, or remove it for none",
        )
    for name in ("setup", "verify", "volatile"):
        if (path / name).exists() and not (path / name).is_file():
            raise DiscoError(f"{where}: {path / name} is not a file", f"make {name} a file")
    volatile = path / "volatile"
    text = volatile.read_text(errors="replace") if volatile.is_file() else ""
    volatile_globs = parse_volatile(text, f"{where}: volatile")
    given = sorted(
        p.name
        for p in ((path / "parameters").iterdir() if (path / "parameters").is_dir() else ())
        if p.name != ball and p.is_dir() and (ball_path.parent / p.name).is_dir()
    )
    dances = (ball, *given)
    modules = requirements(ball_path.parent, dances)
    return Scenario(ball, path.name, path, volatile_globs, dances, modules)


def parse_volatile(text: str, where: str) -> tuple[Volatile, ...]:
    """`GLOB  # reason`, one a line; blank lines and lines of a comment alone are skipped."""
    found = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        glob, _, reason = line.partition("#")
        glob, reason = glob.strip(), reason.strip()
        if not reason:
            raise DiscoError(
                f"{where} line {number}: '{glob}' has no reason",
                "say why it changes on every dance: GLOB  # reason",
            )
        if not glob.startswith("/") or len(glob.split()) != 1:
            raise DiscoError(
                f"{where} line {number}: '{glob}' is not an absolute path glob",
                "write one glob a line as the node sees it, e.g. /var/lib/foo/*.stamp",
            )
        found.append(Volatile(glob, reason))
    return tuple(found)


def requirements(beside: Path, names: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    """The balls `names` and, transitively, the modules their `requires` name, each found
    in `beside`."""
    found: dict[str, Path] = {name: beside / name for name in names}
    todo = list(names)
    while todo:
        current = todo.pop()
        for req in load_module(found[current], current).requires:
            if req.name in found:
                continue
            if not (beside / req.name).is_dir():
                raise DiscoError(
                    f"ball {current}: requires {req.name} (line {req.line}), not found beside"
                    f" it: no {beside / req.name}",
                    f"put the {req.name} ball in {beside}",
                )
            found[req.name] = beside / req.name
            todo.append(req.name)
    return tuple(sorted(found.items()))
