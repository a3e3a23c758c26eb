"""Modules and the dance order (DESIGN §4): pure functions driven by data."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from disco.errors import DiscoError
from disco.tree.modules import Edge, Module, Requirement, init_module, load_module, parse_requires
from disco.tree.order import cycles, first_level, next_level, order


def modules(spec: dict[str, str]) -> dict[str, Module]:
    """Modules from {name: requires text}."""
    return {
        name: Module(name, Path("/nowhere") / name, parse_requires(text, name))
        for name, text in spec.items()
    }


def test_requires_lines() -> None:
    text = "# needs\nbase\n\nafter net   # trailing comment\nbefore app\n"
    assert parse_requires(text, "m") == (
        Requirement(Edge.AFTER, "base", 2),
        Requirement(Edge.AFTER, "net", 4),
        Requirement(Edge.BEFORE, "app", 5),
    )


@pytest.mark.parametrize(
    "line, says",
    [
        ("../etc", "module name '../etc' contains '/'"),
        ("a/b", "module name 'a/b' contains '/'"),
        ("after a b", "cannot read 'after a b'"),
        ("during x", "cannot read 'during x'"),
        ("after ..", "'..' is not a name"),
    ],
)
def test_bad_requires_lines_name_module_and_line(line: str, says: str) -> None:
    with pytest.raises(DiscoError, match=says) as caught:
        parse_requires(f"ok\n{line}\n", "web")
    assert "module 'web': requires line 2" in caught.value.message


def test_unconstrained_modules_run_alphabetically() -> None:
    assert order(modules({"c": "", "a": "", "b": ""})) == ["a", "b", "c"]


def test_after_and_before() -> None:
    spec = {
        "app": "db\nbefore monitoring",
        "db": "after net",
        "net": "",
        "monitoring": "",
        "aaa": "before net",
    }
    assert order(modules(spec)) == ["aaa", "net", "db", "app", "monitoring"]


def test_the_seed_example_order() -> None:
    assert order(modules({"othermodule-3.2": "testmodule-1.0", "testmodule-1.0": ""})) == [
        "testmodule-1.0",
        "othermodule-3.2",
    ]


@pytest.mark.parametrize(
    "spec, cycle",
    [
        ({"a": "a"}, "a -> a"),
        ({"a": "b", "b": "a"}, "a -> b -> a"),
        ({"a": "c", "b": "a", "c": "b", "z": ""}, "a -> b -> c -> a"),
        ({"x": "before y", "y": "before z", "z": "before x", "q": "x"}, "x -> y -> z -> x"),
    ],
)
def test_a_cycle_names_every_module_in_it(spec: dict[str, str], cycle: str) -> None:
    with pytest.raises(DiscoError) as caught:
        order(modules(spec))
    assert caught.value.message == f"requires cycle: {cycle}"


def test_cycles_names_every_cycle_at_once() -> None:
    spec = {
        "a": "b", "b": "a",  # three cycles apart
        "c": "d", "d": "e", "e": "c",
        "f": "f",
        "g": "h\ni", "h": "g", "i": "g",  # two sharing g
        "z": "a",  # not in a cycle
    }  # fmt: skip
    assert sorted(cycles(modules(spec))) == [
        ["a", "b"], ["c", "e", "d"], ["f"], ["g", "h"], ["g", "i"],
    ]  # fmt: skip
    assert list(cycles(modules({"x": "", "y": "x"}))) == []


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, str]:
    """Random specs of up to 6 modules, cycles allowed."""
    names = [f"m{i}" for i in range(draw(st.integers(1, 6)))]
    return {n: "\n".join(sorted(set(draw(st.lists(st.sampled_from(names), max_size=4)))))
            for n in names}  # fmt: skip


def brute_force_cycles(spec: dict[str, str]) -> list[list[str]]:
    """Every simple path that comes back to its start, from its least name."""
    after: dict[str, set[str]] = {n: set() for n in spec}
    for name, text in spec.items():
        for required in text.split():
            after[required].add(name)
    found = []

    def walk(path: list[str]) -> None:
        for there in sorted(after[path[-1]]):
            if there == path[0]:
                found.append(list(path))
            elif there > path[0] and there not in path:
                walk([*path, there])

    for start in sorted(spec):
        walk([start])
    return sorted(found)


@given(spec=graphs())
def test_cycles_are_every_elementary_circuit(spec: dict[str, str]) -> None:
    assert sorted(cycles(modules(spec))) == brute_force_cycles(spec)


@st.composite
def dags(draw: st.DrawFn) -> dict[str, str]:
    """Random acyclic specs: a module may only name modules earlier in a hidden ranking."""
    count = draw(st.integers(1, 12))
    ranked = draw(st.permutations([f"m{i:02d}" for i in range(count)]))
    spec: dict[str, list[str]] = {name: [] for name in ranked}
    for i, name in enumerate(ranked):
        for earlier in draw(st.lists(st.sampled_from(ranked[:i]), max_size=3)) if i else []:
            if draw(st.booleans()):
                spec[name].append(f"after {earlier}")
            else:
                spec[earlier].append(f"before {name}")
    return {name: "\n".join(lines) for name, lines in spec.items()}


@given(spec=dags(), seed=st.integers(0, 1000))
def test_order_respects_every_constraint_and_never_varies(spec: dict[str, str], seed: int) -> None:
    result = order(modules(spec))
    position = {name: i for i, name in enumerate(result)}
    assert sorted(result) == sorted(spec)
    for module in modules(spec).values():
        for req in module.requires:
            if req.edge is Edge.AFTER:
                assert position[req.name] < position[module.name]
            else:
                assert position[module.name] < position[req.name]
    shuffled = list(spec.items())
    random.Random(seed).shuffle(shuffled)
    assert order(modules(dict(shuffled))) == result


def test_levels_pull_in_what_after_and_before_name_breadth_first() -> None:
    server = modules(
        {"web": "before cache\nafter tls", "tls": "base", "base": "", "cache": "", "unused": ""}
    )
    levels: list[dict[str, str]] = []
    found: dict[str, Module] = {}
    level = first_level(["web"])
    while level:
        levels.append(level)
        found.update({name: server[name] for name in level})
        level = next_level(level, found)
    assert sorted(found) == ["base", "cache", "tls", "web"]
    assert levels == [
        {"web": "the node's modules map"},
        {"cache": "module 'web'", "tls": "module 'web'"},
        {"base": "module 'tls'"},
    ]


def test_init_module_makes_a_skeleton_that_loads(tmp_path: Path) -> None:
    module = init_module(tmp_path / "nginx-1.0")
    assert module.name == "nginx-1.0"
    assert module.requires == ()
    assert sorted(p.name for p in module.path.iterdir()) == [
        "files",
        "parameters",
        "requires",
        "scripts",
        "templates",
    ]
    assert (module.path / "parameters" / "nginx-1.0").is_dir()
    assert load_module(module.path, module.name) == module


def test_init_module_refuses_a_bad_name_or_a_used_path(tmp_path: Path) -> None:
    with pytest.raises(DiscoError, match="contains ' '"):
        init_module(tmp_path / "bad name")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep").write_text("mine")
    with pytest.raises(DiscoError, match="not an empty directory"):
        init_module(tmp_path / "used")
    assert (tmp_path / "used" / "keep").read_text() == "mine"
