"""The dance order: which modules join the dance, and in what order (DESIGN §4).

Pure functions over Module data, so tests drive them without a server or root.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from disco.errors import DiscoError
from disco.tree.modules import Edge, Module


def first_level(roots: Iterable[str]) -> dict[str, str]:
    """The modules of a node's modules map, as {name: who wants it}: where the fetch starts."""
    return {name: "the node's modules map" for name in sorted(roots)}


def next_level(level: Mapping[str, str], modules: Mapping[str, Module]) -> dict[str, str]:
    """The modules that the `level` just loaded name and `modules` lacks, as {name: who
    wants it}. Levels go breadth first, so a missing module's error is deterministic."""
    following: dict[str, str] = {}
    for name in sorted(level):
        for req in modules[name].requires:
            if req.name not in modules:
                following.setdefault(req.name, f"module '{name}'")
    return following


def successors(modules: Mapping[str, Module]) -> dict[str, set[str]]:
    """For each module, the modules that must run after it."""
    after: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        for req in module.requires:
            if req.name not in after:
                raise DiscoError(
                    f"module '{module.name}' requires '{req.name}', which is not in the dance",
                    "add it to the node's modules, or remove the requirement",
                )
            if req.edge is Edge.AFTER:
                after[req.name].add(module.name)
            else:
                after[module.name].add(req.name)
    return after


def order(modules: Mapping[str, Module]) -> list[str]:
    """Topological order; modules free to run are taken alphabetically."""
    after = successors(modules)
    waiting = {name: 0 for name in after}
    for names in after.values():
        for name in names:
            waiting[name] += 1
    ready = [name for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    result: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        result.append(name)
        for later in after[name]:
            waiting[later] -= 1
            if waiting[later] == 0:
                heapq.heappush(ready, later)
    if len(result) < len(after):
        cycle = find_cycle(after, {name for name, count in waiting.items() if count > 0})
        raise DiscoError(
            "requires cycle: " + " -> ".join([*cycle, cycle[0]]),
            "break it by removing one of these requirements",
        )
    return result


def find_cycle(after: Mapping[str, set[str]], stuck: set[str]) -> list[str]:
    """One cycle among the modules that never became ready, starting at its least name."""
    before: dict[str, list[str]] = {name: [] for name in stuck}
    for name in stuck:
        for later in after[name]:
            if later in stuck:
                before[later].append(name)
    # Every stuck module waits on a stuck one, so walking back must come round.
    path: list[str] = []
    seen: dict[str, int] = {}
    name = min(stuck)
    while name not in seen:
        seen[name] = len(path)
        path.append(name)
        name = min(before[name])
    cycle = list(reversed(path[seen[name] :]))
    start = cycle.index(min(cycle))
    return cycle[start:] + cycle[:start]
