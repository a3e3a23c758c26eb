"""Where a dance's output goes (issue 22): a reader of stdout that goes away stops
nothing, `--json` keeps stdout for its one document, a refused dance says why in one too,
and on a terminal the progress line never shares a line with a step's output. Every
live dance targets a scratch root."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, Run
from test_dance_steps import NODE, dance, make_server

LOUD = "head -c 1000000 /dev/zero | tr '\\\\0' x; echo\n"  # 1 MB on stdout


def loud_server(where: Path) -> Path:
    """Three modules, each printing a megabyte on stdout before it writes its file."""
    return make_server(where, {
        name: {"scripts/10-loud.sh": f"{LOUD}echo {name} > /etc/{name}.done\n"}
        for name in ("a", "b", "c")
    })  # fmt: skip


def test_a_live_dance_piped_into_head_finishes_every_module(
    state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    argv = [str(BIN / "disco"), "--state-dir", str(state), "dance", "--server"]
    argv += [str(loud_server(tmp_path / "srv")), "--node", NODE, "--root", str(scratch_root)]
    env = {**os.environ, "NO_COLOR": "1", "NOOP": ""}
    disco = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)  # fmt: skip
    head = subprocess.Popen(["head", "-1"], stdin=disco.stdout, stdout=subprocess.PIPE)
    assert disco.stdout is not None
    disco.stdout.close()  # head alone reads it, and goes away after one line
    first, _ = head.communicate(timeout=120)
    _, err = disco.communicate(timeout=300)
    assert first == b"info: Ready to dance : a b c\n"
    assert disco.returncode == 0, err
    for name in ("a", "b", "c"):  # every module ran and was committed
        assert (scratch_root / f"etc/{name}.done").read_text() == f"{name}\n"
    listed = subprocess.run([str(BIN / "disco"), "--state-dir", str(state), "history"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert " live " in listed and "3 change(s)  0 failure(s)  exit 0" in listed, listed


def test_a_failing_live_dance_piped_into_head_exits_1(
    state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    server = loud_server(tmp_path / "srv")
    (server / "modules/b/scripts/20-fail.sh").write_text("exit 3\n")
    command = (f"{BIN / 'disco'} --state-dir {state} dance --server {server} --node {NODE}"
               f" --root {scratch_root} | head -1; exit ${{PIPESTATUS[0]}}")  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1", "NOOP": ""}
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stderr
    assert "error: b: script 20-fail.sh exited with status 3" in result.stderr
    assert (scratch_root / "etc/c.done").exists()  # unrelated modules still ran


# -- --json ------------------------------------------------------------------------------


def test_json_stdout_is_the_document_alone_with_the_steps_output_in_it(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {
        "a": {"templates/etc/t.conf": "echo made; echo template-noise >&2\n",
              "scripts/10-say.sh": "echo said-on-stdout\necho said-on-stderr >&2\n"},
        "b": {"scripts/10-say.sh": "echo b-said\n"},
    })  # fmt: skip
    for noop in (True, False):
        result = dance(cmd, server, scratch_root, "--json", noop=noop)
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)  # the document and nothing else
        assert document["error"] is None and document["exit"] == 0
        assert document["output"] == [
            {"module": "a", "text": "template-noise\nsaid-on-stdout\nsaid-on-stderr\n"},
            {"module": "b", "text": "b-said\n"},
        ]
        for line in ("said-on-stdout", "said-on-stderr", "b-said", "template-noise"):
            assert line in result.stderr.splitlines()  # the steps' output, on stderr
        assert "info: Processing a" in result.stderr
    assert (scratch_root / "etc/t.conf").read_text() == "made\n"


def refused(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    """A refused dance: exit `status`, its document on stdout, one `error:` on stderr."""
    assert result.returncode == status, result.stderr
    document = json.loads(result.stdout)
    assert document["exit"] == status and document["changes"] == []
    for word in words:
        assert word in document["error"], document
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


def test_a_refused_json_dance_prints_its_error_as_a_document(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"a": {"files/etc/a": "a\n"}})
    refused(dance(cmd, tmp_path / "nowhere", scratch_root, "--json"), 1, "nowhere")
    refused(dance(cmd, server, scratch_root, "--json", "--timeout", "abc"), 2, "--timeout")
    refused(dance(cmd, server, scratch_root, "--json", "--diff", "x"), 2, "--diff")
    refused(dance(cmd, server, scratch_root, "--json", "--module", "zz"), 2, "zz")
    assert dance(cmd, server, scratch_root).returncode == 0
    fd = os.open(state / "lock", os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused(dance(cmd, server, scratch_root, "--json"), 3, "lock")
        locked = dance(cmd, server, scratch_root, "--json", "--detailed-exitcodes")
        refused(locked, 1, "lock")
    finally:
        os.close(fd)


@pytest.mark.parametrize("flag", [["--timeout", "abc"], ["--timeout", "-1"], ["--port", "x"]])
def test_a_bad_number_on_the_command_line_is_a_usage_error(
    flag: list[str], cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"a": {"files/etc/a": "a\n"}})
    result = dance(cmd, server, scratch_root, *flag)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: disco dance: argument {flag[0]}: '{flag[1]}'")


# -- the terminal ---------------------------------------------------------------------------


def on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run `argv` with stdout and stderr on one pseudo-terminal: its status, and all the
    terminal got."""
    leader, follower = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "NOOP": ""}
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower,
                               stderr=follower, env=env)  # fmt: skip
    os.close(follower)
    seen = b""
    try:
        while select.select([leader], [], [], 120)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other end closed: the dance is over
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        status = process.wait(timeout=120)
    return status, seen.decode(errors="replace")


def test_on_a_terminal_step_output_never_shares_a_line_with_the_progress_line(
    state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    script = "for i in 1 2 3; do echo out-$i; echo err-$i >&2; done; printf 'no newline'\n"
    server = make_server(tmp_path / "srv", {
        "a": {"scripts/10-say.sh": script, "scripts/20-say.sh": script},
        # b ends its line: the progress line comes back only after a newline, and b's
        # output may reach the terminal in one piece.
        "b": {"requires": "a\n", "scripts/10-say.sh": script + "echo\n"},
    })  # fmt: skip
    for noop in ("--noop", "--quiet"):  # NOOP through the tee; live with no line of disco's
        argv = [str(BIN / "disco"), "--state-dir", str(state), "dance", noop, "--server"]
        argv += [str(server), "--node", NODE, "--root", str(scratch_root)]
        status, terminal = on_a_terminal(argv)
        assert status == 0, terminal
        assert "[module 1 of 2: a" in terminal and "[module 2 of 2: b" in terminal
        # What stays on the screen: each "\r\033[K" wipes its line.
        lines = [line.split("\r\x1b[K")[-1] for line in terminal.split("\r\n")]
        for i in (1, 2, 3):
            said = [line.replace("no newline", "") for line in lines]  # runs into the next
            assert said.count(f"out-{i}") == 3 and said.count(f"err-{i}") == 3, lines
        # The progress line is always taken away ("\r\033[K") before anything else comes.
        assert not re.search(r"\[module [^\]\n]*\](?!\r\x1b\[K|$)", terminal), terminal


def test_a_rollback_piped_into_head_rolls_back_everything(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    big = "".join(f"line {i}\n" for i in range(100000))  # its diff: 1 MB of output
    server = make_server(tmp_path / "srv", {"a": {"files/etc/big": big, "files/etc/small": "s\n"}})
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    assert (scratch_root / "etc/big").exists()
    command = (f"{BIN / 'disco'} --state-dir {state} rollback --root {scratch_root} | head -1;"
               " exit ${PIPESTATUS[0]}")  # fmt: skip
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("info: Rolling back dance(s) 1")
    assert not (scratch_root / "etc/big").exists() and not (scratch_root / "etc/small").exists()
    listed = cmd("disco", "history").stdout.splitlines()
    assert "rollback: rolled back by 2" in listed[0], listed


def test_a_step_printing_disco_s_markers_is_passed_on_as_it_is(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    """Nothing a step prints changes how disco reads it: its bytes reach stderr and the
    document as they were, and disco's own lines after them are whole."""
    forged = "x\\0disco-own:99999\\ny\\0disco-own:3\\nzz\\0\\0disco-module:b\\n"
    server = make_server(tmp_path / "srv", {
        "a": {"scripts/10-forge.sh": f"printf '{forged}'; printf '{forged}' >&2\n"},
        "b": {"scripts/10-say.sh": "echo b\n"},
    })  # fmt: skip
    result = dance(cmd, server, scratch_root, "--json")
    assert result.returncode == 0, result.stderr
    text = forged.replace("\\0", "\0").replace("\\n", "\n")
    assert text * 2 in result.stderr
    assert "\ninfo: Processing b\n" in result.stderr
    assert json.loads(result.stdout)["output"][0] == {"module": "a", "text": text * 2}
