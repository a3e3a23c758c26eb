"""Live dances undone: recovery after a dance killed at every commit point, `disco
rollback` and `disco history`, the lock, signals, hard links (DESIGN §6, §8). Every live
dance targets a scratch root; servers are built in a temporary folder."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, Run, assert_one_error
from test_dance_steps import NODE, dance, make_server
from test_journal import Snapshot, snapshot

MTIME = 1_500_000_000_000_000_000

# One script changing every kind of thing, in one commit.
EVERYTHING = """\
set -e
echo new >> /etc/app.conf
chmod 600 /etc/app.conf
chown 12:34 /etc/owned
rm -f /etc/gone
rm -rf /etc/tree
ln -sfn elsewhere /etc/link
mkdir -p /etc/made/deep && echo made > /etc/made/deep/file
python3 -c 'import os; os.setxattr("/etc/tagged", "user.tag", b"new")'
"""


def prepare(root: Path) -> None:
    """What EVERYTHING changes, with owners, modes, xattrs and times to get back."""
    etc = root / "etc"
    (etc / "app.conf").write_text("old\n")
    (etc / "app.conf").chmod(0o640)
    (etc / "owned").write_text("owned\n")
    (etc / "gone").write_text("gone\n")
    (etc / "tree/sub").mkdir(parents=True)
    (etc / "tree/sub/f").write_text("f\n")
    os.symlink("somewhere", etc / "link")
    (etc / "tagged").write_text("tagged\n")
    os.setxattr(etc / "tagged", "user.tag", b"old")
    for p in ("app.conf", "owned", "gone", "tree/sub/f", "tagged"):
        os.utime(etc / p, ns=(MTIME, MTIME))
    os.utime(etc / "link", ns=(MTIME, MTIME), follow_symlinks=False)


def state_of(root: Path) -> Snapshot:
    return snapshot(root / "etc")


def server_with(tmp_path: Path, scripts: dict[str, str], name: str = "srv") -> Path:
    return make_server(tmp_path / name, {"m": {f"scripts/{k}": v for k, v in scripts.items()}})


def rollback(
    cmd: Run, root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return cmd("disco", "rollback", "--root", str(root), *args, env=env)


def test_rollback_puts_back_every_path_byte_for_byte(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    prepare(scratch_root)
    before = state_of(scratch_root)
    server = server_with(tmp_path, {"10-all.sh": EVERYTHING})
    result = dance(cmd, server, scratch_root, noop=False)
    assert result.returncode == 0, result.stdout + result.stderr
    after = state_of(scratch_root)
    assert after != before and not (scratch_root / "etc/gone").exists()

    listed = cmd("disco", "history").stdout.splitlines()
    assert len(listed) == 1 and " live " in listed[0] and str(scratch_root) in listed[0]
    assert "rollback: yes" in listed[0] and "0 failure(s)" in listed[0]

    noop = rollback(cmd, scratch_root, "--noop")
    assert noop.returncode == 0, noop.stderr
    assert "info: Would roll back dance(s) 1" in noop.stdout
    assert "info: File: file: /etc/gone : Created" in noop.stdout
    assert "info: File: directory: /etc/made : Deleted" in noop.stdout
    assert state_of(scratch_root) == after  # --noop changes nothing

    done = rollback(cmd, scratch_root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert state_of(scratch_root) == before
    assert "info: Rolled back dance(s) 1" in done.stdout
    listed = cmd("disco", "history").stdout.splitlines()
    assert "rollback: rolled back by 2" in listed[0] and " rollback " in listed[1]
    report = json.loads(cmd("disco", "report", "--json").stdout)
    assert report["mode"] == "rollback" and report["changes"]

    again = rollback(cmd, scratch_root)
    assert_one_error(again, 1, "no live dance", str(scratch_root), "disco history")


def test_rollback_to_a_dance_undoes_every_later_one(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    prepare(scratch_root)
    before = state_of(scratch_root)
    first = server_with(tmp_path, {"10-a.sh": "echo one > /etc/app.conf\n"}, "one")
    second = server_with(tmp_path, {"10-b.sh": "echo two > /etc/app.conf\nrm /etc/gone\n"}, "two")
    for server in (first, second):
        assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    assert (scratch_root / "etc/app.conf").read_text() == "two\n"
    result = rollback(cmd, scratch_root, "1")
    assert result.returncode == 0, result.stderr
    assert "dance(s) 2, 1" in result.stdout
    assert state_of(scratch_root) == before


def test_a_path_changed_since_is_not_overwritten_unless_forced(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    prepare(scratch_root)
    before = state_of(scratch_root)
    server = server_with(tmp_path, {"10-a.sh": "echo mine > /etc/app.conf\n"})
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    (scratch_root / "etc/app.conf").write_text("edited by hand\n")
    edited = state_of(scratch_root)
    refused = rollback(cmd, scratch_root)
    assert_one_error(refused, 1, "/etc/app.conf", "changed since dance 1", "--force")
    assert state_of(scratch_root) == edited
    forced = rollback(cmd, scratch_root, "--force")
    assert forced.returncode == 0, forced.stderr
    assert state_of(scratch_root) == before


def test_a_file_put_in_a_directory_a_dance_made_is_not_removed(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = server_with(tmp_path, {"10-a.sh": "mkdir /etc/made\n"})
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    (scratch_root / "etc/made/mine").write_text("mine\n")
    assert_one_error(rollback(cmd, scratch_root), 1, "/etc/made/mine")
    assert (scratch_root / "etc/made/mine").exists()


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["7"], 1, ["no dance '7'", "disco history"]),
        (["x1"], 2, ["'x1' is not a dance id"]),
        (["2"], 1, ["dance 2 was a NOOP dance"]),
    ],
)
def test_bad_rollback_requests_are_errors(
    cmd: Run, tmp_path: Path, scratch_root: Path, args: list[str], status: int, words: list[str]
) -> None:
    server = server_with(tmp_path, {"10-a.sh": "echo x > /etc/x\n"})
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    assert dance(cmd, server, scratch_root).returncode == 0  # NOOP: dance 2
    after = state_of(scratch_root)
    assert_one_error(rollback(cmd, scratch_root, *args), status, *words)
    assert state_of(scratch_root) == after


def test_rollback_on_another_root_or_without_history_is_an_error(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    assert_one_error(rollback(cmd, scratch_root), 1, "no live dance", "no history")
    server = server_with(tmp_path, {"10-a.sh": "echo x > /etc/x\n"})
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    assert_one_error(rollback(cmd, other, "1"), 1, f"dance 1 was on {scratch_root}", "--root")


def test_a_dance_killed_at_any_commit_point_is_undone_by_the_next(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    prepare(scratch_root)
    before = state_of(scratch_root)
    server = server_with(tmp_path, {"10-all.sh": EVERYTHING})
    k = 0
    while True:
        k += 1
        env = {"NOOP": "", "DISCO_TEST_KILL_AT": f"{k}:KILL"}
        killed = cmd("disco", "dance", "--server", str(server), "--node", NODE,
                     "--root", str(scratch_root), env=env)  # fmt: skip
        if killed.returncode == 0:
            break  # past the last commit point: the dance ran to its end
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        recovered = dance(cmd, server, scratch_root)  # NOOP: recovers, then shows
        assert recovered.returncode == 0, recovered.stderr
        lines = [x for x in recovered.stdout.splitlines() if "cut short" in x]
        if state_of(scratch_root) == before:
            assert len(lines) == 1 and lines[0].startswith("warning: dance ")
            assert "m: 10-all.sh" in lines[0] and "undone" in lines[0], lines
        else:  # killed after the commit's end: nothing to undo
            assert lines == [] and not (scratch_root / "etc/gone").exists()
            assert rollback(cmd, scratch_root).returncode == 0
        assert state_of(scratch_root) == before, k
    assert k - 1 >= 13  # every operation of the commit (9 or more), and 4 of the journal


def test_sigterm_during_a_commit_finishes_it_and_commits_nothing_more(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = server_with(tmp_path, {
        "10-a.sh": "echo a > /etc/a\necho b > /etc/b\necho c > /etc/c\n",
        "20-b.sh": "echo later > /etc/later\n",
    })  # fmt: skip
    env = {"NOOP": "", "DISCO_TEST_KILL_AT": "3:TERM"}  # after the first operation
    result = cmd("disco", "dance", "--server", str(server), "--node", NODE,
                 "--root", str(scratch_root), env=env)  # fmt: skip
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert all((scratch_root / "etc" / n).read_text() == f"{n}\n" for n in "abc")
    assert not (scratch_root / "etc/later").exists()
    assert_one_error(result, 143, "interrupted by SIGTERM", "1 commit(s)", "m: 10-a.sh")
    report = json.loads(cmd("disco", "report", "--json").stdout)
    assert sorted(c["path"] for c in report["changes"]) == ["/etc/a", "/etc/b", "/etc/c"]


@pytest.mark.parametrize("noop", [False, True], ids=["live", "noop"])
def test_a_signal_during_a_step_stops_the_dance_at_once(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path, noop: bool
) -> None:
    server = server_with(tmp_path, {
        "10-a.sh": "echo a > /etc/a\n",
        "20-wait.sh": "echo waiting\nexec sleep 60\n",
        "30-c.sh": "echo c > /etc/c\n",
    })  # fmt: skip
    argv = [str(BIN / "disco"), "dance", "--server", str(server), "--node", NODE,
            "--root", str(scratch_root), *(["--noop"] if noop else [])]  # fmt: skip
    env = {**os.environ, "DISCO_STATE": str(state), "NO_COLOR": "1", "NOOP": ""}
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        for text in proc.stdout:
            if text.strip() == "waiting":
                break
        proc.send_signal(signal.SIGINT if noop else signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == (130 if noop else 143), err
    assert (scratch_root / "etc/a").exists() is not noop
    assert not (scratch_root / "etc/c").exists()
    if noop:
        assert "a NOOP dance changes nothing" in err
    else:
        assert "1 commit(s) were applied (m: 10-a.sh)" in err


def test_hard_links_made_by_a_script_or_delivered_stay_one_file(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    (scratch_root / "etc/existing").write_text("existing\n")
    server = make_server(tmp_path / "srv", {"m": {
        "files/etc/one": "same\n",
        "scripts/10-ln.sh": "echo x > /etc/a\nln /etc/a /etc/b\nln /etc/existing /etc/also\n",
    }})  # fmt: skip
    os.link(server / "modules/m/files/etc/one", server / "modules/m/files/etc/two")
    result = dance(cmd, server, scratch_root, noop=False)
    assert result.returncode == 0, result.stdout + result.stderr
    etc = scratch_root / "etc"
    for pair in (("a", "b"), ("existing", "also"), ("one", "two")):
        first, second = ((etc / name).lstat() for name in pair)
        assert first.st_ino == second.st_ino, pair
    for path in ("/etc/a", "/etc/b", "/etc/also", "/etc/one", "/etc/two"):
        assert f"info: File: file: {path} : Created" in result.stdout
    assert stat.S_ISREG((etc / "b").lstat().st_mode)
    assert rollback(cmd, scratch_root).returncode == 0
    assert sorted(os.listdir(etc)) == sorted(n for n in os.listdir(etc) if n not in "ab")


# -- the lock ---------------------------------------------------------------------------


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\ndisco dance --root /srv/x\\n2026-12-02T10:00:00.000000Z\\n".encode())
print("held", flush=True)
time.sleep(float(sys.argv[2]))
os.ftruncate(fd, 0)
"""


def holder(state: Path, seconds: float) -> subprocess.Popen[str]:
    state.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(BIN / "python"), "-c", HOLD, str(state / "lock"), str(seconds)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_busy_lock_names_its_holder_and_wait_waits_for_it(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    server = server_with(tmp_path, {"10-a.sh": "echo x > /etc/x\n"})
    proc = holder(state, 3)
    try:
        busy = dance(cmd, server, scratch_root, "--wait", "0.3")
        assert_one_error(busy, 3, str(state / "lock"), f"pid {proc.pid}",
                         "'disco dance --root /srv/x'", "started 2026-12-02T10:00:00",
                         "waited 0.3 s")  # fmt: skip
        waited = dance(cmd, server, scratch_root, "--wait", "30")
        assert waited.returncode == 0, waited.stderr
        assert "took over" not in waited.stdout  # it let go as it should
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_dead_dance_is_taken_over_with_a_warning(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    server = server_with(tmp_path, {"10-a.sh": "echo x > /etc/x\n"})
    proc = holder(state, 60)
    proc.kill()  # dies holding it: the kernel lets go, the file still names it
    proc.wait()
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 0, result.stderr
    assert f"warning: took over the lock {state / 'lock'} from a dance that died (pid {proc.pid}" \
        in result.stdout  # fmt: skip
    assert (state / "lock").read_text() == ""  # let go cleanly


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_a_bad_wait_is_a_usage_error(cmd: Run, value: str) -> None:
    assert_one_error(cmd("disco", "dance", "--noop", "--wait", value), 2, "--wait", value)


def test_history_with_no_dance_says_so(cmd: Run) -> None:
    result = cmd("disco", "history")
    assert result.returncode == 0 and "no dance kept" in result.stdout


@pytest.mark.parametrize("argv", [["history", "--help"], ["rollback", "--help"]])
def test_help_of_history_and_rollback_shows_examples(cmd: Run, argv: list[str]) -> None:
    result = cmd("disco", *argv)
    assert result.returncode == 0 and f"disco {argv[0]}" in result.stdout
    assert "example" in result.stdout


def test_a_rollback_killed_at_any_commit_point_is_undone_and_can_be_done_again(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    prepare(scratch_root)
    before = state_of(scratch_root)
    server = server_with(tmp_path, {"10-all.sh": EVERYTHING})
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    after = state_of(scratch_root)
    k = 0
    while True:
        k += 1
        killed = rollback(cmd, scratch_root, env={"DISCO_TEST_KILL_AT": f"{k}:KILL"})
        if killed.returncode == 0:
            break
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        listed = cmd("disco", "rollback", "--root", str(scratch_root), "--noop")
        if state_of(scratch_root) == before:  # killed after its commit's end: it is done
            assert_one_error(listed, 1, "no live dance")
            break
        assert listed.returncode == 0, listed.stderr
        cut = [x for x in listed.stdout.splitlines() if "cut short" in x]
        assert state_of(scratch_root) == after, k  # the rollback undone
        assert len(cut) == 1 and "_rollback: undo 1" in cut[0], cut
        assert "Would roll back dance(s) 1 " in listed.stdout
    assert k >= 12
    assert state_of(scratch_root) == before


@pytest.mark.parametrize(
    ("text", "words"),
    [("{damaged", ["cannot be read", "move it aside"]), ('{"format": 2}', ["newer disco"])],
)
def test_a_bad_journal_stops_a_dance_and_a_rollback_and_is_kept(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path, text: str, words: list[str]
) -> None:
    server = server_with(tmp_path, {"10-a.sh": "echo x > /etc/x\n"})
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    (state / "txn/journal").mkdir()
    (state / "txn/journal/journal.json").write_text(text)
    assert_one_error(dance(cmd, server, scratch_root), 1, "commit journal", *words)
    assert_one_error(rollback(cmd, scratch_root), 1, "commit journal", *words)
    assert (state / "txn/journal/journal.json").read_text() == text
    assert (scratch_root / "etc/x").exists()


def test_a_rollback_hides_the_content_of_sensitive_paths_as_a_dance_does(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    (scratch_root / "etc/shadow").write_text("root:secret-hash:19000::::::\n")
    server = server_with(tmp_path, {"10-a.sh": "echo 'root:new-hash:19001::::::' > /etc/shadow\n"})
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    shown = rollback(cmd, scratch_root, "--noop")
    assert shown.returncode == 0, shown.stderr
    assert "info: File: file: /etc/shadow : Modified" in shown.stdout
    assert "(content hidden: sensitive)" in shown.stdout
    assert "hash" not in shown.stdout


def test_rollback_undoes_the_last_dance_that_changed_something(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    prepare(scratch_root)
    before = state_of(scratch_root)
    server = server_with(tmp_path, {"10-a.sh": "echo set > /etc/app.conf\n"})
    for _ in range(2):  # the second dance changes nothing
        assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    result = rollback(cmd, scratch_root)
    assert result.returncode == 0, result.stderr
    assert "Rolling back dance(s) 2, 1 " in result.stdout
    assert state_of(scratch_root) == before


def test_a_mode_change_rolled_back_after_an_edit_brings_the_original_content_back(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    """Issue 22: the undo log of a chmod once hard-linked the live file, so an edit after
    the dance edited the "original" too, and each dance gave the file one more name."""
    prepare(scratch_root)
    conf = scratch_root / "etc/app.conf"
    toggle = "f=/etc/app.conf; [ $(stat -c %a $f) = 600 ] && chmod 640 $f || chmod 600 $f\n"
    server = server_with(tmp_path, {"10-mode.sh": toggle})
    for _ in range(3):
        assert dance(cmd, server, scratch_root, noop=False).returncode == 0
        assert conf.stat().st_nlink == 1
    conf.write_text("edited by hand\n")
    assert rollback(cmd, scratch_root, "1", "--force").returncode == 0
    assert conf.read_text() == "old\n" and stat.S_IMODE(conf.stat().st_mode) == 0o640


def test_rollback_puts_back_the_mtimes_of_the_directories_it_changed_in(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    """Issue 22: /etc, /opt's parent and /var/lib kept the mtimes the dance gave them. A
    directory someone changed since the dance keeps its own."""
    prepare(scratch_root)
    (scratch_root / "var/lib/old").write_text("old\n")
    (scratch_root / "srv/mine").mkdir()
    dirs = ["", "etc", "var/lib", "srv", "srv/mine"]
    for d in dirs:
        os.utime(scratch_root / d, ns=(MTIME, MTIME))
    script = (
        "echo new > /etc/new; echo more >> /etc/app.conf; mkdir -p /opt/x; rm /var/lib/old\n"
        "touch /srv/made /srv/mine/made\n"
    )
    server = server_with(tmp_path, {"10-a.sh": script})
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    assert all((scratch_root / d).stat().st_mtime_ns != MTIME for d in dirs)
    (scratch_root / "srv/mine/by-hand").write_text("mine\n")  # changed since: keeps its own
    result = rollback(cmd, scratch_root)
    assert result.returncode == 0, result.stderr
    assert {d: (scratch_root / d).stat().st_mtime_ns == MTIME for d in dirs} == {
        "": True,
        "etc": True,
        "var/lib": True,
        "srv": True,
        "srv/mine": False,
    }
