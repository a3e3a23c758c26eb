"""Every bad input to `disco plan` and `disco dance --plan` is one `error:` line naming the
thing and the fix (DESIGN §15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Run, assert_one_error
from plans import BASE, NODE, make_server


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    return make_server(tmp_path / "base", BASE), make_server(tmp_path / "head", BASE)


def plan(cmd: Run, state: Path, root: Path, *args: str):  # type: ignore[no-untyped-def]
    return cmd("disco", "plan", "--state-dir", str(state), "--node", NODE, "--root", str(root),
               *args)  # fmt: skip


def test_plan_needs_head(cmd: Run, state: Path, tmp_path: Path) -> None:
    assert_one_error(plan(cmd, state, tmp_path), 2, "--head")


def test_plan_root_must_be_a_directory(
    cmd: Run, state: Path, tmp_path: Path, trees: tuple[Path, Path]
) -> None:
    result = plan(
        cmd, state, tmp_path / "nowhere", "--server", str(trees[0]), "--head", str(trees[1])
    )
    assert_one_error(result, 2, "--root", "nowhere", "not a directory")


@pytest.mark.parametrize("flag", ["--out", "--junit", "--markdown", "--html"])
def test_plan_output_in_a_missing_directory(
    cmd: Run, state: Path, tmp_path: Path, trees: tuple[Path, Path], flag: str
) -> None:
    result = plan(cmd, state, tmp_path, "--server", str(trees[0]), "--head", str(trees[1]),
                  flag, str(tmp_path / "no/such/dir/file"))  # fmt: skip
    assert_one_error(result, 2, flag, "does not exist")


def test_plan_head_of_an_unknown_kind(
    cmd: Run, state: Path, tmp_path: Path, trees: tuple[Path, Path]
) -> None:
    result = plan(cmd, state, tmp_path, "--server", str(trees[0]), "--head", "ftp://x/")
    assert_one_error(result, 1, "ftp")


def test_plan_head_without_the_node(
    cmd: Run, state: Path, tmp_path: Path, trees: tuple[Path, Path], scratch_root: Path
) -> None:
    empty = tmp_path / "empty"
    (empty / "parameters").mkdir(parents=True)
    result = plan(cmd, state, scratch_root, "--server", str(trees[0]), "--head", str(empty),
                  "--detailed-exitcodes")  # fmt: skip
    assert_one_error(result, 1, NODE, str(empty))


def test_plan_json_error_is_a_document(
    cmd: Run, state: Path, tmp_path: Path, trees: tuple[Path, Path]
) -> None:
    result = plan(cmd, state, tmp_path, "--server", str(trees[0]), "--head", "ftp://x/", "--json")
    assert_one_error(result, 1, "ftp")
    document = json.loads(result.stdout)
    assert document["exit"] == 1 and "ftp" in document["error"]


def dance(cmd: Run, state: Path, root: Path, *args: str):  # type: ignore[no-untyped-def]
    return cmd("disco", "dance", "--state-dir", str(state), "--node", NODE, "--root", str(root),
               *args)  # fmt: skip


def a_plan(tmp_path: Path, root: Path, **changes: object) -> Path:
    plan = {"format_version": 1, "node": NODE, "root": str(root),
            "created": "2099-01-01T00:00:00.000000Z",
            "head": {"uri": str(tmp_path / "head"), "hash": "0" * 64}}  # fmt: skip
    data = {"kind": "disco-plan", "saved_version": 1, "plan": plan, "steps": []}
    data.update(changes)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return path


def test_dance_plan_file_missing(cmd: Run, state: Path, tmp_path: Path) -> None:
    result = dance(cmd, state, tmp_path, "--plan", str(tmp_path / "none.json"))
    assert_one_error(result, 1, "none.json", "cannot read")


@pytest.mark.parametrize("text", ["", "{}", "[1]", '{"kind": "disco-plan"}'])
def test_dance_plan_file_not_a_plan(cmd: Run, state: Path, tmp_path: Path, text: str) -> None:
    (tmp_path / "bad.json").write_text(text)
    result = dance(cmd, state, tmp_path, "--plan", str(tmp_path / "bad.json"))
    assert_one_error(result, 1, "bad.json", "is not a saved plan", "disco plan --out")


def test_dance_plan_of_another_version(cmd: Run, state: Path, tmp_path: Path) -> None:
    path = a_plan(tmp_path, tmp_path, saved_version=99)
    assert_one_error(dance(cmd, state, tmp_path, "--plan", str(path)), 1, "version 99")


@pytest.mark.parametrize(
    "flags", [["--noop"], ["--server", "/srv"], ["--module", "alpha"]], ids=lambda f: f[0]
)
def test_dance_plan_with_a_flag_against_it(
    cmd: Run, state: Path, tmp_path: Path, flags: list[str]
) -> None:
    path = a_plan(tmp_path, tmp_path)
    assert_one_error(dance(cmd, state, tmp_path, "--plan", str(path), *flags), 2, flags[0])


def test_dance_plan_for_another_node_or_root(cmd: Run, state: Path, tmp_path: Path) -> None:
    path = a_plan(tmp_path, tmp_path)
    other = dance(cmd, state, tmp_path, "--plan", str(path), "--node", "other.example.com")
    assert_one_error(other, 2, "other.example.com", NODE)
    (tmp_path / "r").mkdir()
    assert_one_error(dance(cmd, state, tmp_path / "r", "--plan", str(path)), 2, "--root")


def test_dance_plan_with_a_bad_max_age_or_time(cmd: Run, state: Path, tmp_path: Path) -> None:
    make_server(tmp_path / "head", BASE)
    cmd("disco-param", "--state-dir", str(state), "set", "disco/client/plan/max_age",
        input="soon\n")  # fmt: skip
    path = a_plan(tmp_path, tmp_path)
    assert_one_error(dance(cmd, state, tmp_path, "--plan", str(path)), 1, "max_age", "24h")
    cmd("disco-param", "--state-dir", str(state), "delete", "disco/client/plan/max_age")
    data = json.loads(path.read_text())
    data["plan"]["created"] = "yesterday"
    path.write_text(json.dumps(data))
    assert_one_error(dance(cmd, state, tmp_path, "--plan", str(path)), 1, "created", "yesterday")


def test_plan_wait_must_be_seconds(cmd: Run, state: Path, tmp_path: Path) -> None:
    result = plan(cmd, state, tmp_path, "--head", str(tmp_path), "--wait", "soon")
    assert_one_error(result, 2, "--wait", "soon")
