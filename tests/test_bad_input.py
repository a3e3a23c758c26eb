"""Every bad input an `error:` line, never a traceback (issue 11): the state directory,
names too long for the filesystem, text no file can hold, disco run without root."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import disco
from conftest import EXAMPLES, Run, assert_one_error, tree_snapshot

SEED = EXAMPLES / "seed"
LONG = "a" * 300  # one segment over the filesystem's 255
DEEP = "/".join(["a"] * 1500)  # a path of 1500 segments


@pytest.fixture
def as_nobody() -> Iterator[Run]:
    """Run a disco command as `nobody`, with the system python on a copy of disco that
    nobody can read (the venv may live under /root)."""
    lib = Path(tempfile.mkdtemp(prefix="disco-nobody-"))
    try:
        shutil.copytree(Path(disco.__file__).resolve().parent, lib / "disco")
        subprocess.run(["chmod", "-R", "a+rX", str(lib)], check=True)

        def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
            module = {"disco": "main", "disco-param": "param"}[argv[0]]
            code = f"import sys; from disco.cli.{module} import main; sys.exit(main())"
            full = ["env", "-i", f"PYTHONPATH={lib}", "PATH=/usr/bin:/bin", "NO_COLOR=1"]
            full += [f"{k}={v}" for k, v in (env or {}).items()]
            return subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
                + [*full, "/usr/bin/python3", "-c", code, *argv[1:]],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                cwd="/",
                check=False,
            )

        yield run
    finally:
        shutil.rmtree(lib, ignore_errors=True)


def test_a_dance_without_root_says_it_needs_root(as_nobody: Run, tmp_path: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="disco-nobody-state-"))
    try:
        shutil.chown(state, "nobody")
        for env in ({}, {"DISCO_STATE": str(state)}):  # /var/disco, then a state of its own
            result = as_nobody("disco", "dance", "--noop", "--server", str(SEED), env=env)
            assert_one_error(result, 1, "needs root", "sudo")
        assert os.listdir(state) == []
    finally:
        shutil.rmtree(state)


def test_a_parameter_read_without_root_is_one_error(as_nobody: Run) -> None:
    result = as_nobody("disco-param", "dump", env={"DISCO_STATE": "/root/disco-state"})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: "), result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["disco", "dance", "--noop", "--server", str(SEED), "--node", "localhost.localdomain"],
        ["disco-param", "set", "a", "1"],
        ["disco-param", "get", "a"],
        ["disco-param", "import"],
        ["disco-fs-mount"],
        ["disco", "report"],
    ],
    ids=lambda argv: "-".join(argv[:2]),
)
@pytest.mark.parametrize("where", ["file", "proc"])
def test_a_state_dir_that_cannot_be_one_is_one_error(
    cmd: Run, tmp_path: Path, argv: list[str], where: str
) -> None:
    target = tmp_path / "a-file" if where == "file" else Path("/proc/no-such-thing/state")
    if where == "file":
        target.write_text("not a directory\n")
    for how in ("flag", "env"):
        args = [argv[0], "--state-dir", str(target), *argv[1:]] if how == "flag" else argv
        env = {"DISCO_STATE": str(target)}
        result = cmd(*args, input="{}", env=env)
        if argv[-1] == "report" and where == "proc":  # nothing to make: nothing there yet
            assert_one_error(result, 1, "no report yet", str(target))
        elif argv[1:2] == ["get"] and where == "proc":
            assert_one_error(result, 1, "'a' does not exist")
        else:
            assert_one_error(result, 1, str(target))
    if where == "file":
        assert target.read_text() == "not a directory\n"


PARAM_VERBS = [
    ["get", "P"],
    ["keys", "P"],
    ["dump", "P"],
    ["export", "P"],
    ["delete", "P"],
    ["delete", "-r", "P"],
    ["set", "P", "v"],
    ["set", "P"],
    ["import", "P"],
]


@pytest.mark.parametrize("path", [LONG, f"ok/{LONG}/x", DEEP], ids=["segment", "inner", "deep"])
@pytest.mark.parametrize("verb", PARAM_VERBS, ids=lambda v: "-".join(v[:2]))
def test_a_path_too_long_for_the_filesystem_is_one_error_in_every_verb(
    cmd: Run, state: Path, path: str, verb: list[str]
) -> None:
    argv = ["disco-param", *(path if word == "P" else word for word in verb)]
    result = cmd(*argv, input="{}" if verb[0] == "import" else "value\n")
    assert_one_error(result, 2, "characters long", "at most")
    assert len(result.stderr) < 400  # the name is shortened, not printed whole
    assert not state.exists()


def test_set_lines_with_one_too_long_change_nothing(cmd: Run, state: Path) -> None:
    assert cmd("disco-param", "set", "keep", "1").returncode == 0
    before = tree_snapshot(state)
    result = cmd("disco-param", "set", "-", input=f"new/a=1\nkeep=2\n{DEEP}=3\n")
    assert_one_error(result, 2, "line 3", "characters long")
    assert tree_snapshot(state) == before


def test_a_set_the_filesystem_refuses_leaves_no_empty_maps(cmd: Run, tmp_path: Path) -> None:
    """Paths disco accepts, under a state directory so deep that the kernel's 4096-byte
    limit on a path is reached: the filesystem says no, midway through the writes."""
    state = tmp_path.joinpath(*["s" * 200] * 10)
    store = str(state)
    ok = cmd("disco-param", "--state-dir", store, "set", "keep", "1")
    assert ok.returncode == 0, ok.stderr
    before = tree_snapshot(state)
    deep = "/".join(["b" * 100] * 20)  # 2019 characters: accepted, too long under `state`
    lines = f"new/a=1\nkeep=2\n{deep}=3\n"
    result = cmd("disco-param", "--state-dir", store, "set", "-", input=lines)
    assert_one_error(result, 1, "cannot set", "File name too long", "nothing was changed")
    assert tree_snapshot(state) == before
    result = cmd("disco-param", "--state-dir", store, "set", deep, "3")
    assert_one_error(result, 1, "cannot set", "File name too long")
    assert tree_snapshot(state) == before


def test_import_of_a_lone_surrogate_is_one_error(cmd: Run, state: Path) -> None:
    result = cmd("disco-param", "import", "x", input='{"y": "\\ud800"}')
    assert_one_error(result, 1, "'y'", "surrogate")
    assert not (state / "parameters" / "x").exists()


def test_import_of_a_key_too_long_is_one_error(cmd: Run, state: Path) -> None:
    result = cmd("disco-param", "import", "x", input=f'{{"{LONG}": "1"}}')
    assert_one_error(result, 2, "key", "300 characters long")


def test_import_nested_deeper_than_json_reads_is_one_error(cmd: Run) -> None:
    document = '{"a":' * 1500 + '"x"' + "}" * 1500
    assert_one_error(cmd("disco-param", "import", "x", input=document), 1, "nested too deep")


@pytest.mark.parametrize(
    "node, says",
    [("n" * 300, "300 characters long"), ("n" * 65, "at most 64"), ("-rf", "starts with '-'")],
    ids=["over-255", "over-hostname", "dash"],
)
def test_a_node_name_that_cannot_be_a_hostname_is_one_error(
    cmd: Run, state: Path, node: str, says: str
) -> None:
    result = cmd("disco", "dance", "--noop", "--server", str(SEED), f"--node={node}")
    assert_one_error(result, 2, "node name", says)
    assert not state.exists()
