"""Fetch what a node needs and plan its dance (DESIGN §5, §6 steps 1-2).

Everything lands in a staging directory first; only when the node's parameters and
every module are in does it replace the local copies, so a failed fetch leaves the
last good copy as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from disco.client.state import Settings, State
from disco.client.transport import (
    Kind,
    Missing,
    Server,
    changed_trees,
    close_shared,
    fetch_into,
    sharing,
)
from disco.errors import DiscoError
from disco.files import recover_swap, remove_tree, swap_in
from disco.tree.modules import Module, check_module_name, load_module
from disco.tree.names import is_hidden, is_name
from disco.tree.order import first_level, next_level, order


@dataclass(frozen=True)
class Plan:
    node: str
    server: Server
    modules: tuple[Module, ...]  # in dance order
    passed_over: tuple[DiscoError, ...] = ()  # servers tried first that did not answer

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(module.name for module in self.modules)


class Lost(DiscoError):
    """The server that gave the node's parameters stopped answering during the fetch."""

    def __init__(self, error: DiscoError, server: Server, passed_over: tuple[DiscoError, ...]):
        super().__init__(error.message, error.hint, error.status)
        self.server = server
        self.passed_over = passed_over


class NotOnServer(DiscoError):
    """A module the dance needs is not on the server that answered."""


def fetch(state: State, node: str, settings: Settings) -> Plan:
    """Fetch the node's parameters and its modules, and put them in dance order.

    A server that dies in the middle of the fetch is passed over like one that did not
    answer at all: the fetch starts again from the next server of the list."""
    recover(state, node)
    servers = settings.servers
    passed: tuple[DiscoError, ...] = ()
    while True:
        try:
            plan = fetch_from(state, node, replace(settings, servers=servers))
            return replace(plan, passed_over=(*passed, *plan.passed_over))
        except Lost as e:
            servers = servers[servers.index(e.server) + 1 :]
            passed = (*passed, *e.passed_over, DiscoError(e.message, e.hint))


def fetch_from(state: State, node: str, settings: Settings) -> Plan:
    staging = state.staging
    if staging.exists():
        remove_tree(staging)
    with one_connection(state, settings) as settings, ExitStack() as cleanup:
        cleanup.callback(lambda: remove_tree(staging) if staging.exists() else None)
        server, passed_over = fetch_parameters(state, node, settings)
        level = first_level(modules_map(staging / "parameters" / node, node, server))
        if server.kind is Kind.LOCAL:
            # The server is a directory: read its requires files where they are, ask
            # rsync which modules differ from our copies, and fetch those in one go.
            wanted = read_local(server, level)
            sources = [server.module(name).rstrip("/") for name in sorted(wanted)]
            changed = changed_trees(settings.rsync, server, sources, state.modules)
            fetch_modules(state, settings, server, dict.fromkeys(sorted(changed), ""))
        else:
            try:
                wanted = fetch_remote(state, settings, server, level)
            except NotOnServer:
                raise
            except DiscoError as e:
                if server is settings.servers[-1]:
                    raise
                raise Lost(e, server, passed_over) from None
            changed = set(wanted)
        modules = {
            name: load_module((staging if name in changed else state.root) / "modules" / name, name)
            for name in wanted
        }
        names = order(modules)
        swap_in(staging / "parameters" / node, state.parameters / node)
        for name in sorted(changed):
            swap_in(staging / "modules" / name, state.modules / name)
        prune(state, set(wanted))
    modules_in_order = tuple(load_module(state.modules / name, name) for name in names)
    return Plan(node, server, modules_in_order, passed_over)


PARALLEL = 8  # module fetches at once over one shared connection (sshd allows 10)


@contextmanager
def one_connection(state: State, settings: Settings) -> Iterator[Settings]:
    """The settings with an rsync whose ssh shares one connection per server for this
    fetch (the control socket in a private directory of the state), closed afterwards.
    Inside another one_connection it changes nothing: the outer one (the whole dance,
    whose report is pushed at the end) owns the connection."""
    ssh = [server for server in settings.servers if server.kind is Kind.SSH]
    if not ssh or settings.shared:
        yield settings
        return
    control, private = state.root / "ssh", None
    if len(str(control)) > 60:  # a socket's path must fit in ~107 bytes; %C takes 40
        control = private = Path(tempfile.mkdtemp(prefix="disco-ssh-"))
    control.mkdir(mode=0o700, exist_ok=True)
    shared = replace(settings, rsync=sharing(settings.rsync, control), shared=True)
    try:
        yield shared
    finally:
        if any(control.iterdir()):
            for server in ssh:
                close_shared(shared.rsync, server)
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
        else:  # made for this fetch: a refused dance leaves the state as it found it
            with contextlib.suppress(OSError):
                control.rmdir()


def fetch_parameters(
    state: State, node: str, settings: Settings
) -> tuple[Server, tuple[DiscoError, ...]]:
    """Fetch the node's tree from the first server that has it (failover)."""
    dest = state.staging / "parameters" / node
    failures: list[DiscoError] = []
    for server in settings.servers:
        try:
            fetch_into(
                settings.rsync, server, [server.parameters(node)], dest, state.parameters / node
            )
            return server, tuple(failures)
        except Missing:
            where = f"no parameters/{node}/ there"
            hint = f"add parameters/{node}/ to the server, or name the node with --node"
            if server.kind is not Kind.LOCAL:
                # A key confined to another node gets the same answer as a missing node.
                where += ", or none for this node's key"
                hint += (
                    "; if it is there, give this node's key access on the server:"
                    f" disco-server add-node {node} KEY.pub"
                )
            failures.append(
                DiscoError(f"node '{node}' is not on server {server.uri} ({where})", hint)
            )
        except DiscoError as e:
            hint = e.hint or "check disco/server/uri (or --server) and that the server is up"
            failures.append(DiscoError(e.message, hint))
        if dest.exists():
            remove_tree(dest)
    if len(failures) == 1:
        raise failures[0]
    raise DiscoError(
        f"no server could give node '{node}': " + "; ".join(f.message for f in failures),
        "check disco/server/uri (or --server) and that a server is up",
    )


def modules_map(tree: Path, node: str, server: Server) -> list[str]:
    """The module names of the node's `modules` map, one entry per module.

    Hidden files (a `.gitkeep`, an editor's swap file) are not modules; any other name
    that is not a module name (`..evil`, `-rf`) is an error naming the file to fix.
    """
    where = tree / "modules"
    if not where.is_dir():
        raise DiscoError(
            f"node '{node}' has no modules map on server {server.uri}",
            f"create parameters/{node}/modules/ there, with one empty file per module",
        )
    names = sorted(name for name in os.listdir(where) if not is_hidden(name))
    for name in names:
        try:
            check_module_name(name, f"node '{node}' modules map: module name")
        except DiscoError as e:
            raise DiscoError(
                f"{e.message}, on server {server.uri}",
                f"rename or remove parameters/{node}/modules/{name} there ({e.hint})",
            ) from None
    return names


def read_local(server: Server, level: dict[str, str]) -> dict[str, Module]:
    """The modules of `level` {name: who wants it} and every module they require,
    transitively, read where the server keeps them."""
    found: dict[str, Module] = {}
    while level:
        for name, wanted_by in level.items():
            path = Path(server.base) / "modules" / name
            if not path.is_dir():
                raise not_on_server(name, wanted_by, server)
            found[name] = load_module(path, name)
        level = next_level(level, found)
    return found


def fetch_remote(
    state: State, settings: Settings, server: Server, level: dict[str, str]
) -> dict[str, Module]:
    """The modules of `level` and every module they require, fetched into staging a
    level at a time (one transfer for many modules)."""
    found: dict[str, Module] = {}
    while level:
        found.update(fetch_modules(state, settings, server, level))
        level = next_level(level, found)
    return found


def fetch_modules(
    state: State, settings: Settings, server: Server, level: dict[str, str]
) -> dict[str, Module]:
    """Fetch modules {name: who wants it} into staging, all in one rsync."""
    dest = state.staging / "modules"
    names = sorted(level)
    if not names:
        return {}
    if server.kind is not Kind.LOCAL:
        # A daemon serves one module per rsync: fetch them side by side, each its own
        # session over the one shared connection.
        def one(name: str) -> None:
            fetch_into(
                settings.rsync, server, [server.module(name)], dest / name, state.modules / name
            )

        from concurrent.futures import ThreadPoolExecutor  # remote servers only: 0.5 MB

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            done = {name: pool.submit(one, name) for name in names}
        for name in names:
            try:
                done[name].result()
            except Missing:
                raise not_on_server(name, level[name], server) from None
        return {name: load_module(dest / name, name) for name in names}
    # No trailing '/': each module lands in a directory of its own name.
    sources = [server.module(name).rstrip("/") for name in names]
    try:
        fetch_into(settings.rsync, server, sources, dest, state.modules)
    except Missing:
        for name in names:  # which one? ask for each alone
            try:
                fetch_into(settings.rsync, server, [server.module(name)], dest / name, None)
            except Missing:
                raise not_on_server(name, level[name], server) from None
        raise
    return {name: load_module(dest / name, name) for name in names}


def not_on_server(name: str, wanted_by: str, server: Server) -> DiscoError:
    return NotOnServer(
        f"module '{name}', required by {wanted_by}, is not on server {server.uri}",
        f"add modules/{name}/ to the server, or remove the requirement"
        if server.kind is Kind.LOCAL
        else f"add modules/{name}/ to the server and run 'disco-server sync' there (it"
        f" writes the [{name}] entry of rsyncd.conf), or remove the requirement",
    )


def prune(state: State, wanted: set[str]) -> None:
    """Remove local copies of modules that are no longer in the dance."""
    for name in os.listdir(state.modules):
        if name not in wanted and is_name(name):
            remove_tree(state.modules / name)


def recover(state: State, node: str) -> None:
    """Put back a local copy that a crash left half-swapped."""
    recover_swap(state.parameters / node)
    if state.modules.is_dir():
        for entry in os.listdir(state.modules):
            if entry.startswith(".~") and entry.endswith(".old"):
                recover_swap(state.modules / entry[2:-4])
