"""disco-param end to end: the installed command, run as a user would (DESIGN §3, §10)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, Run, assert_one_error, tree_snapshot

# The seed's `disco-param dump`, byte for byte.
SEED_DUMP = """\
disco = {}
disco/client = {}
disco/client/cmds = {}
disco/client/cmds/rsync = rsync -qaWHe "ssh -i /home/disco/.ssh/id_rsa_disco"
disco/server = {}
disco/server/uri = disco@aklabs.net
"""

VERBS = ["get", "set", "keys", "dump", "delete", "export", "import"]


@pytest.fixture
def seeded(state: Path) -> Path:
    """A state as disco leaves it, whose parameters are the seed's example tree."""
    (state / "modules").mkdir(parents=True)
    for line in SEED_DUMP.splitlines():
        path, _, value = line.partition(" = ")
        target = state / "parameters" / path
        if value == "{}":
            target.mkdir(parents=True)
        else:
            target.write_text(value + "\n")
    return state


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded quietly."""
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


def run_bytes(state: Path, *argv: str, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Like `cmd`, but bytes in and out, for values that are not UTF-8."""
    env = {**os.environ, "DISCO_STATE": str(state), "NO_COLOR": "1"}
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], input=input, capture_output=True, env=env, check=False
    )


# -- get and set ----------------------------------------------------------------------


def test_set_reads_the_value_from_stdin_and_get_prints_it(cmd: Run) -> None:
    ok(cmd("disco-param", "set", "disco/server/uri", input="/srv/disco\n"))
    assert ok(cmd("disco-param", "get", "disco/server/uri")) == "/srv/disco\n"


def test_set_from_stdin_drops_only_one_trailing_newline(cmd: Run, state: Path) -> None:
    ok(cmd("disco-param", "set", "motd", input="line 1\nline 2\n\n"))
    assert (state / "parameters" / "motd").read_text() == "line 1\nline 2\n\n"
    assert ok(cmd("disco-param", "get", "motd")) == "line 1\nline 2\n\n"


def test_set_path_value_takes_the_value_from_the_command_line(cmd: Run, state: Path) -> None:
    ok(cmd("disco-param", "set", "disco/server/uri", "disco@aklabs.net"))
    assert (state / "parameters/disco/server/uri").read_text() == "disco@aklabs.net\n"
    assert ok(cmd("disco-param", "get", "disco/server/uri")) == "disco@aklabs.net\n"


def test_set_replaces_a_value(cmd: Run) -> None:
    ok(cmd("disco-param", "set", "x", "old"))
    ok(cmd("disco-param", "set", "x", "new"))
    assert ok(cmd("disco-param", "get", "x")) == "new\n"


def test_set_path_braces_makes_a_map_that_get_shows_as_braces(cmd: Run, state: Path) -> None:
    ok(cmd("disco-param", "set", "disco/client", "{}"))
    assert (state / "parameters/disco/client").is_dir()
    assert ok(cmd("disco-param", "get", "disco/client")) == "{}\n"
    assert ok(cmd("disco-param", "keys", "disco/client")) == ""


def test_set_braces_over_an_existing_map_keeps_its_keys(cmd: Run) -> None:
    ok(cmd("disco-param", "set", "m/k", "v"))
    ok(cmd("disco-param", "set", "m", "{}"))
    assert ok(cmd("disco-param", "get", "m/k")) == "v\n"


def test_set_makes_the_missing_parent_maps(cmd: Run) -> None:
    ok(cmd("disco-param", "set", "a/b/c", "deep"))
    assert ok(cmd("disco-param", "dump")) == "a = {}\na/b = {}\na/b/c = deep\n"


def test_set_dash_reads_path_equals_value_lines(cmd: Run) -> None:
    ok(cmd("disco-param", "set", "-", input="a/x=1\na/y=two words\nb={}\n"))
    assert ok(cmd("disco-param", "dump")) == "a = {}\na/x = 1\na/y = two words\nb = {}\n"


def test_set_dash_reads_dump_style_lines(cmd: Run) -> None:
    ok(cmd("disco-param", "set", "-", input="a = {}\na/x = 1\na/eq = k=v\na/pad =  two\n"))
    assert ok(cmd("disco-param", "get", "a/x")) == "1\n"
    assert ok(cmd("disco-param", "get", "a/eq")) == "k=v\n"
    # One space each side of ' = ' belongs to the format, the rest to the value.
    assert ok(cmd("disco-param", "get", "a/pad")) == " two\n"


def test_set_dash_unescapes_newline_and_backslash(cmd: Run, state: Path) -> None:
    ok(cmd("disco-param", "set", "-", input="text = one\\ntwo\npath = C:\\\\dir\n"))
    assert (state / "parameters/text").read_text() == "one\ntwo\n"
    assert (state / "parameters/path").read_text() == "C:\\dir\n"


def test_set_dash_skips_comments_and_blank_lines(cmd: Run) -> None:
    ok(cmd("disco-param", "set", "-", input="# the server\n\n   \n  # indented\nuri = /srv\n"))
    assert ok(cmd("disco-param", "dump")) == "uri = /srv\n"


def test_get_prints_a_value_that_is_not_utf8_byte_for_byte(state: Path) -> None:
    value = b"\xff\xfe latin-1: caf\xe9 \x80"
    assert run_bytes(state, "disco-param", "set", "blob", input=value + b"\n").returncode == 0
    assert (state / "parameters/blob").read_bytes() == value + b"\n"
    got = run_bytes(state, "disco-param", "get", "blob")
    assert (got.returncode, got.stdout, got.stderr) == (0, value + b"\n", b"")


def test_dump_prints_a_value_that_is_not_utf8_byte_for_byte(state: Path) -> None:
    (state / "parameters").mkdir(parents=True)
    (state / "parameters/blob").write_bytes(b"caf\xe9\n")
    assert run_bytes(state, "disco-param", "dump").stdout == b"blob = caf\xe9\n"


# -- keys and dump --------------------------------------------------------------------


def test_set_dash_of_the_seeds_dump_reproduces_it_exactly(cmd: Run) -> None:
    ok(cmd("disco-param", "set", "-", input=SEED_DUMP))
    assert ok(cmd("disco-param", "dump")) == SEED_DUMP


def test_dump_is_sorted_whatever_order_the_values_were_set_in(cmd: Run) -> None:
    ok(cmd("disco-param", "set", "-", input="\n".join(reversed(SEED_DUMP.splitlines()))))
    assert ok(cmd("disco-param", "dump")) == SEED_DUMP


def test_dump_path_prints_that_subtree_or_value(seeded: Path, cmd: Run) -> None:
    assert ok(cmd("disco-param", "dump", "disco/server")) == (
        "disco/server = {}\ndisco/server/uri = disco@aklabs.net\n"
    )
    assert ok(cmd("disco-param", "dump", "disco/server/uri")) == (
        "disco/server/uri = disco@aklabs.net\n"
    )


def test_dump_escapes_values_so_set_dash_reads_them_back(cmd: Run, tmp_path: Path) -> None:
    ok(cmd("disco-param", "set", "text", input="one\ntwo\\three\n"))
    dumped = ok(cmd("disco-param", "dump"))
    assert dumped == "text = one\\ntwo\\\\three\n"
    other = {"DISCO_STATE": str(tmp_path / "other")}
    ok(cmd("disco-param", "set", "-", input=dumped, env=other))
    assert ok(cmd("disco-param", "get", "text", env=other)) == "one\ntwo\\three\n"


def test_keys_lists_the_keys_of_a_map_sorted(seeded: Path, cmd: Run) -> None:
    ok(cmd("disco-param", "set", "disco/aaa", "first"))
    assert ok(cmd("disco-param", "keys", "disco")) == "aaa\nclient\nserver\n"
    assert ok(cmd("disco-param", "keys")) == "disco\n"


# -- delete ---------------------------------------------------------------------------


def test_delete_removes_a_value(seeded: Path, cmd: Run) -> None:
    ok(cmd("disco-param", "delete", "disco/server/uri"))
    assert ok(cmd("disco-param", "dump", "disco/server")) == "disco/server = {}\n"


def test_delete_removes_an_empty_map(seeded: Path, cmd: Run) -> None:
    ok(cmd("disco-param", "set", "disco/empty", "{}"))
    ok(cmd("disco-param", "delete", "disco/empty"))
    assert ok(cmd("disco-param", "dump")) == SEED_DUMP


def test_delete_r_removes_a_map_and_all_below_it(seeded: Path, cmd: Run) -> None:
    ok(cmd("disco-param", "delete", "-r", "disco/client"))
    assert ok(cmd("disco-param", "dump")) == (
        "disco = {}\ndisco/server = {}\ndisco/server/uri = disco@aklabs.net\n"
    )


# -- export and import ----------------------------------------------------------------


def test_export_prints_a_subtree_as_json(seeded: Path, cmd: Run) -> None:
    assert json.loads(ok(cmd("disco-param", "export", "disco/server"))) == {
        "uri": "disco@aklabs.net"
    }


def test_export_then_import_gives_back_the_same_tree(seeded: Path, cmd: Run) -> None:
    exported = ok(cmd("disco-param", "export", "disco"))
    ok(cmd("disco-param", "delete", "-r", "disco"))
    ok(cmd("disco-param", "import", "disco", input=exported))
    assert ok(cmd("disco-param", "dump")) == SEED_DUMP
    assert ok(cmd("disco-param", "export", "disco")) == exported


def test_import_replaces_the_subtree_exactly(seeded: Path, cmd: Run) -> None:
    ok(cmd("disco-param", "import", "disco/server", input='{"uri": "/srv/disco", "m": {}}'))
    assert ok(cmd("disco-param", "dump", "disco/server")) == (
        "disco/server = {}\ndisco/server/m = {}\ndisco/server/uri = /srv/disco\n"
    )
    assert ok(cmd("disco-param", "get", "disco/client/cmds/rsync")).startswith("rsync -qaWHe")


def test_import_without_a_path_replaces_the_whole_tree(seeded: Path, cmd: Run) -> None:
    whole = ok(cmd("disco-param", "export"))
    ok(cmd("disco-param", "import", input='{"other": "value"}'))
    assert ok(cmd("disco-param", "dump")) == "other = value\n"
    ok(cmd("disco-param", "import", input=whole))
    assert ok(cmd("disco-param", "dump")) == SEED_DUMP


# -- the command line -----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--state-dir", "{dir}", "set", "x", "v"],
        ["set", "x", "v", "--state-dir", "{dir}"],
        ["set", "--state-dir", "{dir}", "x", "v"],
    ],
    ids=["before-the-verb", "after-the-verb", "between-verb-and-path"],
)
def test_state_dir_flag_goes_before_or_after_the_verb(
    argv: list[str], cmd: Run, state: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    ok(cmd("disco-param", *(arg.format(dir=elsewhere) for arg in argv)))
    assert (elsewhere / "parameters/x").read_text() == "v\n"
    assert not state.exists()  # DISCO_STATE was overridden
    assert ok(cmd("disco-param", "--state-dir", str(elsewhere), "get", "x")) == "v\n"
    assert ok(cmd("disco-param", "get", "x", "--state-dir", str(elsewhere))) == "v\n"


@pytest.mark.parametrize("verb", VERBS)
def test_help_of_every_verb_shows_an_example(verb: str, cmd: Run) -> None:
    out = ok(cmd("disco-param", verb, "--help"))
    assert "example:\n  disco-param " in out


def test_help_shows_examples(cmd: Run) -> None:
    out = ok(cmd("disco-param", "--help"))
    assert "examples:\n  disco-param " in out
    for verb in VERBS:
        assert verb in out


# -- bad input: one `error:` line, the right exit status, nothing written ------------


BAD_PATHS = ["/disco/server", "a/../b", "..", "a//b", "a/", "a b", "caf\u00e9", "a~"]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_a_bad_parameter_path_is_a_usage_error(path: str, seeded: Path, cmd: Run) -> None:
    before = tree_snapshot(seeded)
    assert_one_error(cmd("disco-param", "set", path, "v"), 2, f"'{path}'")
    assert tree_snapshot(seeded) == before


@pytest.mark.parametrize(
    "argv",
    [["get"], ["set"], ["keys"], ["dump"], ["delete", "-r"], ["export"], ["import"]],
    ids=VERBS,
)
def test_every_verb_refuses_a_bad_path(argv: list[str], seeded: Path, cmd: Run) -> None:
    before = tree_snapshot(seeded)
    path = "disco/../etc"
    assert_one_error(cmd("disco-param", *argv, path, input='{"k": "v"}'), 2, path)
    assert tree_snapshot(seeded) == before


@pytest.mark.parametrize(
    "argv",
    [[], ["frob"], ["get"], ["set", "-", "VALUE"], ["delete", "--force", "x"], ["--bogus"]],
    ids=["no-verb", "unknown-verb", "missing-path", "set-dash-with-value", "bad-flag", "bad-opt"],
)
def test_a_bad_command_line_is_a_usage_error(argv: list[str], seeded: Path, cmd: Run) -> None:
    before = tree_snapshot(seeded)
    assert_one_error(cmd("disco-param", *argv), 2)
    assert tree_snapshot(seeded) == before


def test_get_of_a_missing_key_fails_naming_it(seeded: Path, cmd: Run) -> None:
    before = tree_snapshot(seeded)
    result = cmd("disco-param", "get", "disco/server/port")
    assert result.stdout == ""
    assert_one_error(result, 1, "'disco/server/port'", "does not exist")
    assert tree_snapshot(seeded) == before


def test_set_braces_over_a_value_fails(seeded: Path, cmd: Run) -> None:
    before = tree_snapshot(seeded)
    assert_one_error(cmd("disco-param", "set", "disco/server/uri", "{}"), 1, "disco/server/uri")
    assert tree_snapshot(seeded) == before


def test_set_a_value_over_a_map_fails(seeded: Path, cmd: Run) -> None:
    before = tree_snapshot(seeded)
    assert_one_error(cmd("disco-param", "set", "disco/client", "v"), 1, "disco/client")
    assert_one_error(cmd("disco-param", "set", "disco", input="v\n"), 1, "'disco'")
    assert tree_snapshot(seeded) == before


def test_set_below_a_value_fails_naming_the_value(seeded: Path, cmd: Run) -> None:
    before = tree_snapshot(seeded)
    result = cmd("disco-param", "set", "disco/server/uri/host", "h")
    assert_one_error(result, 1, "'disco/server/uri/host'", "'disco/server/uri' is a value")
    assert tree_snapshot(seeded) == before


@pytest.mark.parametrize(
    ("bad_line", "status", "named"),
    [
        ("bad path = 1", 2, "bad path"),
        ("/abs = 1", 2, "/abs"),
        ("no equals sign", 2, "no equals sign"),
        ("disco = 1", 1, "'disco'"),
        ("disco/server/uri = {}", 1, "disco/server/uri"),
        ("disco/server/uri/x = 1", 1, "disco/server/uri"),
        ("new = 1\nnew/below = 2", 1, "new"),
    ],
    ids=[
        "bad-segment",
        "absolute",
        "no-equals",
        "value-over-map",
        "map-over-value",
        "below-a-value",
        "below-a-value-set-earlier",
    ],
)
def test_set_dash_with_one_bad_line_writes_nothing(
    bad_line: str, status: int, named: str, seeded: Path, cmd: Run
) -> None:
    before = tree_snapshot(seeded)
    text = f"# good lines around a bad one\nfirst = 1\nnested/map = {{}}\n{bad_line}\nlast = 2\n"
    assert_one_error(cmd("disco-param", "set", "-", input=text), status, named)
    assert tree_snapshot(seeded) == before


def test_delete_of_a_map_with_keys_needs_r(seeded: Path, cmd: Run) -> None:
    before = tree_snapshot(seeded)
    assert_one_error(cmd("disco-param", "delete", "disco/client"), 1, "disco/client", "-r")
    assert tree_snapshot(seeded) == before


def test_delete_of_a_missing_key_fails(seeded: Path, cmd: Run) -> None:
    before = tree_snapshot(seeded)
    assert_one_error(cmd("disco-param", "delete", "-r", "disco/nothing"), 1, "disco/nothing")
    assert tree_snapshot(seeded) == before


@pytest.mark.parametrize(
    ("document", "status", "named"),
    [
        ('["a", "b"]', 1, "array"),
        ('"just a string"', 1, "string"),
        ('{"port": 22}', 1, "'port' is a number"),
        ('{"uri": null}', 1, "'uri' is null"),
        ('{"m": {"list": ["a"]}}', 1, "'m/list' is an array"),
        ('{"m": {"on": true}}', 1, "'m/on' is a boolean"),
        ('{"../x": "1"}', 2, "'../x'"),
        ('{"a b": "1"}', 2, "'a b'"),
        ("uri = /srv", 1, "not JSON"),
        ("", 1, "not JSON"),
    ],
    ids=[
        "array",
        "string",
        "number-value",
        "null-value",
        "nested-array",
        "boolean-value",
        "key-dotdot",
        "key-space",
        "not-json",
        "empty",
    ],
)
def test_import_refuses_what_is_not_an_object_of_objects_and_strings(
    document: str, status: int, named: str, seeded: Path, cmd: Run
) -> None:
    before = tree_snapshot(seeded)
    assert_one_error(cmd("disco-param", "import", "disco", input=document), status, named)
    assert tree_snapshot(seeded) == before


@pytest.mark.parametrize(
    "argv, stdin",
    [(["set", "a b", "x"], ""), (["set", "-"], "ok=1\nbad\n"), (["import"], "[1]")],
    ids=["set", "set-dash", "import"],
)
def test_a_refused_write_leaves_a_fresh_machine_without_state(
    argv: list[str], stdin: str, cmd: Run, state: Path
) -> None:
    result = cmd("disco-param", *argv, input=stdin)
    assert result.returncode != 0 and result.stderr.startswith("error: ")
    assert not state.exists()


def test_a_map_and_the_value_braces_never_read_the_same(cmd: Run) -> None:
    ok(cmd("disco-param", "set", "app/doc", input="{}\n"))  # stdin: always a value
    ok(cmd("disco-param", "set", "app/map", "{}"))  # the argument {}: a map
    ok(cmd("disco-param", "set", "app/arg", "\\{}"))  # the argument \{}: the value {}
    assert ok(cmd("disco-param", "get", "app/doc")) == "\\{}\n"
    assert ok(cmd("disco-param", "get", "app/arg")) == "\\{}\n"
    assert ok(cmd("disco-param", "get", "app/map")) == "{}\n"
    assert ok(cmd("disco-param", "keys", "app/map")) == ""
    assert_one_error(cmd("disco-param", "keys", "app/doc"), 1, "is a value")
    assert json.loads(ok(cmd("disco-param", "export", "app"))) == {
        "arg": "{}",
        "doc": "{}",
        "map": {},
    }


@pytest.mark.parametrize("name", ["has space", "caf\u00e9", "new\nline", "link"])
@pytest.mark.parametrize("verb", ["keys", "dump", "export"])
def test_a_name_no_parameter_can_have_is_an_error_never_skipped(
    cmd: Run, state: Path, name: str, verb: str
) -> None:
    ok(cmd("disco-param", "set", "srv/good", "1"))
    odd = state / "parameters" / "srv" / name
    if name == "link":
        odd.symlink_to("/etc")
    else:
        odd.write_text("2\n")
    result = cmd("disco-param", verb, "srv")
    what = "a symlink" if name == "link" else "named outside A-Z a-z 0-9 _ . -"
    shown = name.replace(" ", "\\ ").replace("\n", "\\n")
    assert_one_error(result, 1, f"srv/{shown} is in a parameters tree", what)
