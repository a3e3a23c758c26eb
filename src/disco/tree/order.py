"""The dance order: which modules join the dance, and in what order (DESIGN §4).

Pure functions over Module data, so tests drive them without a server or root.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping

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


def cycles(modules: Mapping[str, Module]) -> Iterator[list[str]]:
    """Every requires cycle (each elementary circuit once, starting at its least name),
    in the direction the modules would run: for `disco-server check`, which names them
    all at once. Johnson's algorithm, as networkx's simple_cycles: its time grows with
    the cycles found, so a caller may stop after enough."""
    after = successors(modules)
    graph = {name: set(later) for name, later in after.items()}
    for name in sorted(graph):
        if name in graph[name]:  # a module that requires itself
            yield [name]
            graph[name].discard(name)
    todo = [c for c in _components(graph, set(graph)) if len(c) > 1]
    while todo:
        component = todo.pop()
        start = min(component)
        yield from _circuits(graph, component, start)
        component.discard(start)  # every circuit through it is found
        todo += [c for c in _components(graph, component) if len(c) > 1]


def _circuits(graph: Mapping[str, set[str]], component: set[str], start: str) -> list[list[str]]:
    """The elementary circuits through `start` within `component`, rotated to their
    least name (Johnson's circuit routine, without recursion)."""
    out: list[list[str]] = []
    path, blocked, closed = [start], {start}, set()
    held: dict[str, set[str]] = {}  # Johnson's B: unblock these when the key is
    stack = [(start, sorted(graph[start] & component, reverse=True))]
    while stack:
        here, nexts = stack[-1]
        if nexts:
            there = nexts.pop()
            if there == start:
                out.append(path[:])
                closed.update(path)
            elif there not in blocked:
                path.append(there)
                stack.append((there, sorted(graph[there] & component, reverse=True)))
                closed.discard(there)
                blocked.add(there)
                continue
        if not nexts:
            if here in closed:
                unblock = [here]
                while unblock:
                    name = unblock.pop()
                    if name in blocked:
                        blocked.discard(name)
                        unblock += held.pop(name, set())
            else:
                for there in graph[here] & component:
                    held.setdefault(there, set()).add(here)
            stack.pop()
            path.pop()
    for cycle in out:
        at = cycle.index(min(cycle))
        cycle[:] = cycle[at:] + cycle[:at]
    return sorted(out)


def _components(graph: Mapping[str, set[str]], nodes: set[str]) -> list[set[str]]:
    """The strongly connected components of `graph` restricted to `nodes` (Tarjan's,
    without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root] & nodes)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            name, nexts = work[-1]
            there = next(nexts, None)
            if there is not None:
                if there not in index:
                    index[there] = low[there] = len(index)
                    stack.append(there)
                    on_stack.add(there)
                    work.append((there, iter(sorted(graph[there] & nodes))))
                elif there in on_stack:
                    low[name] = min(low[name], index[there])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[name])
            if low[name] == index[name]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == name:
                        break
                out.append(component)
    return out
