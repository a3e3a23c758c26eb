"""A live commit's flushes and their order (DESIGN §8), seen in the real system calls of a
commit run under strace; and what a power cut can leave that a kill -9 cannot (a rename
or a write not yet on disk), built on disk as the cut would leave it, undone by recovery.
(test_journal.py kills a commit at every point; test_rollback.py a dance and a rollback.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from disco.engine.changes import read_changes
from disco.live import history
from disco.live.commit import commit
from disco.live.journal import load, seal
from disco.live.recovery import recover
from test_commit import write
from test_journal import Snapshot, build, commit_in_child, snapshot

# The calls that make, replace or remove a name, and the flushes.
TRACED = "trace=syncfs,fsync,fdatasync,sync,rename,renameat,renameat2,link,linkat,unlink,"
TRACED += "unlinkat,mkdir,mkdirat,rmdir,symlink,symlinkat,mknod,mknodat,open,openat"
NAMED = re.compile(r'(?:(?:\d+<([^>]*)>|AT_FDCWD), )?"([^"]*)"')
CALL = re.compile(r"^(?:\d+ +)?(\w+)\((.*)\) += (-?\d+)")


# Two commits, then the end of the dance (seal), in a child under strace.
TWO = """
import sys
from pathlib import Path
from disco.engine.changes import read_changes
from disco.live.commit import commit
from disco.live.journal import seal
upper, root, txn, second = map(Path, sys.argv[1:5])
commit(txn, read_changes(upper, [root], exclude=()), root, "1", "mod", "exec 10-all")
commit(txn, read_changes(second, [root], exclude=()), root, "1", "mod", "exec 20-more")
seal(txn)
"""


def traced_commits(tmp: Path, root_fs: str) -> tuple[Path, Path, list[tuple[str, str]]]:
    """(root, txn, [(call, path)]): two commits and a seal under strace -f -y; the path is
    what a call makes or removes (the destination of a rename or link), or the file a
    flush is given. `root_fs` "tmpfs": the root on a filesystem of its own."""
    upper, root, txn = build(tmp)
    if root_fs == "tmpfs":
        moved = tmp / "built"
        root.rename(moved)
        root.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root)], check=True)
        subprocess.run(["cp", "-a", f"{moved}/.", str(root)], check=True)
    try:
        second = tmp / "second"
        write(second / "etc/second", b"second\n")
        (txn / "history/1").mkdir(parents=True)
        out = tmp / "strace"
        argv = ["strace", "-f", "-y", "-qq", "-e", TRACED, "-o", str(out)]
        argv += [sys.executable, "-c", TWO, str(upper), str(root), str(txn), str(second)]
        subprocess.run(argv, check=True)
    finally:
        if root_fs == "tmpfs":
            subprocess.run(["umount", "-l", str(root)], check=True)
    events = []
    for line in out.read_text().splitlines():
        m = CALL.match(line)
        if m is None or int(m.group(3)) < 0:
            continue
        call, args = m.group(1), m.group(2)
        if call in ("syncfs", "fsync", "fdatasync", "sync"):
            fd = re.match(r"\d+<([^>]*)>", args)
            events.append((call, fd.group(1) if fd else ""))
            continue
        if call.startswith("open") and "O_CREAT" not in args:
            continue
        names = [n if n.startswith("/") else f"{d}/{n}" for d, n in NAMED.findall(args)]
        if names:
            many = call.startswith(("rename", "link", "symlink"))
            events.append((call, names[-1] if many else names[0]))
    return root, txn, events


@pytest.mark.parametrize("root_fs", ["same", "tmpfs"])
def test_one_flush_a_commit_the_journal_before_the_root_the_root_before_the_history(
    tmp_path: Path, root_fs: str
) -> None:
    root, txn, events = traced_commits(tmp_path, root_fs)
    flushes = [i for i, (call, _) in enumerate(events) if "sync" in call]
    other = [("syncfs", str(root))] if root_fs == "tmpfs" else []
    # One syncfs of txn's filesystem a commit (with the root's first where that is
    # another one, from the second commit on), two at the end: nothing per file.
    assert [events[i] for i in flushes] == [
        ("syncfs", str(txn)), *other, ("syncfs", str(txn)), *other, ("syncfs", str(txn)),
        ("syncfs", str(txn)),
    ]  # fmt: skip
    first, second, sealed, last = (i for i in flushes if events[i] == ("syncfs", str(txn)))

    def where(test: Callable[[str, str], bool]) -> list[int]:
        return [i for i, (c, p) in enumerate(events) if "sync" not in c and test(c, p)]

    in_root = where(lambda c, p: p.startswith(f"{root}/"))
    into_new = where(lambda c, p: p.startswith(f"{txn}/journal.new/"))
    archived = where(lambda c, p: c.startswith("rename") and "/history/1/commits/" in p)
    ops2 = [i for i in in_root if i > second]
    ops1 = [i for i in in_root if first < i < second]
    assert ops1 and ops2 and len(archived) == 2, events
    assert not [i for i in in_root if i < first]  # nothing in the root before a flush
    # Each journal whole and on disk before its commit touches the root.
    assert max(i for i in into_new if i < first) < first < min(ops1)
    assert max(i for i in into_new if i < second) < second < min(ops2)
    # Each commit's changes flushed (the root's own syncfs first if it is elsewhere)
    # before its journal leaves txn/, and that on disk at the end.
    assert max(ops1) < second - len(other) and second < archived[0] < min(ops2)
    assert max(ops2) < sealed - len(other) and sealed < archived[1] < last


def another_boot(where: Path) -> None:
    """The journal in `where` as if written before this machine last booted."""
    data = json.loads((where / "journal.json").read_bytes())
    assert data["boot"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    data["boot"] = "0" * 8 + data["boot"][8:]
    (where / "journal.json").write_text(json.dumps(data))


@pytest.mark.parametrize("left", ["done", "archived, the rename lost"])
def test_a_done_commit_the_machine_went_down_before_flushing_is_undone_whole(
    tmp_path: Path, left: str
) -> None:
    """A power cut after a commit's operations, before the next flush (the next commit's,
    or the end of the dance): part of them may not be on disk, and txn/done (where the
    journal waits for that flush, or is back if its move into the history was lost)
    is from another boot. The next dance undoes that commit whole, never half."""
    upper, root, txn = build(tmp_path)
    before = snapshot(root)
    (txn / "history/1").mkdir(parents=True)
    commit(txn, read_changes(upper, [root], exclude=()), root, "1", "mod", "exec")
    assert snapshot(root) != before and (txn / "done").is_dir()
    if left != "done":
        seal(txn)
        os.rename(txn / "history/1/commits/1", txn / "done")
    another_boot(txn / "done")
    warnings: list[str] = []
    recover(txn, warnings.append)
    assert snapshot(root) == before
    (warning,) = warnings
    assert "dance 1 went down before its commit of mod: exec was on disk; undone" in warning
    assert not (txn / "done").exists() and not (txn / "history/1/commits/1").exists()


def test_a_done_commit_of_this_boot_is_kept(tmp_path: Path) -> None:
    """Killed after a commit, the machine still up: all of it is there; recovery flushes
    it and moves it into the history."""
    upper, root, txn = build(tmp_path)
    (txn / "history/1").mkdir(parents=True)
    commit(txn, read_changes(upper, [root], exclude=()), root, "1", "mod", "exec")
    after = snapshot(root)
    warnings: list[str] = []
    recover(txn, warnings.append)
    assert snapshot(root) == after and warnings == []
    assert sorted(os.listdir(txn)) == ["history"]
    assert load(txn / "history/1/commits/1").step == "exec"


def journal_new(tmp: Path) -> tuple[Path, Path, Snapshot]:
    """(root, txn, the root's snapshot before): the commit of build() killed right after
    its journal.new was flushed, before its rename and any operation; the journal left
    as journal.new, as a power cut that lost the rename would leave it."""
    upper, root, txn = build(tmp)
    before = snapshot(root)
    assert commit_in_child(upper, root, txn, "1:KILL") == -9
    assert (txn / "journal.new").is_dir() and not (txn / "journal").exists()
    return root, txn, before


def test_a_whole_journal_new_is_undone(tmp_path: Path) -> None:
    """Flushed: its operations may have run before the cut (its rename lost), so it is
    undone like txn/journal; here the root was not touched and stays as it was."""
    root, txn, before = journal_new(tmp_path)
    (root / "etc/.new").write_bytes(b"as an operation left it\n")
    os.replace(root / "etc/.new", root / "etc/modified")  # as the first operation does
    warnings: list[str] = []
    recover(txn, warnings.append)
    assert snapshot(root) == before
    assert len(warnings) == 1 and "undone" in warnings[0]
    assert sorted(os.listdir(txn)) == []


@pytest.mark.parametrize("cut", ["json empty", "json torn", "a link lost", "a copy torn"])
def test_a_journal_new_cut_before_its_flush_is_dropped_and_the_root_left_alone(
    tmp_path: Path, cut: str
) -> None:
    """A power cut before the journal's syncfs returned: part of journal.new may be
    missing, and no operation ran; recovery drops it silently, the root as it was."""
    root, txn, before = journal_new(tmp_path)
    new = txn / "journal.new"
    data = json.loads((new / "journal.json").read_bytes())
    by_path = {e["path"]: e["before"] for e in data["entries"]}
    if cut == "json empty":
        (new / "journal.json").write_bytes(b"")
    elif cut == "json torn":
        (new / "journal.json").write_bytes(json.dumps(data).encode()[:200])
    elif cut == "a link lost":
        (new / "saved" / by_path["/etc/modified"]["file"]).unlink()
    else:  # chmodded keeps its inode: its original is a copy, with its md5 in the json
        copy = new / "saved" / by_path["/etc/chmodded"]["file"]
        assert copy.name in data["copies"]
        copy.write_bytes(b"sa")
    recover(txn, print)
    assert not new.exists()
    assert snapshot(root) == before


SECOND = """
import sys
from pathlib import Path
from disco.engine.changes import read_changes
from disco.live.commit import commit
second, root, txn = map(Path, sys.argv[1:4])
commit(txn, read_changes(second, [root], exclude=()), root, "1", "mod", "exec 20-more")
"""


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_a_power_cut_in_the_next_commit_undoes_it_and_the_last_one_if_not_on_disk(
    tmp_path: Path, k: int
) -> None:
    """The commit after a done one killed at its K-th point (1: its journal.new flushed,
    the done one not yet moved to the history; 2: its journal in force; 3, 4: after its
    operations), then the machine rebooted: what is not known to be on disk is undone,
    newest first, and what was flushed stays."""
    upper, root, txn = build(tmp_path)
    before = snapshot(root)
    (txn / "history/1").mkdir(parents=True)
    commit(txn, read_changes(upper, [root], exclude=()), root, "1", "mod", "exec 10-all")
    first = snapshot(root)
    second = tmp_path / "second"
    write(second / "etc/second", b"second\n")
    write(second / "etc/third", b"third\n")
    args = [sys.executable, "-c", SECOND, str(second), str(root), str(txn)]
    killed = subprocess.run(args, env={**os.environ, "DISCO_TEST_KILL_AT": f"{k}:KILL"})
    assert killed.returncode == -9
    if (txn / "done").exists():
        another_boot(txn / "done")
    warnings: list[str] = []
    recover(txn, warnings.append)
    if k == 1:  # the first commit was not yet known to be on disk: undone too
        assert snapshot(root) == before and len(warnings) == 2
        assert "exec 20-more" in warnings[0] and "exec 10-all" in warnings[1]
    else:  # flushed by the second commit's syncfs, and in the history
        assert snapshot(root) == first and len(warnings) == 1
        assert (txn / "history/1/commits/1").is_dir()
    assert sorted(os.listdir(txn)) == ["history"]


def test_a_dance_counts_its_last_commit_while_it_waits_in_done(tmp_path: Path) -> None:
    upper, root, txn = build(tmp_path)
    kept = history.begin(txn, "live", root, "node")
    other = history.begin(txn, "live", root, "node")
    commit(txn, read_changes(upper, [root], exclude=()), root, kept.id, "mod", "exec")
    assert [j.step for j in kept.commits(txn)] == ["exec"] and other.commits(txn) == []
    seal(txn)
    assert [j.step for j in kept.commits(txn)] == ["exec"] and not (txn / "done").exists()
