"""`disco lint`: a server tree checked without root and without a node. Every problem of
every kind in one run: shellcheck, parameters read but absent, requires cycles and
missing modules, bad names, files/ entries a node could not write."""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from disco.balltest.results import Check, Status
from disco.errors import DiscoError, UsageError
from disco.run import run
from disco.tree.modules import Module, Requirement, parse_requires
from disco.tree.names import check_name, split_path
from disco.tree.order import cycles
from disco.tree.params import Tree, merge, read_tree, walk

SUITE = "lint"
# `disco-param get` of a literal path; the node written as $(hostname) or $DISCO_NODE.
GET = re.compile(r"disco-param\s+get\s+([^\s;|&]+)")
NODE_PREFIX = re.compile(r"^(\$\(hostname\)|\$\{?DISCO_NODE\}?)/")
UNWRITABLE = ("proc", "sys", "dev", "run", "tmp")  # a dance's own mounts or scratch there


@dataclass(frozen=True)
class Linted:
    checks: tuple[Check, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Tree_:
    """The server tree as lint reads it: modules by name, nodes and their module lists."""

    top: Path
    modules: dict[str, Module]
    nodes: dict[str, tuple[str, ...]]


def lint(top: Path) -> Linted:
    if not (top / "modules").is_dir() and not (top / "parameters").is_dir():
        raise UsageError(
            f"{top} is not a server tree: no modules/ and no parameters/",
            "give the server's directory (disco-server init makes one)",
        )
    checks: list[Check] = []
    tree = read(top, checks)
    notes: list[str] = []
    checks += shellcheck(tree, notes)
    checks += requires(tree)
    checks += parameters(tree)
    checks += files(tree)
    return Linted(tuple(checks), tuple(notes))


def fail(group: str, name: str, message: str, details: str = "") -> Check:
    return Check(SUITE, group, name, Status.FAILED, message, details)


def ok(group: str, name: str, message: str = "") -> Check:
    return Check(SUITE, group, name, Status.PASSED, message)


def read(top: Path, checks: list[Check]) -> Tree_:
    """Modules and nodes, their names checked: a bad one is a failure, and left out."""
    modules: dict[str, Module] = {}
    folder = top / "modules"
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        name = f"module {path.name}"
        if not path.is_dir():
            checks.append(
                fail(
                    "names",
                    name,
                    f"modules/{path.name} is not a directory",
                    "a module is a directory: remove the file or make it one",
                )
            )
            continue
        try:
            check_name(path.name, "module name")
            text = (path / "requires").read_text(errors="replace")
            reqs = parse_requires(text, path.name) if (path / "requires").is_file() else ()
        except FileNotFoundError:
            reqs = ()
        except DiscoError as e:
            checks.append(fail("names", name, e.message, e.hint))
            continue
        modules[path.name] = Module(path.name, path, reqs)
        checks.append(ok("names", name))
    nodes: dict[str, tuple[str, ...]] = {}
    folder = top / "parameters"
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            check_name(path.name, "node name")
            listed = path / "modules"
            names = sorted(p.name for p in listed.iterdir()) if listed.is_dir() else []
            for module in names:
                check_name(module, f"node {path.name}: modules/ entry")
            for key, _ in walk(read_tree(path / "parameters")):
                split_path("/".join(key))
        except DiscoError as e:
            checks.append(fail("names", f"node {path.name}", e.message, e.hint))
            continue
        nodes[path.name] = tuple(names)
        checks.append(ok("names", f"node {path.name}"))
    return Tree_(top, modules, nodes)


def scripts(module: Module) -> list[Path]:
    """Every script and template of a module: bash, run by the dance."""
    found = []
    for part in ("scripts", "templates"):
        for dirpath, _, filenames in os.walk(module.path / part):
            found += [Path(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    return sorted(found)


def shellcheck(tree: Tree_, notes: list[str]) -> list[Check]:
    found = [(m, p) for m in tree.modules.values() for p in scripts(m)]
    if shutil.which("shellcheck") is None:
        if found:
            notes.append(
                f"shellcheck is not installed: {len(found)} script(s) and template(s)"
                " not checked (apt-get install shellcheck)"
            )
        return [
            Check(
                SUITE,
                "shellcheck",
                f"{m.name}/{p.relative_to(m.path)}",
                Status.SKIPPED,
                "shellcheck is not installed",
            )
            for m, p in found
        ]
    checks = []
    for module, path in found:
        name = f"{module.name}/{path.relative_to(module.path)}"
        # A script without #! runs under bash (DESIGN §6): say so, not sh.
        said = run(["shellcheck", "--shell=bash", "--format=gcc", "--", str(path)], check=False)
        text = said.stdout.decode(errors="replace").strip()
        if said.returncode == 0:
            checks.append(ok("shellcheck", name))
        else:
            lines = text.splitlines() or [said.stderr.decode(errors="replace").strip()]
            checks.append(fail("shellcheck", name, f"{len(lines)} finding(s)", text))
    return checks


def requires(tree: Tree_) -> list[Check]:
    """Every module named but missing, with who names it; every cycle."""
    checks = []
    wanted: dict[str, list[str]] = {}
    for node, names in tree.nodes.items():
        for name in names:
            wanted.setdefault(name, []).append(f"node {node}")
    for module in tree.modules.values():
        for req in module.requires:
            wanted.setdefault(req.name, []).append(
                f"module {module.name} (requires line {req.line})"
            )
    for name in sorted(wanted):
        if name not in tree.modules:
            who = ", ".join(wanted[name])
            checks.append(
                fail(
                    "requires",
                    f"missing {name}",
                    f"module {name} is missing: named by {who}",
                    f"add modules/{name}, or stop naming it",
                )
            )
    present = {n: Module(m.name, m.path, known(m.requires, tree)) for n, m in tree.modules.items()}
    for cycle in cycles(present):
        text = " -> ".join([*cycle, cycle[0]])
        checks.append(
            fail(
                "requires",
                f"cycle {' '.join(cycle)}",
                f"requires cycle: {text}",
                "remove one of its requires lines",
            )
        )
    if not any(c.status is Status.FAILED for c in checks):
        checks.append(ok("requires", "order", f"{len(tree.modules)} module(s), no cycle"))
    return checks


def known(reqs: tuple[Requirement, ...], tree: Tree_) -> tuple[Requirement, ...]:
    return tuple(r for r in reqs if r.name in tree.modules)


def closure(tree: Tree_, names: tuple[str, ...]) -> list[str]:
    """The modules a node dances: its own, and what they pull in (after and before)."""
    seen: list[str] = []
    todo = [n for n in names if n in tree.modules]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        todo += [r.name for r in tree.modules[name].requires if r.name in tree.modules]
    return sorted(seen)


def parameters(tree: Tree_) -> list[Check]:
    """Every literal `disco-param get NODE/...` of a script or template, present for every
    node that dances its module (the modules' defaults merged under the node's own)."""
    reads: dict[str, list[tuple[Path, int, str]]] = {}
    for module in tree.modules.values():
        for path in scripts(module):
            lines = path.read_text(errors="replace").splitlines()
            for number, line in enumerate(lines, start=1):
                for match in GET.finditer(line):
                    optional = "||" in line[match.end() :] or line.lstrip().startswith("if ")
                    wanted = unquote(match.group(1))
                    if optional or not NODE_PREFIX.match(wanted):
                        continue
                    rest = NODE_PREFIX.sub("", wanted)
                    if "$" in rest or "`" in rest:
                        continue  # a path computed at run time: not known here
                    reads.setdefault(module.name, []).append((path, number, rest))
    checks = []
    for node, names in tree.nodes.items():
        dancing = closure(tree, names)
        merged = node_tree(tree, node, dancing)
        missing = []
        for name in dancing:
            for path, number, rest in reads.get(name, []):
                if rest == "current_module" or lookup(merged, rest.split("/")) is not None:
                    continue
                where = f"{name}/{path.relative_to(tree.modules[name].path)}:{number}"
                missing.append(f"{where}: disco-param get NODE/{rest}")
        if missing:
            checks.append(
                fail(
                    "parameters",
                    f"node {node}",
                    f"{len(missing)} parameter(s) read but not set for {node}",
                    "\n".join(missing),
                )
            )
        else:
            checks.append(ok("parameters", f"node {node}"))
    return checks


def unquote(word: str) -> str:
    """A shell word as written in `$(disco-param get "X")`: its quotes and the `)` that
    closes the substitution around it taken off."""
    word = word.replace('"', "").replace("'", "")
    while word.endswith(")") and word.count(")") > word.count("("):
        word = word[:-1]
    return word


def node_tree(tree: Tree_, node: str, modules: list[str]) -> Tree:
    """What `NODE/...` holds for a dance: `parameters/` merged as the dance merges it."""
    layers: list[Tree] = [tree.modules[m].defaults() for m in modules]
    layers.append(read_tree(tree.top / "parameters" / node / "parameters"))
    return {"parameters": merge(layers)}


def lookup(tree: Tree, path: list[str]) -> object:
    here: object = tree
    for segment in path:
        if not isinstance(here, dict) or segment not in here:
            return None
        here = here[segment]
    return here


def files(tree: Tree_) -> list[Check]:
    """files/ entries a node could not get: unreadable to the server's rsync, owned by
    someone else (rsync gives the node the same owner), special files, or under a path
    the dance does not write (/proc, /tmp, ...)."""
    checks = []
    for module in tree.modules.values():
        top = module.path / "files"
        if not top.is_dir():
            continue
        problems = []
        for dirpath, dirnames, filenames in os.walk(top):
            for name in sorted(dirnames + filenames):
                path = Path(dirpath, name)
                rel = "/" + str(path.relative_to(top))
                problems += entry_problems(path, rel)
        if problems:
            checks.append(
                fail(
                    "files",
                    module.name,
                    f"{len(problems)} files/ entr(ies) a node could not write as meant",
                    "\n".join(problems),
                )
            )
        else:
            checks.append(ok("files", module.name))
    return checks


def entry_problems(path: Path, rel: str) -> list[str]:
    st = path.lstat()
    said = []
    if rel.split("/")[1] in UNWRITABLE:
        said.append(f"{rel}: under /{rel.split('/')[1]}, which a dance does not write")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        said.append(f"{rel}: a special file (fifo, socket or device): rsync does not send it")
    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o500 != 0o500:
        said.append(
            f"{rel}: directory mode {oct(st.st_mode & 0o7777)}: its owner cannot list"
            " it (chmod u+rx)"
        )
    elif stat.S_ISREG(st.st_mode) and not st.st_mode & 0o400:
        said.append(f"{rel}: mode {oct(st.st_mode & 0o7777)}: its owner cannot read it (chmod u+r)")
    if not stat.S_ISLNK(st.st_mode) and (st.st_uid != 0 or st.st_gid != 0):
        said.append(
            f"{rel}: owned by {st.st_uid}:{st.st_gid}: the node's file gets that owner"
            " (chown root:root, or set the owner in a script)"
        )
    return said
