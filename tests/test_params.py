"""The parameters tree: paths, reading and writing, JSON, merging (DESIGN §3)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disco.errors import DiscoError, UsageError
from disco.tree.names import split_path
from disco.tree.params import (
    ParamStore,
    Tree,
    check_tree,
    dump_line,
    merge,
    node_view,
    parse_assignments,
    walk,
)

names = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
# Any text but lone surrogates, which JSON cannot carry as UTF-8.
values = st.text(st.characters(codec="utf-8"), max_size=40)
trees: st.SearchStrategy[Tree] = st.recursive(
    st.dictionaries(names, values, max_size=4),
    lambda children: st.dictionaries(names, st.one_of(values, children), max_size=4),
    max_leaves=25,
)


@pytest.mark.parametrize(
    "text, segments",
    [
        ("disco", ("disco",)),
        ("disco/server/uri", ("disco", "server", "uri")),
        (
            "localhost.localdomain/parameters/some_thing-2",
            ("localhost.localdomain", "parameters", "some_thing-2"),
        ),
        ("...", ("...",)),
        (".hidden", (".hidden",)),
    ],
)
def test_valid_paths_split_into_segments(text: str, segments: tuple[str, ...]) -> None:
    assert split_path(text) == segments


@pytest.mark.parametrize(
    "text, says",
    [
        ("/disco", "is absolute"),
        ("a/../b", "'..' is not a name"),
        ("..", "'..' is not a name"),
        ("./a", "'.' is not a name"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("", "is empty"),
        ("a b", "contains ' '"),
        ("a/b$c", "contains '$'"),
        ("é", "contains 'é'"),
    ],
)
def test_invalid_paths_are_usage_errors(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)) as caught:
        split_path(text)
    assert caught.value.status == 2
    assert caught.value.hint


@settings(max_examples=60, deadline=None)
@given(tree=trees)
def test_import_of_export_is_the_same_tree(
    tmp_path_factory: pytest.TempPathFactory, tree: Tree
) -> None:
    store = ParamStore(tmp_path_factory.mktemp("params"))
    store.replace(("t",), check_tree(tree))
    exported = store.read(("t",))
    assert exported == tree
    again = ParamStore(tmp_path_factory.mktemp("again"))
    assert isinstance(exported, dict)
    again.replace(("t",), check_tree(exported))
    assert again.read(("t",)) == tree


@settings(max_examples=60, deadline=None)
@given(tree=trees)
def test_dump_is_sorted_and_set_dash_reads_it_back(
    tmp_path_factory: pytest.TempPathFactory, tree: Tree
) -> None:
    store = ParamStore(tmp_path_factory.mktemp("params"))
    store.replace((), tree)
    dumped = store.dump()
    assert [path for path, _ in dumped] == sorted(path for path, _ in dumped)
    copy = ParamStore(tmp_path_factory.mktemp("copy"))
    text = "\n".join(dump_line(path, value) for path, value in dumped)
    copy.set_many(parse_assignments(text))
    assert copy.read() == store.read()


def test_dump_matches_the_seed(tmp_path: Path) -> None:
    store = ParamStore(tmp_path)
    store.set(
        ("disco", "client", "cmds", "rsync"), 'rsync -qaWHe "ssh -i /home/disco/.ssh/id_rsa_disco"'
    )
    store.set(("disco", "server", "uri"), "disco@aklabs.net")
    assert [dump_line(p, v) for p, v in store.dump()] == [
        "disco = {}",
        "disco/client = {}",
        "disco/client/cmds = {}",
        'disco/client/cmds/rsync = rsync -qaWHe "ssh -i /home/disco/.ssh/id_rsa_disco"',
        "disco/server = {}",
        "disco/server/uri = disco@aklabs.net",
    ]


def test_a_value_drops_one_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("LOL")
    (tmp_path / "newline").write_text("LOL\n")
    (tmp_path / "two").write_text("LOL\n\n")
    store = ParamStore(tmp_path)
    assert store.read() == {"plain": "LOL", "newline": "LOL", "two": "LOL\n"}


def test_disco_own_temporary_files_are_not_parameters(tmp_path: Path) -> None:
    (tmp_path / "good").write_text("1\n")
    (tmp_path / ".~good.tmp123").write_text("3\n")
    assert ParamStore(tmp_path).keys() == ["good"]


@pytest.mark.parametrize("name", ["has space", "caf\u00e9", "tab\there", "a:b"])
def test_a_name_outside_the_rule_is_an_error_never_skipped(tmp_path: Path, name: str) -> None:
    (tmp_path / "good").write_text("1\n")
    (tmp_path / name).write_text("2\n")
    for read in (ParamStore(tmp_path).keys, ParamStore(tmp_path).dump, ParamStore(tmp_path).read):
        with pytest.raises(DiscoError, match="is in a parameters tree but is named outside A-Z"):
            read()


def test_a_symlink_in_the_tree_is_an_error_not_followed(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s\n")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(DiscoError, match="link is in a parameters tree but is a symlink"):
        ParamStore(tmp_path / "tree").dump()


def test_walk_orders_by_segments_not_by_characters() -> None:
    tree: Tree = {"a": {"b": "1"}, "a-b": "2", "a.b": "3"}
    assert [path for path, _ in walk(tree)] == [("a",), ("a", "b"), ("a-b",), ("a.b",)]


@pytest.mark.parametrize(
    "first, then, says",
    [
        (("a", "b"), ("a", "b", "c"), "'a/b' is a value"),
        (("a", "b"), ("a",), "it is a map"),
    ],
)
def test_set_refuses_to_lose_data(
    tmp_path: Path, first: tuple[str, ...], then: tuple[str, ...], says: str
) -> None:
    store = ParamStore(tmp_path)
    store.set(first, "1")
    before = store.read()
    with pytest.raises(DiscoError, match=says):
        store.set(then, "2")
    assert store.read() == before


def test_making_a_map_over_a_value_is_refused(tmp_path: Path) -> None:
    store = ParamStore(tmp_path)
    store.set(("a",), "1")
    with pytest.raises(DiscoError, match="holds a value"):
        store.set(("a",), None)
    assert store.read() == {"a": "1"}


def test_set_many_writes_nothing_when_one_line_would_lose_data(tmp_path: Path) -> None:
    store = ParamStore(tmp_path)
    with pytest.raises(DiscoError, match="'q' is a value"):
        store.set_many(parse_assignments("x=1\nq=1\nq/r=2\n"))
    assert store.read() == {}


def test_delete_needs_recursive_for_a_map_with_keys(tmp_path: Path) -> None:
    store = ParamStore(tmp_path)
    store.set(("m", "k"), "v")
    store.set(("empty",), None)
    with pytest.raises(DiscoError, match="delete -r m"):
        store.delete(("m",))
    store.delete(("empty",))
    store.delete(("m",), recursive=True)
    assert store.read() == {}


def test_a_value_that_reads_like_a_map_survives_dump_and_set_dash(tmp_path: Path) -> None:
    store = ParamStore(tmp_path / "a")
    store.set(("looks",), "{}")
    store.set(("is",), None)
    lines = [dump_line(p, v) for p, v in store.dump()]
    assert lines == ["is = {}", "looks = \\{}"]
    copy = ParamStore(tmp_path / "b")
    copy.set_many(parse_assignments("\n".join(lines)))
    assert copy.read() == {"is": {}, "looks": "{}"}


def test_parse_assignments_forms() -> None:
    text = "# comment\n\na=1\nb = two words\nc = {}\nd=x\\ny\\\\z\ne==\nf=C:\\temp\n"
    assert parse_assignments(text) == [
        (("a",), "1"),
        (("b",), "two words"),
        (("c",), None),
        (("d",), "x\ny\\z"),
        (("e",), "="),
        (("f",), "C:\\temp"),
    ]


def test_merge_later_layers_win_per_key() -> None:
    low: Tree = {"m": {"port": "80", "name": "web"}, "x": "1"}
    high: Tree = {"m": {"port": "8080"}, "x": {"now": "a map"}}
    assert merge([low, high]) == {"m": {"port": "8080", "name": "web"}, "x": {"now": "a map"}}
    assert low == {"m": {"port": "80", "name": "web"}, "x": "1"}, "inputs are not changed"


def test_node_view_puts_module_defaults_under_the_node_values() -> None:
    settings_tree: Tree = {"disco": {"server": {"uri": "/srv"}}}
    node: Tree = {"modules": {"a": "", "b": ""}, "parameters": {"a": {"port": "8080"}}}
    defaults: list[Tree] = [
        {"a": {"port": "80", "user": "www"}},
        {"b": {"on": "yes"}, "a": {"user": "b-wins"}},
    ]
    view = node_view(settings_tree, "web1", node, defaults)
    assert view == {
        "disco": {"server": {"uri": "/srv"}},
        "web1": {
            "modules": {"a": "", "b": ""},
            "parameters": {"a": {"port": "8080", "user": "b-wins"}, "b": {"on": "yes"}},
        },
    }
