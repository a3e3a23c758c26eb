"""After its dance, a node plans each candidate of its server that affects it, and pushes
the plan there (DESIGN §15; which ones, and the transport: client/candidates.py).

The plan runs under the dance's lock, over its ssh connection, on the root it danced.
Its base is the tree the dance just fetched (the node's own state, a server directory
in its layout): what the node runs now, with no second transfer. Its head is the
candidate's tree as the node fetched it. The document says where both came from: the
server, and the candidate on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from disco.client.candidates import Planner, Reviewed, enabled, review
from disco.client.state import Settings, State
from disco.client.transport import Kind, Server
from disco.dance.reporting import Sink
from disco.errors import DiscoError
from disco.plan.document import plan_document
from disco.plan.planner import PlanRequest, plan_node


class Console(Sink, Protocol):
    def finish(self) -> list[dict[str, str]]:
        """The plan's dances are over: their `Would execute` lines."""


def planner(
    state: State, node: str, root: Path, settings: Settings, server: Server,
    console: Callable[[], Console],
) -> Planner:  # fmt: skip
    """Plan one candidate's tree for `node`; its plan document (no content left out:
    the server keeps it as sensitive as the nodes' reports)."""

    def plan(name: str, tree: Path) -> dict[str, Any]:
        local = Server(str(state.root), Kind.LOCAL, str(state.root))
        base = dataclasses.replace(settings, servers=(local,))
        head = dataclasses.replace(settings, servers=(Server(str(tree), Kind.LOCAL, str(tree)),))
        out = console()
        try:
            result = plan_node(state, PlanRequest(node, root, base, head), out, out.finish,
                               held=True)  # fmt: skip
        finally:
            out.finish()
        document = plan_document(result)
        document["base"]["uri"] = server.uri
        document["head"]["uri"] = f"{server.uri} candidate {name}"
        return document

    return plan


def plan_candidates(
    state: State, node: str, root: Path, settings: Settings, server: Server,
    console: Callable[[], Console],
) -> Iterator[Reviewed]:  # fmt: skip
    """Plan and push each open candidate of `server` that affects `node`, unless
    disco/client/plan/candidates is false; one Reviewed a candidate."""
    try:
        if not enabled(state.params()):
            return
    except DiscoError as e:  # a bad setting: said, and the dance stays as it ended
        yield Reviewed("*", "", False, e)
        return
    yield from review(state, node, settings, server,
                      planner(state, node, root, settings, server, console))  # fmt: skip
