"""Candidates: trees under review beside the live one (DESIGN §15).

`propose NAME DIR` copies DIR's parameters/ and modules/ (a checkout of a pull request;
nothing else of it, not its .git) to candidates/NAME/, and makes plans/NAME/, where each
node's key may put its plan of it (server.plans_section). The copy is taken whole first,
beside, then renamed into place: a node never sees half a candidate, and the checkout may
change afterwards without changing what the nodes plan. `withdraw NAME` removes both.
"""

from __future__ import annotations

import functools
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from disco.client.candidates import MUNGED, Loaded, difference, digest
from disco.errors import CommandError, DiscoError, UsageError
from disco.files import remove_tree
from disco.run import run
from disco.server.server import CANDIDATES, PARAMETERS, PLANS, Problem, listing, tree_problems
from disco.tree.names import check_name

TREE = (PARAMETERS, "modules")


@dataclass(frozen=True)
class Proposed:
    name: str
    path: Path  # candidates/NAME on the server
    replaced: bool  # an older NAME (and its plans) was replaced
    problems: tuple[Problem, ...]  # what `check` would say of the candidate's tree


def candidate_name(name: str) -> str:
    return check_name(name, "candidate name")


def open_names(root: Path) -> list[str]:
    """The candidates of the server at `root`, by name."""
    return [n for n in listing(root / CANDIDATES)]


def unknown(root: Path, name: str) -> DiscoError:
    names = open_names(root)
    return DiscoError(
        f"no candidate '{name}' on server {root}",
        f"open candidates: {' '.join(names)}" if names else "none is open: propose one first",
    )


def check_source(source: Path) -> Path:
    """DIR of `propose`: a server tree, with parameters/ and modules/."""
    if not source.is_dir():
        what = "does not exist" if not os.path.lexists(source) else "is not a directory"
        raise UsageError(
            f"candidate directory {source} {what}", "give a checkout of the server tree"
        )
    for part in TREE:
        if not (source / part).is_dir():
            raise UsageError(
                f"{source} is not a disco server tree: it has no {part}/",
                "give the directory that holds parameters/ and modules/ (the checkout's top)",
            )
    return source.absolute()


def propose(root: Path, name: str, source: Path, replace: bool) -> Proposed:
    """Publish `source` as candidate `name` of the server at `root`."""
    candidate_name(name)
    source = check_source(source)
    target = root / CANDIDATES / name
    if target.exists() and not replace:
        raise DiscoError(
            f"candidate '{name}' is already proposed on server {root}",
            f"replace it (its plans are dropped): disco-server propose --replace {name}"
            f" {shlex.quote(str(source))}; or 'disco-server withdraw {name}' first",
        )
    problems = tuple(tree_problems(source))
    new, old = root / f".{CANDIDATES}.{name}.new", root / f".{CANDIDATES}.{name}.old"
    for leftover in (new, old):  # of a propose cut short
        if os.path.lexists(leftover):
            remove_tree(leftover)
    try:
        (root / CANDIDATES).mkdir(mode=0o750, exist_ok=True)
        (root / PLANS).mkdir(mode=0o750, exist_ok=True)
        new.mkdir(mode=0o750)
        # -a without owners: the server's user owns the copy, as it owns the live tree.
        # Each part by its content ('/'): a symlinked parameters/ becomes a directory.
        for part in TREE:
            run(["rsync", "-rlptD", "--delete", f"{source}/{part}/", f"{new}/{part}/"])
        munge(new)
        replaced = target.exists()
        if replaced:
            os.rename(target, old)
        os.rename(new, target)
        plans = root / PLANS / name
        if replaced and plans.exists():
            remove_tree(plans)  # plans of the tree it replaces: stale
        plans.mkdir(mode=0o750, exist_ok=True)
        if os.path.lexists(old):
            remove_tree(old)
    except CommandError as e:
        raise DiscoError(
            f"cannot copy {source} to {target}: {e.stderr.strip() or e.returncode}",
            "check that the server's user can read DIR",
        ) from None
    except OSError as e:
        raise DiscoError(
            f"cannot publish candidate {name}: {e.filename}: {e.strerror}", "check the server"
        ) from None
    return Proposed(name, target, replaced, problems)


def munge(tree: Path) -> None:
    """Every symlink under `tree` made to point into /rsyncd-munged/, as an rsync daemon
    with `munge symlinks` stores them: the daemon sends them back as they were, and never
    follows one (a link into candidates/NAME/parameters/OTHER/ would lead a node's key
    there, past the daemon filter, which reads names, not where links lead)."""
    for top, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            if os.path.islink(path):
                beside = os.path.join(top, f".{name}.munged")
                os.symlink(MUNGED + os.readlink(path), beside)
                os.rename(beside, path)


def withdraw(root: Path, name: str) -> None:
    """Remove candidate `name` and its plans."""
    candidate_name(name)
    target = root / CANDIDATES / name
    if not target.is_dir():
        raise unknown(root, name)
    try:
        gone = root / f".{CANDIDATES}.{name}.old"
        if os.path.lexists(gone):
            remove_tree(gone)
        os.rename(target, gone)  # at once: no node fetches half of it
        remove_tree(gone)
        if (root / PLANS / name).exists():
            remove_tree(root / PLANS / name)
    except OSError as e:
        raise DiscoError(
            f"cannot withdraw candidate {name}: {e.filename}: {e.strerror}", "check the server"
        ) from None


@dataclass(frozen=True)
class Reach:
    """Whether a candidate changes a node's dance, and how."""

    node: str
    affects: str  # how its dance differs; "" if it does not


def reach(root: Path, name: str) -> list[Reach]:
    """Every node of the live tree or of candidate `name`, and what the candidate
    changes for it (its parameters, its modules)."""
    candidate = root / CANDIDATES / name
    if not candidate.is_dir():
        raise unknown(root, name)
    nodes = sorted(set(listing(root / PARAMETERS)) | set(listing(candidate / PARAMETERS)))
    hash_of = functools.lru_cache(maxsize=None)(digest)  # each module once, not once a node
    loaded: Loaded = {}
    return [Reach(node, difference(root, candidate, node, hash_of, loaded)) for node in nodes]
