"""The candidates on a node's server, and whether they touch this node (DESIGN §15).

`disco-server propose NAME DIR` publishes a tree under review as candidate NAME; a node's
key reads it through `[candidates]` (every candidate's modules, its own parameters only)
and writes its plan of it through the write-only `[plans]`, as `plans/NAME/NODE.json`.
After its dance a node lists the candidates, fetches each one's tree for itself (hard
links to its live copies for what did not change, so an unchanged module costs nothing),
and plans only those where its parameters or one of its modules differ. Over ssh only, as
the reports: a local directory or a plain rsync:// daemon has no area a node alone writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from disco.client.fetch import modules_map
from disco.client.state import Settings, State
from disco.client.transport import (
    Kind,
    Missing,
    Server,
    fetch_into,
    has_rsh,
    rpc,
    with_port,
    without_quiet,
)
from disco.errors import DiscoError
from disco.files import remove_tree, tree_digest, write_atomic
from disco.tree.modules import Module, load_module
from disco.tree.names import is_hidden, is_name
from disco.tree.order import first_level, next_level
from disco.tree.params import ParamStore

CANDIDATES = "candidates"  # the rsync modules, as disco-server writes them
PLANS = "plans"
MUNGED = "/rsyncd-munged/"  # how the server keeps a candidate's symlinks (rsync's prefix)
SETTING = ("disco", "client", "plan", "candidates")
OFF = ("false", "no", "off", "0")


def enabled(store: ParamStore) -> bool:
    """disco/client/plan/candidates: plan the server's candidates after a dance (default)."""
    value = (store.lookup(SETTING, "") or "").strip().lower()
    if value and value not in (*OFF, "true", "yes", "on", "1"):
        where = "/".join(SETTING)
        raise DiscoError(
            f"{where} is {value!r}, not true or false",
            f"set it with 'echo false | disco-param set {where}' (or true, the default)",
        )
    return value not in OFF


def open_candidates(settings: Settings, server: Server) -> dict[str, str]:
    """The candidates `server` shows this node's key, each with the time it was proposed:
    none from a server without them."""
    if server.kind is not Kind.SSH:
        return {}
    rsync = with_port(without_quiet(settings.rsync), server.port)  # -q hides the list
    argv = [*rsync, "--list-only", "--no-recursive", "--dirs"]
    argv += [] if has_rsh(rsync) else ["--rsh=ssh"]
    try:
        listed = rpc([*argv, f"{server.base}{CANDIDATES}/"], server)
    except Missing:  # a server older than candidates, or set up by hand: none
        return {}
    names = {}
    for line in listed.splitlines():  # `drwxr-x---  4,096 2026/12/06 21:00:00 NAME`
        words = line.split(None, 4)
        if len(words) == 5 and words[0].startswith("d") and is_name(words[4]):
            names[words[4]] = f"{words[2]} {words[3]}"
    return dict(sorted(names.items()))


def digest(path: Path) -> str:
    """A hash of a tree as a node gets it (its symlinks as they were, not munged)."""
    return tree_digest(path, MUNGED)


Loaded = dict[tuple[str, str], "Module | None"]  # (tree, module name): None if it lacks it


def closure(tree: Path, node: str, loaded: Loaded | None = None) -> dict[str, Module]:
    """The modules `node` dances from server tree `tree` (its modules map and all they
    require, transitively); a module the tree lacks is left out: the dance names it.
    `loaded`: modules read already (a fleet's nodes share most)."""
    loaded = {} if loaded is None else loaded
    where = tree / "parameters" / node / "modules"
    roots = (
        [n for n in os.listdir(where) if not is_hidden(n) and is_name(n)] if where.is_dir() else []
    )
    found: dict[str, Module] = {}
    level = first_level(roots)
    top = str(tree)
    while level:
        for name in level:
            if (top, name) not in loaded:
                path = tree / "modules" / name
                loaded[top, name] = load_module(path, name) if path.is_dir() else None
            found[name] = loaded[top, name] or Module(name, tree / "modules" / name, ())
        level = next_level(level, found)
    return {name: m for name, m in found.items() if loaded[top, name] is not None}


def difference(
    live: Path,
    candidate: Path,
    node: str,
    hash_of: Callable[[Path], str] = digest,
    loaded: Loaded | None = None,
) -> str:
    """How `node`'s dance of server tree `candidate` differs from its dance of `live`
    (its parameters, its modules); "" if it does not. `hash_of` (`digest`, or one that
    remembers) and `loaded` (modules read) serve a whole fleet."""
    mine = Path("parameters") / node
    if not (candidate / mine).is_dir():
        return "not in the candidate (no parameters there)"
    if not (live / mine).is_dir():
        return "new in the candidate"
    why = ["its parameters differ"] if hash_of(live / mine) != hash_of(candidate / mine) else []
    try:
        before, after = closure(live, node, loaded), closure(candidate, node, loaded)
    except DiscoError as e:
        return "; ".join([*why, f"a module cannot be read ({e.message})"])
    added = sorted(set(after) - set(before))
    dropped = sorted(set(before) - set(after))
    changed = [
        name
        for name in sorted(set(before) & set(after))
        if hash_of(before[name].path) != hash_of(after[name].path)
    ]
    why += (
        [f"module {' '.join(changed)} differ{'s' if len(changed) == 1 else ''}"] if changed else []
    )
    why += [f"adds module {' '.join(added)}"] if added else []
    why += [f"drops module {' '.join(dropped)}"] if dropped else []
    return "; ".join(why)


@dataclass(frozen=True)
class Fetched:
    name: str
    tree: Path  # the candidate as this node sees it: a local server tree
    affects: str  # how it differs for this node; "" if it does not


def fetch_candidate(
    state: State, node: str, settings: Settings, server: Server, name: str, dest: Path
) -> Fetched:
    """Candidate `name`'s tree for `node` (its parameters, its modules) into `dest`, laid
    out as a server directory, each part hard-linked to the live copy where unchanged."""
    base = f"{server.base}{CANDIDATES}/{name}/"
    params = dest / "parameters" / node
    # By content: a file of the same size and time as ours (a line changed in the same
    # second) would be taken for ours, and the candidate for one that changes nothing.
    rsync = (*settings.rsync, "--checksum")
    try:
        fetch_into(rsync, server, [f"{base}parameters/{node}/"], params,
                   state.parameters / node)  # fmt: skip
    except Missing:
        (dest / "parameters").mkdir(parents=True, exist_ok=True)
        return Fetched(name, dest, difference(state.root, dest, node))
    found: dict[str, Module] = {}
    level = first_level(modules_map(params, node, server))
    while level:
        # One rsync a level: every module lands in modules/<its name>, linked to ours.
        sources = [f"{base}modules/{m}" for m in sorted(level)]
        try:
            fetch_into(rsync, server, sources, dest / "modules", state.modules)
        except Missing:  # which one: the plan names it, as a dance would
            pass
        for m in level:
            path = dest / "modules" / m
            found[m] = load_module(path, m) if path.is_dir() else Module(m, path, ())
        level = next_level(level, found)
    return Fetched(name, dest, difference(state.root, dest, node))


def push_plan(
    settings: Settings, server: Server, name: str, node: str, document: Path
) -> DiscoError | None:
    """Upload `document` as plans/NAME/NODE.json; what went wrong, or None."""
    rsync = with_port(settings.rsync, server.port)
    argv = [*rsync, "--no-owner", "--no-group", "--no-links"]
    argv += [] if has_rsh(rsync) else ["--rsh=ssh"]
    argv += [str(document), f"{server.base}{PLANS}/{name}/{node}.json"]
    try:
        rpc(argv, server)
    except DiscoError as e:
        return DiscoError(
            f"could not push the plan of candidate {name} to {server.uri}: {e.message}",
            "on the server, run 'disco-server sync' (a node set up before candidates has no"
            f" [{PLANS}] area), or check that candidate {name} is still open",
        )
    return None


@dataclass(frozen=True)
class Reviewed:
    """One candidate as this node's dance left it."""

    name: str
    affects: str  # how it changes this node's dance; "" if it does not (nothing planned)
    pushed: bool  # its plan is on the server, as plans/NAME/NODE.json
    problem: DiscoError | None  # why it could not be planned or pushed
    again: bool = True  # planned by this dance; False: pushed before, neither tree changed


Planner = Callable[[str, Path], dict[str, Any]]  # (candidate, its tree) -> plan document


def review(
    state: State, node: str, settings: Settings, server: Server, plan: Planner
) -> Iterator[Reviewed]:
    """Plan each open candidate of `server` that affects `node` with `plan`, and push the
    plan; one Reviewed a candidate, as it is done. Nothing here fails the dance: what
    goes wrong is said in its Reviewed."""
    try:
        names = open_candidates(settings, server)
    except DiscoError as e:
        yield Reviewed("*", "", False, DiscoError(f"cannot list the candidates: {e.message}"))
        return
    forget(state, set(names))
    for left in state.root.glob(".candidate-*"):  # of a dance killed while it planned
        remove_tree(left)
    for name, proposed in names.items():
        work = Path(tempfile.mkdtemp(prefix=".candidate-", dir=state.root))
        affects = ""
        try:
            fetched = fetch_candidate(state, node, settings, server, name, work / "tree")
            affects = fetched.affects
            if not affects:
                yield Reviewed(name, "", False, None)
                continue
            if not (fetched.tree / "parameters" / node).is_dir():
                gone = f"node '{node}' is not in it: merged, it leaves this node no parameters"
                yield Reviewed(name, affects, False, DiscoError(gone))
                continue
            key = memo_key(state.root, fetched.tree, node, proposed)
            if recalled(state, name) == key:
                yield Reviewed(name, affects, True, None, again=False)
                continue
            document = work / f"{name}.json"
            text = json.dumps(plan(name, fetched.tree), indent=2, sort_keys=True) + "\n"
            document.write_text(text, errors="surrogateescape")
            problem = push_plan(settings, server, name, node, document)
            if problem is None:
                remember(state, name, key)
            yield Reviewed(name, affects, problem is None, problem)
        except DiscoError as e:
            yield Reviewed(name, affects, False, e)
        except OSError as e:
            yield Reviewed(name, affects, False, DiscoError(f"{e.filename}: {e.strerror}"))
        finally:
            remove_tree(work)


# A plan is made again only when a tree changed, or a day after the last: a node plans a
# candidate once, not at every dance, and its plan stays fresh all the same.
MEMO = "candidates"  # STATE/candidates/NAME: the trees of the last plan pushed of NAME
REFRESH = 24 * 3600.0  # seconds


def memo_key(live: Path, candidate: Path, node: str, proposed: str) -> str:
    """The node's two trees (its parameters and modules in each) and when the candidate
    was proposed (a candidate replaced by the same tree has lost its plans)."""
    h = hashlib.sha256(f"{proposed}\n".encode())
    for tree in (live, candidate):
        h.update(digest(tree / "parameters" / node).encode())
        for name, module in sorted(closure(tree, node).items()):
            h.update(f"{name} {digest(module.path)}\n".encode())
    return h.hexdigest()


def recalled(state: State, name: str) -> str:
    """The key of the last plan of `name` pushed, if recent enough; "" if none."""
    memo = state.root / MEMO / name
    try:
        if time.time() - memo.stat().st_mtime < REFRESH:
            return memo.read_text().strip()
    except OSError:
        pass
    return ""


def remember(state: State, name: str, key: str) -> None:
    (state.root / MEMO).mkdir(mode=0o700, exist_ok=True)
    write_atomic(state.root / MEMO / name, f"{key}\n".encode(), 0o600)


def forget(state: State, open_names: set[str]) -> None:
    """Drop what is remembered of candidates no longer open."""
    where = state.root / MEMO
    for name in os.listdir(where) if where.is_dir() else ():
        if name not in open_names:
            with contextlib.suppress(OSError):
                os.unlink(where / name)
