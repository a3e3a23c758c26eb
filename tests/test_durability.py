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
from pathlib import Path

import pytest

from disco.engine.changes import read_changes
from disco.live.commit import commit
from disco.live.recovery import recover
from test_journal import CHILD, Snapshot, build, commit_in_child, snapshot

# The calls that make, replace or remove a name, and the flushes.
TRACED = "trace=syncfs,fsync,fdatasync,sync,rename,renameat,renameat2,link,linkat,unlink,"
TRACED += "unlinkat,mkdir,mkdirat,rmdir,symlink,symlinkat,mknod,mknodat,open,openat"
NAMED = re.compile(r'(?:(?:\d+<([^>]*)>|AT_FDCWD), )?"([^"]*)"')
CALL = re.compile(r"^(?:\d+ +)?(\w+)\((.*)\) += (-?\d+)")


def traced_commit(tmp: Path) -> tuple[Path, Path, list[tuple[str, str]]]:
    """(root, txn, [(call, path)]): the commit of build() in a child under strace -f -y;
    the path is what a call makes or removes (the destination of a rename or link), or
    the file a flush is given."""
    upper, root, txn = build(tmp)
    (txn / "history/1").mkdir(parents=True)
    out = tmp / "strace"
    argv = ["strace", "-f", "-y", "-qq", "-e", TRACED, "-o", str(out)]
    argv += [sys.executable, "-c", CHILD, str(upper), str(root), str(txn)]
    subprocess.run(argv, check=True)
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


def test_a_commit_flushes_twice_the_journal_first_and_the_root_before_the_history(
    tmp_path: Path,
) -> None:
    root, txn, events = traced_commit(tmp_path)
    flushes = [(call, path) for call, path in events if "sync" in call]
    # One syncfs of txn's filesystem, one of the root's: nothing per file or directory.
    assert flushes == [("syncfs", str(txn)), ("syncfs", str(root))]
    journal_flushed, root_flushed = (events.index(f) for f in flushes)
    in_root = [i for i, (call, path) in enumerate(events)
               if path.startswith(f"{root}/") and "sync" not in call]  # fmt: skip
    in_txn = [i for i, (call, path) in enumerate(events)
              if path.startswith(f"{txn}/journal.new/")]  # fmt: skip
    archived = next(i for i, (c, p) in enumerate(events) if c.startswith("rename")
                    and p.startswith(str(txn / "history/1/commits/")))  # fmt: skip
    assert in_root and in_txn, events
    # The journal whole, then on disk, then the root touched.
    assert max(in_txn) < journal_flushed < min(in_root)
    # Every change to the root on disk before the journal leaves txn/.
    assert max(in_root) < root_flushed < archived


def test_a_commit_whose_move_into_the_history_was_lost_is_undone_whole(
    tmp_path: Path,
) -> None:
    """A power cut after a commit's last flush, before the next: its journal's rename into
    the history is not on disk, so txn/journal is back. The next dance undoes that commit
    whole (the root as it was before it), never half."""
    upper, root, txn = build(tmp_path)
    before = snapshot(root)
    (txn / "history/1").mkdir(parents=True)
    journal = commit(txn, read_changes(upper, [root], exclude=()), root, "1", "mod", "exec")
    assert snapshot(root) != before
    os.rename(journal.where, txn / "journal")  # what the disk holds after the cut
    warnings: list[str] = []
    recover(txn, warnings.append)
    assert snapshot(root) == before
    (warning,) = warnings
    assert "dance 1 was cut short while committing mod: exec" in warning
    assert not (txn / "journal").exists()


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
