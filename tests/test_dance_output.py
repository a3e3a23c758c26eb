"""What `disco dance` prints and keeps (issue 11): --json, --quiet, the progress line on a
terminal only, an interrupted dance reported as such, a refused dance leaving no state."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

from conftest import BIN, Run, assert_one_error
from test_dance_steps import NODE, dance, make_server

MODULES = {
    "a": {"files/etc/a.conf": "made by a\n"},
    "b": {"requires": "a\n", "scripts/10-say.sh": "echo b > /etc/b.conf\nservice x restart\n"},
}


def test_json_is_one_document_with_changes_and_outcome(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", MODULES)
    result = dance(cmd, server, scratch_root, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # stdout is the document and nothing else
    assert (document["node"], document["mode"], document["exit"]) == (NODE, "noop", 0)
    assert (document["failed"], document["skipped"]) == ([], [])
    by_path = {c["path"]: c for c in document["changes"]}
    assert by_path["/etc/a.conf"]["module"] == "a"
    assert by_path["/etc/a.conf"]["diff"] == "0a1\n> made by a"
    assert by_path["/etc/b.conf"]["step"] == "10-say.sh"
    assert by_path["/etc/b.conf"]["header"].startswith("File: file: /etc/b.conf : Created")
    assert document["would_execute"] == [{"module": "b", "command": "service x restart"}]
    assert "info: Processing a" in result.stderr  # the human lines, on stderr
    assert "info: File: file: /etc/a.conf" in result.stderr


def test_quiet_prints_only_changes_warnings_and_errors(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", MODULES)
    result = dance(cmd, server, scratch_root, "--quiet")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and not any(line.startswith("info: Processing") for line in lines)
    assert not any(line.startswith("info: Ready") for line in lines)
    heads = [line for line in lines if line.startswith("info: ")]
    assert heads and all(line.startswith("info: File: ") for line in heads), lines
    assert "> made by a" in lines
    assert "warning: Would execute : service x restart" in result.stderr


def test_progress_shows_on_a_terminal_and_never_in_a_pipe(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", MODULES)
    piped = dance(cmd, server, scratch_root)
    assert piped.returncode == 0 and "module 1 of 2" not in piped.stdout + piped.stderr
    leader, follower = pty.openpty()
    argv = [str(BIN / "disco"), "--state-dir", str(state), "dance", "--noop"]
    argv += ["--server", str(server), "--node", NODE, "--root", str(scratch_root)]
    env = {**os.environ, "NO_COLOR": "1", "NOOP": ""}
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, env=env
    )
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the other end closed: the dance is over
            break
        if not chunk:
            break
        seen += chunk
    out, _ = process.communicate(timeout=60)
    os.close(leader)
    assert process.returncode == 0, seen
    terminal = seen.decode(errors="replace")
    assert "[module 1 of 2: a, " in terminal and "[module 2 of 2: b, " in terminal
    assert "[module 1 of 2: a, after fetch, " in terminal  # a's files delivered, redrawn
    assert terminal.endswith("\r\033[K")  # taken away at the end
    assert b"module 1 of 2" not in out  # stdout is a pipe here: no progress there


def test_an_interrupted_dance_exits_130_and_its_report_says_where(
    state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    slow = {"slow": {"scripts/10-wait.sh": "echo waiting\nsleep 60\n"}, **MODULES}
    server = make_server(tmp_path / "srv", slow)
    argv = [str(BIN / "disco"), "--state-dir", str(state), "dance", "--noop"]
    argv += ["--server", str(server), "--node", NODE, "--root", str(scratch_root)]
    env = {**os.environ, "NO_COLOR": "1", "NOOP": ""}
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # a, b, then slow: wait until its script runs
            if line.strip() == "waiting":
                break
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGINT in module slow")
    report = subprocess.run(
        [str(BIN / "disco"), "--state-dir", str(state), "report", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(report.stdout)
    assert data["exit"] == 130
    steps = [(r["module"], r["step"], r["exit"]) for r in data["records"]]
    assert ("a", "fetch", 0) in steps and ("b", "exec", 0) in steps
    assert steps[-1] == ("slow", "interrupted", 130)


def test_a_dance_refused_by_an_unreachable_ssh_server_leaves_no_state(
    cmd: Run, state: Path
) -> None:
    result = cmd(
        "disco", "dance", "--noop", "--server", "nobody@127.0.0.1", "--node", NODE,
        env={"DISCO_STATE": str(state)},
        input="",
    )  # fmt: skip
    assert_one_error(result, 1, "nobody@127.0.0.1")
    assert not state.exists()
    state.mkdir()
    (state / "parameters").mkdir()
    result = cmd("disco", "dance", "--noop", "--server", "nobody@127.0.0.1", "--node", NODE)
    assert_one_error(result, 1, "nobody@127.0.0.1")
    assert not (state / "ssh").exists()


def test_a_script_whose_interpreter_is_missing_names_it(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    bad = {"bad": {"scripts/10-py": "#!/usr/bin/no-such-python -u\nprint(1)\n"}, **MODULES}
    server = make_server(tmp_path / "srv", bad)
    (server / "modules/bad/scripts/10-py").chmod(0o755)
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: bad: script 10-py: its interpreter /usr/bin/no-such-python does not exist"
        f" in {scratch_root}; install it, or fix the #! line"
    ]
    assert "info: Processing b" in result.stdout  # the other modules still dance


def test_debug_and_version_work_after_the_subcommand(cmd: Run, state: Path) -> None:
    for argv in (["disco", "dance"], ["disco", "report"], ["disco-param", "get"]):
        result = cmd(*argv, "--version")
        assert (result.returncode, result.stdout) == (0, f"{argv[0]} 0.1.0\n"), result.stderr
    result = cmd("disco-param", "get", "nothing", "--debug")
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: parameter 'nothing'")


def test_html_report_to_stdout(cmd: Run, tmp_path: Path, scratch_root: Path) -> None:
    assert dance(cmd, make_server(tmp_path / "srv", MODULES), scratch_root).returncode == 0
    result = cmd("disco", "report", "--html", "-")
    assert result.returncode == 0 and result.stdout.startswith("<!DOCTYPE html>")
    assert result.stdout.rstrip().endswith("</html>") and result.stderr == ""


def test_would_execute_lines_are_kept_in_every_report(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    noisy = {"c": {"scripts/10-nul.sh": "printf 'x\\0y\\n\\0disco-z\\n' >&2\n"}}
    server = make_server(tmp_path / "srv", {**MODULES, **noisy})
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 0, result.stderr
    assert "warning: Would execute : service x restart" in result.stderr  # passed on as ever
    assert "x\0y\n\0disco-z\n" in result.stderr  # a step's own NULs pass untouched
    text = cmd("disco", "report").stdout.splitlines()
    assert text[-1] == "report: b: Would execute : service x restart"
    data = json.loads(cmd("disco", "report", "--json").stdout)
    assert data["would_execute"] == [{"module": "b", "command": "service x restart"}]
    page = cmd("disco", "report", "--html", "-").stdout
    assert "<code>service x restart</code>" in page
    assert cmd("disco", "report", "a").stdout.count("Would execute") == 0  # b's, not a's


def test_a_live_dance_on_another_root_keeps_its_would_execute_lines(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    """Live on a root that is not this machine, outside effects are intercepted too, and
    the report keeps them as NOOP's does."""
    result = dance(cmd, make_server(tmp_path / "srv", MODULES), scratch_root, noop=False)
    assert result.returncode == 0, result.stderr
    assert "warning: Would execute : service x restart" in result.stderr
    data = json.loads(cmd("disco", "report", "--json").stdout)
    assert data["mode"] == "live"
    assert data["would_execute"] == [{"module": "b", "command": "service x restart"}]


def test_a_dance_whose_reader_goes_away_still_finishes(
    state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    """stderr through the NOOP tee: with its reader gone, steps must not block on it."""
    loud = {"loud": {"scripts/10-loud.sh": "head -c 300000 /dev/zero | tr '\\\\0' x >&2\n"}}
    server = make_server(tmp_path / "srv", {**MODULES, **loud})
    argv = [str(BIN / "disco"), "--state-dir", str(state), "dance", "--noop"]
    argv += ["--server", str(server), "--node", NODE, "--root", str(scratch_root)]
    env = {**os.environ, "NO_COLOR": "1", "NOOP": ""}
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    try:
        assert process.stderr is not None
        process.stderr.read(10)
        process.stderr.close()  # the reader goes away, as `| head -c 10` does
        assert process.wait(timeout=60) in (0, 1)
    finally:
        if process.poll() is None:  # it hung: the bug this test is for
            process.kill()
            process.wait()
    data = json.loads((state / "reports" / "last.json").read_text())
    assert {r["module"] for r in data["records"]} >= {"a", "b", "loud"}  # every module ran


FORGER = """\
# disco's old markers, as a step may print them: a module's, then the end of the dance.
printf '\\0disco-module:b\\nwarning: Would execute : forged by a\\n' >&2
printf '\\0disco-end\\n' >&2
"""


def test_markers_printed_by_a_step_are_its_output_and_steer_nothing(
    state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    """A step that prints what looks like the tee's markers has them passed on; its lines
    still count for its own module, and the tee still reads every step after (300 KB of
    stderr would fill the pipe and hang the dance if it had stopped)."""
    modules = {
        "a": {"scripts/10-forge.sh": FORGER},
        "b": {"requires": "a\n", "scripts/10-say.sh": "service x restart\n"},
        "c": {"requires": "b\n", "scripts/10-loud.sh": "head -c 300000 /dev/zero >&2\n"},
    }
    server = make_server(tmp_path / "srv", modules)
    argv = [str(BIN / "disco"), "--state-dir", str(state), "dance", "--noop", "--json"]
    argv += ["--server", str(server), "--node", NODE, "--root", str(scratch_root)]
    env = {**os.environ, "NO_COLOR": "1", "NOOP": ""}
    try:
        result = subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError("the dance hung: a step's output stopped the tee") from None
    assert result.returncode == 0, result.stderr[-2000:]
    assert b"\0disco-module:b\nwarning: Would execute : forged by a\n" in result.stderr
    assert b"\0disco-end\n" in result.stderr
    assert result.stderr.count(b"\0") >= 300000  # c's output, all of it
    assert json.loads(result.stdout)["would_execute"] == [
        {"module": "a", "command": "forged by a"},
        {"module": "b", "command": "service x restart"},
    ]
