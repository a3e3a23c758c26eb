"""What a plan compares trees by: content hashes of a node's parameters and modules, and
how many modules at the start of a dance two trees share (DESIGN §15)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from disco.client.state import State
from disco.dance.environment import parameters
from disco.files import tree_digest
from disco.tree.modules import Module


def module_hashes(modules: Sequence[Module]) -> list[tuple[str, str]]:
    """(name, hash) of each module, in dance order."""
    return [(module.name, tree_digest(module.path)) for module in modules]


def tree_hash(
    state: State, node: str, modules: Sequence[Module], hashes: list[tuple[str, str]] | None = None
) -> str:
    """The hash of what a node dances: its parameters tree, then each module in order
    (`hashes`: module_hashes(modules), if known)."""
    digest = hashlib.sha256()
    digest.update(f"node {node}\n{tree_digest(state.parameters / node)}\n".encode())
    for name, value in module_hashes(modules) if hashes is None else hashes:
        digest.update(f"module {name} {value}\n".encode())
    return digest.hexdigest()


def steps_see(state: State, node: str, modules: Sequence[Module]) -> str:
    """A hash of the merged parameters every step of the dance reads."""
    tree = parameters(state, node, modules)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


def shared_prefix(
    base: tuple[State, Sequence[Module]],
    head: tuple[State, Sequence[Module]],
    node: str,
    hashes: tuple[list[tuple[str, str]], list[tuple[str, str]]] | None = None,
) -> int:
    """How many modules at the start of both dances are the same steps on the same lower
    state, so that they give the same layers and are danced once.

    A step's inputs are its module's files, templates and scripts, the merged parameters
    and the node; its lower state is the root plus the layers of every step before it.
    So the modules shared are the longest common run from the first one: same name, same
    content, and the whole merged parameters alike (any module's defaults or the node's
    own tree changing changes what every step reads, so nothing is shared then). A
    module after the first that differs is never shared even if it is the same, since
    its lower state may differ."""
    (base_state, base_modules), (head_state, head_modules) = base, head
    if steps_see(base_state, node, base_modules) != steps_see(head_state, node, head_modules):
        return 0
    ones, others = hashes or (module_hashes(base_modules), module_hashes(head_modules))
    count = 0
    for one, other in zip(ones, others):
        if one != other:
            break
        count += 1
    return count
