"""What a step sees and runs with: its environment, the merged parameters at
/var/disco/parameters, the command a script runs as, and disco's state kept out of
sight (DESIGN §3, §7)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from disco.client.state import State
from disco.client.transport import Server
from disco.engine.sandbox import Bind
from disco.errors import DiscoError
from disco.noop.view import SANDBOX_PATH, View, real_binds
from disco.quoting import quote
from disco.tree.modules import Module
from disco.tree.params import NotAParameter, Tree, encode, node_view, read_tree

VIEW_AT = "/var/disco"


def set_current_module(view: View, node: str, module: str) -> None:
    """The merged parameters are written once a dance; a module changes only
    `<node>/current_module`, renamed into place so a reader sees the old or the new."""
    current = view.parameters / node / "current_module"
    new = current.with_name(".current_module")
    new.write_bytes(encode(module))
    os.replace(new, current)


def step_env(node: str, noop: bool, intercept: bool) -> dict[str, str]:
    """The environment of a step: a clean one, the interceptors first on PATH."""
    env = {
        "PATH": f"{VIEW_AT}/bin:{SANDBOX_PATH}",
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": "/bin/bash",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TERM": os.environ.get("TERM", "dumb"),
        "DISCO_NODE": node,
    }
    if noop:
        env["NOOP"] = "true"
    if intercept:
        env["PATH"] = f"{VIEW_AT}/noop:{env['PATH']}"
        env["BASH_ENV"] = f"{VIEW_AT}/noop.bash"  # builtins (kill) as functions
    return env


def noop_binds(view: View, binaries: list[str], root: Path) -> list[Bind]:
    """The real binaries' directories under /var/disco/real, then the interceptor over
    each command's absolute path: `/usr/sbin/service` is caught."""
    real = [Bind(source, target) for source, target in real_binds(root, binaries)]
    return real + [Bind(view.interceptor, path) for path in binaries]


def hidden_state(state: Path, root: Path) -> tuple[str, ...]:
    """disco's state as a path in the root, if it lies there: not shown, not reported."""
    real_root, real_state = os.path.realpath(root), os.path.realpath(state)
    if real_state == real_root or real_state.startswith(real_root.rstrip("/") + "/"):
        return ("/" + os.path.relpath(real_state, real_root),)
    return ()


def parameters(
    state: State,
    node: str,
    modules: Sequence[Module],
    current: str | None = None,
    server: Server | None = None,
) -> Tree:
    """What steps see at /var/disco/parameters: the client settings, and the node's tree
    with the modules' defaults under its parameters (and its current_module). Something
    in the trees that is no parameter is an error naming the file to fix on `server`."""
    try:
        settings = read_tree(state.parameters / "disco")
        node_tree = read_tree(state.parameters / node)
        defaults = [module.defaults() for module in modules]
    except NotAParameter as e:
        raise on_server(e, state, node, server) from None
    view = node_view({"disco": settings} if settings else {}, node, node_tree, defaults)
    own = view[node]
    assert isinstance(own, dict)
    if current is not None:
        own["current_module"] = current
    return view


def on_server(e: NotAParameter, state: State, node: str, server: Server | None) -> DiscoError:
    """`e` said of the file on the server that the client's copy was fetched from."""
    try:
        rel = e.path.relative_to(state.parameters / node).as_posix()
        source = server.parameters(node) if server else f"parameters/{node}/"
    except ValueError:
        try:
            name, *rest = e.path.relative_to(state.modules).parts
        except ValueError:
            return e  # the client's own settings, disco/...
        rel = "/".join(rest)
        source = server.module(name) if server else f"modules/{name}/"
    return e.shown(f"{quote(source + rel)} on the server")


def command(host_path: Path, path: str) -> tuple[str, ...]:
    """A script with a `#!` line runs as itself if it is executable; else with bash."""
    with host_path.open("rb") as f:
        shebang = f.read(2) == b"#!"
    if shebang and os.access(host_path, os.X_OK):
        return (path,)
    return ("bash", path)
