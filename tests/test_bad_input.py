"""Every bad input an `error:` line, never a traceback (issue 11): the state directory,
names too long for the filesystem, text no file can hold, disco run without root."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import disco
from conftest import EXAMPLES, Run, assert_one_error, tree_snapshot
from disco.client.transport import parse_server, ssh_problem

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


# -- issue 22, item 13: errors that say more ------------------------------------------------


def seed_copy(tmp_path: Path) -> Path:
    server = tmp_path / "srv"
    shutil.copytree(SEED, server)
    return server


SEED_NODE = "localhost.localdomain"


@pytest.mark.parametrize(
    "where, make, says",
    [
        ("parameters/NODE/parameters/bad name", Path.touch, "named outside A-Z"),
        ("parameters/NODE/parameters/fifo", os.mkfifo, "is a FIFO"),
        ("modules/testmodule-1.0/parameters/link", lambda p: p.symlink_to("/etc"), "a symlink"),
    ],
    ids=["name", "fifo", "symlink"],
)
def test_what_is_no_parameter_on_the_server_is_named_where_it_is_to_fix(
    cmd: Run, tmp_path: Path, where: str, make: Callable[[Path], None], says: str
) -> None:
    """Not the client's copy in the state directory: the server's file."""
    server = seed_copy(tmp_path)
    path = server / where.replace("NODE", SEED_NODE)
    make(path)
    root = tmp_path / "root"
    root.mkdir()
    result = cmd("disco", "dance", "--noop", "--server", str(server), "--node", SEED_NODE,
                 "--root", str(root))  # fmt: skip
    shown = str(path).replace(" ", "\\ ")
    assert_one_error(result, 1, f"{shown} on the server is in a parameters tree", says, "remove it")


def test_a_fifo_with_a_good_name_is_called_a_fifo(cmd: Run, state: Path) -> None:
    assert cmd("disco-param", "set", "srv/good", "1").returncode == 0
    os.mkfifo(state / "parameters/srv/pipe")
    assert_one_error(cmd("disco-param", "keys", "srv"), 1, "srv/pipe", "is a FIFO")


def test_a_read_only_state_dir_says_so_and_how_to_go_on(cmd: Run, tmp_path: Path) -> None:
    state = tmp_path / "ro-state"
    assert cmd("disco-param", "--state-dir", str(state), "set", "x", "1").returncode == 0
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        argv = [
            "dance",
            "--noop",
            "--server",
            str(SEED),
            "--node",
            SEED_NODE,
            "--root",
            str(tmp_path),
        ]
        result = cmd("disco", "--state-dir", str(state), *argv)
    finally:
        subprocess.run(["umount", str(state)], check=True)
    assert_one_error(result, 1, f"lock {state}/lock", "read-only filesystem", "--state-dir")


def test_a_report_only_root_can_read_says_run_it_as_root(as_nobody: Run, cmd: Run) -> None:
    state = Path(tempfile.mkdtemp(prefix="disco-root-state-"))  # 0700, root's
    try:
        (state / "reports").mkdir()
        (state / "reports/last.json").write_text("{}\n")
        result = as_nobody("disco", "report", env={"DISCO_STATE": str(state)})
        assert_one_error(result, 1, "permission denied", "run it as root")
    finally:
        shutil.rmtree(state)


def test_a_crlf_shebang_is_an_error_naming_module_script_and_line_end(
    cmd: Run, tmp_path: Path
) -> None:
    server = seed_copy(tmp_path)
    script = server / "modules/testmodule-1.0/scripts/00-hello.sh"
    script.write_bytes(b"#!/bin/bash\r\necho hello\r\n")
    script.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    result = cmd("disco", "dance", "--noop", "--server", str(server), "--node", SEED_NODE,
                 "--root", str(root))  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith("error: testmodule-1.0: script 00-hello.sh: its #! line ends in")
    assert "carriage return (CRLF" in errors[0] and "dos2unix" in errors[0]


def test_a_script_bash_runs_despite_its_interpreter_line_is_a_warning(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = seed_copy(tmp_path)
    script = server / "modules/testmodule-1.0/scripts/00-hello.sh"
    script.write_text("#!/usr/bin/env python3\necho bash ran it\n")
    script.chmod(0o644)
    result = cmd("disco", "dance", "--noop", "--server", str(server), "--node", SEED_NODE,
                 "--root", str(scratch_root))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "bash ran it" in result.stdout
    warning = "warning: testmodule-1.0: script 00-hello.sh is not executable, so bash runs it,"
    assert f"{warning} not its #! interpreter python3; make it executable" in result.stdout


def test_a_missing_parameter_points_at_what_exists(cmd: Run) -> None:
    assert cmd("disco-param", "set", "x/y", "1").returncode == 0
    assert_one_error(
        cmd("disco-param", "get", "a/b"), 1, "'a/b' does not exist", "'disco-param keys'"
    )
    assert_one_error(cmd("disco-param", "get", "x/z/w"), 1, "'disco-param keys x'")
    assert_one_error(cmd("disco-param", "get", "x/y/w"), 1, "'x/y' is a value", "get x/y")


def test_check_hints_keep_the_config_given(cmd: Run, tmp_path: Path) -> None:
    server, config = seed_copy(tmp_path), tmp_path / "elsewhere.conf"
    env = {"HOME": str(tmp_path / "home")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return cmd("disco-server", *argv, "--config", str(config), env=env)

    assert run("init", str(server)).returncode == 0
    (server / "modules/new-1.0").mkdir()
    result = run("check")
    assert result.returncode == 1
    assert f"run 'disco-server sync {server} --config {config}'" in result.stdout
    other = tmp_path / "other"
    other.mkdir()
    assert_one_error(run("sync", str(other)), 1, f"disco-server init {other} --config {config}")


@pytest.mark.parametrize(
    "uri, says",
    [
        (
            "file:///srv/disco",
            ["does not fetch over file://", "write the directory itself: /srv/disco"],
        ),
        ("http://example.com/disco", ["does not fetch over http://", "rsync://host/"]),
        (
            "ssh://disco@example.com:2222/x",
            ["ssh://", "[user@]host[:port]", "disco@example.com:2222"],
        ),
    ],
)
def test_a_url_disco_does_not_speak_is_named_with_what_to_write(
    cmd: Run, uri: str, says: list[str]
) -> None:
    result = cmd("disco", "dance", "--noop", "--server", uri, "--node", SEED_NODE)
    assert_one_error(result, 1, f"server URI '{uri}'", *says)


def test_a_bare_word_no_host_has_says_it_was_taken_for_a_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh's own words, as a fetch gets them (no name is looked up here)."""
    (tmp_path / "srv").mkdir()
    monkeypatch.chdir(tmp_path)
    stderr = "ssh: Could not resolve hostname srv: Name or service not known\n"
    for uri, fix in (("srv", "write ./srv"), ("web1", "a path with a '/'")):
        problem = ssh_problem(stderr.replace("srv", uri), parse_server(uri))
        assert problem is not None
        assert f"could not resolve the host name {uri}" in problem.message and fix in problem.hint
