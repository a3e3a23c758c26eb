"""The commit journal: a commit killed (SIGKILL, for real) at every commit point is undone
by recovery, byte for byte; a finished one is in the history with its undo log; bad
journals are refused and left as they are. Roots and layers are built in tmp_path."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from disco.engine.changes import read_changes
from disco.errors import DiscoError
from disco.live.changeset import keep_links, plan_commit
from disco.live.commit import commit
from disco.live.journal import KILL_AT, load, seal
from disco.live.ops import HardLink
from disco.live.recovery import recover
from test_commit import T, whiteout, write

Snapshot = dict[str, tuple[int, int, int, int, bytes, str, int, tuple[tuple[str, bytes], ...]]]


def snapshot(root: Path) -> Snapshot:
    """Every entry below root: type and mode, owner, group, mtime (not of directories:
    what is put into them moves it), content, symlink target, device, xattrs."""
    out: Snapshot = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        mtime = 0 if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
        link = os.readlink(p) if p.is_symlink() else ""
        xattrs = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                              for k in os.listxattr(p, follow_symlinks=False)))  # fmt: skip
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, mtime, data, link,
                                         st.st_rdev, xattrs)  # fmt: skip
    return out


def build(tmp: Path) -> tuple[Path, Path, Path]:
    """(upper, root, txn): a root with every kind of entry and a layer changing them all."""
    upper, root, txn = tmp / "upper", tmp / "root", tmp / "txn"
    txn.mkdir(parents=True)
    (root / "etc").mkdir(parents=True)
    (upper / "etc").mkdir(parents=True)
    write(root / "etc/modified", b"old\n", 0o640, owner=7)
    os.setxattr(root / "etc/modified", "user.tag", b"old")
    write(root / "etc/chmodded", b"same\n", 0o644)
    write(root / "etc/deleted", b"bye\n", 0o600, owner=9)
    tree = root / "etc/tree"
    write(tree / "a", b"a\n")
    write(tree / "sub/b", b"b\n", 0o755)
    os.symlink("a", tree / "link")
    os.mkfifo(tree / "fifo")
    os.mknod(tree / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.symlink("old-target", root / "etc/retargeted")
    write(root / "etc/dir-to-file/inside", b"in\n")
    write(root / "etc/file-to-dir", b"was a file\n")
    os.chmod(root / "etc", 0o755)

    write(upper / "etc/modified", b"new\n", 0o600, owner=8, mtime=T + 5)
    os.setxattr(upper / "etc/modified", "user.tag", b"new")
    write(upper / "etc/chmodded", b"same\n", 0o600)
    whiteout(upper / "etc/deleted")
    whiteout(upper / "etc/tree")
    os.symlink("new-target", upper / "etc/retargeted")
    os.utime(upper / "etc/retargeted", ns=(T, T), follow_symlinks=False)
    write(upper / "etc/dir-to-file", b"now a file\n")
    write(upper / "etc/file-to-dir/x", b"x\n")
    write(upper / "etc/created/deep/file", b"hello\n", 0o644, owner=3)
    return upper, root, txn


# The commit in a process of its own, so that it can be killed for real.
CHILD = """
import sys
from pathlib import Path
from disco.engine.changes import read_changes
from disco.live.commit import commit
upper, root, txn = map(Path, sys.argv[1:4])
commit(txn, read_changes(upper, [root], exclude=()), root, "1", "mod", "exec 10-all")
"""


def commit_in_child(upper: Path, root: Path, txn: Path, kill_at: str | None) -> int:
    env = {**os.environ, **({KILL_AT: kill_at} if kill_at else {})}
    args = [sys.executable, "-c", CHILD, str(upper), str(root), str(txn)]
    return subprocess.run(args, env=env, check=False).returncode


def test_a_finished_commit_is_in_the_history_with_its_originals(tmp_path: Path) -> None:
    upper, root, txn = build(tmp_path)
    old_inode = (root / "etc/modified").lstat().st_ino
    (txn / "history/1").mkdir(parents=True)
    changes = read_changes(upper, [root], exclude=())
    journal = commit(txn, changes, root, "1", "mod", "exec 10-all")
    assert journal.where == txn / "done"  # on disk with the next commit, or sealed
    assert not (txn / "journal").exists()
    seal(txn)
    assert not (txn / "done").exists()
    assert (root / "etc/modified").read_bytes() == b"new\n"
    assert not (root / "etc/tree").exists()
    kept = load(txn / "history/1/commits/1")
    assert (kept.dance, kept.module, kept.step, kept.root) == ("1", "mod", "exec 10-all", root)
    by_path = {e.path: e for e in kept.entries}
    saved = kept.saved(by_path["/etc/modified"])
    assert saved is not None and saved.read_bytes() == b"old\n"
    assert saved.lstat().st_ino == old_inode  # a hard link: no copy of the content
    assert by_path["/etc/created"].before is None
    assert by_path["/etc/tree/sub/b"].before is not None  # a deleted tree, file by file
    paths = [e.path for e in kept.entries]
    assert paths.index("/etc/tree/sub/b") < paths.index("/etc/tree/sub")  # content first


def test_the_next_commit_archives_the_done_journal_on_disk_not_the_one_it_made(
    tmp_path: Path,
) -> None:
    """The last commit's journal is known without reading it back, unless txn/done is
    another one since (another process's): then that one is read and archived."""
    root, txn = tmp_path / "root", tmp_path / "txn"
    (root / "etc").mkdir(parents=True)
    txn.mkdir()

    def one(name: str, dance: str) -> None:
        upper = tmp_path / f"upper-{name}"
        write(upper / "etc" / name, name.encode())
        commit(txn, read_changes(upper, [root], exclude=()), root, dance, name, "exec")

    one("a", "1")
    one("b", "1")  # archives a's, as it made it
    assert load(txn / "history/1/commits/1").module == "a"
    os.rename(txn / "done", tmp_path / "b-done")  # another process retires b's and
    other = json.loads((tmp_path / "b-done/journal.json").read_bytes())
    other.update(dance="2", module="other", entries=[])  # leaves a done journal of its own
    (txn / "done").mkdir()
    (txn / "done/journal.json").write_text(json.dumps(other))
    one("c", "1")
    assert load(txn / "history/2/commits/1").module == "other"
    assert not (txn / "history/1/commits/2").exists()


def points(tmp: Path) -> int:
    """How many commit points the commit of build() has: one per operation, and three
    (journal.new flushed, renamed to journal; the journal moved to txn/done)."""
    upper, root, _txn = build(tmp)
    return len(plan_commit(read_changes(upper, [root], exclude=()), root)) + 3


POINTS = 23  # 20 operations


def test_every_commit_point_is_tried(tmp_path: Path) -> None:
    assert points(tmp_path) == POINTS


@pytest.mark.parametrize("k", range(1, POINTS + 1))
def test_a_commit_killed_at_any_point_is_undone_byte_for_byte(tmp_path: Path, k: int) -> None:
    last = POINTS
    upper, root, txn = build(tmp_path / "run")
    before = snapshot(root)
    os.utime(root / "etc", ns=(T, T))  # a directory the commit renames and unlinks in
    assert commit_in_child(upper, root, txn, f"{k}:KILL") == -9
    warnings: list[str] = []
    recover(txn, warnings.append)
    if k < last:  # cut short: undone, its directories' mtimes too
        assert snapshot(root) == before
        assert (root / "etc").stat().st_mtime_ns == T
        (warning,) = warnings
        assert "dance 1" in warning and "mod: exec 10-all" in warning and "undone" in warning
    else:  # killed after its journal reached the history: done
        done_upper, done_root, done_txn = build(tmp_path / "done")
        assert commit_in_child(done_upper, done_root, done_txn, None) == 0
        assert snapshot(root) == snapshot(done_root)
        assert warnings == []
    assert sorted(os.listdir(txn)) == (["history"] if k == last else [])
    assert sorted(os.listdir(root / "etc")) == sorted(
        n for n in os.listdir(root / "etc") if not n.endswith(".disco-new")
    )
    recover(txn, warnings.append)  # nothing left to do
    assert len(warnings) == (1 if k < last else 0)


def test_a_failed_operation_undoes_the_commit(tmp_path: Path) -> None:
    upper, root, txn = build(tmp_path)
    changes = read_changes(upper, [root], exclude=())
    # A directory the commit must put a file into, made immutable: the last puts fail.
    (root / "etc/created").mkdir()
    subprocess.run(["chattr", "+i", str(root / "etc/created")], check=True)
    before = snapshot(root)
    try:
        with pytest.raises(DiscoError, match="cannot commit"):
            commit(txn, changes, root, "", "mod", "exec")
    finally:
        subprocess.run(["chattr", "-i", str(root / "etc/created")], check=True)
    assert snapshot(root) == before
    assert not (txn / "journal").exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", ["cannot be read", "move it aside"]),
        ('{"format": 99}', ["format 99", "newer disco"]),
        ('{"format": 1, "entries": [{"path": "x"}]}', ["damaged"]),
    ],
)
def test_a_bad_journal_is_an_error_and_is_left_alone(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    txn = tmp_path / "txn"
    (txn / "journal").mkdir(parents=True)
    (txn / "journal/journal.json").write_text(text)
    with pytest.raises(DiscoError) as e:
        recover(txn, print)
    for word in words:
        assert word in str(e.value)
    assert (txn / "journal/journal.json").read_text() == text


def test_names_that_are_one_file_in_the_layer_are_one_file_in_the_target(
    tmp_path: Path,
) -> None:
    upper, root, txn = tmp_path / "upper", tmp_path / "root", tmp_path / "txn"
    txn.mkdir()
    write(root / "etc/kept", b"kept\n")
    write(root / "etc/b", b"old b\n")
    write(upper / "etc/a", b"shared\n", 0o640)
    os.link(upper / "etc/a", upper / "etc/b")  # `ln a b` in the step, b replaced
    os.link(upper / "etc/a", upper / "etc/c")
    write(upper / "etc/kept", b"kept\n")  # copied up, unchanged: `ln kept new` in the step
    os.link(upper / "etc/kept", upper / "etc/new")
    changes = read_changes(upper, [root], exclude=())
    assert sorted(c.path for c in changes) == ["/etc/a", "/etc/b", "/etc/c", "/etc/new"]
    ops = keep_links(changes, plan_commit(changes, root), root)
    assert [op.path for op in ops if isinstance(op, HardLink)] == ["/etc/b", "/etc/c", "/etc/new"]
    commit(txn, changes, root, "", "m", "s")
    a, b, c = ((root / "etc" / n).lstat() for n in "abc")
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    assert (root / "etc/b").read_bytes() == b"shared\n" and stat.S_IMODE(b.st_mode) == 0o640
    assert (root / "etc/new").lstat().st_ino == (root / "etc/kept").lstat().st_ino
    assert sorted(os.listdir(root / "etc")) == ["a", "b", "c", "kept", "new"]


def test_the_journal_names_every_path_with_its_state_before(tmp_path: Path) -> None:
    upper, root, txn = build(tmp_path)
    assert commit_in_child(upper, root, txn, "2:KILL") == -9  # in force, nothing applied
    data = json.loads((txn / "journal/journal.json").read_text())
    by_path = {e["path"]: e for e in data["entries"]}
    assert by_path["/etc/deleted"]["before"]["uid"] == 9
    assert by_path["/etc/retargeted"]["before"]["target"] == "old-target"
    assert by_path["/etc/tree/null"]["before"]["rdev"] == os.makedev(1, 3)
    assert by_path["/etc/modified"]["after"]["md5"] is not None
    assert by_path["/etc/created/deep/file"]["before"] is None
    assert (root / "etc/modified").read_bytes() == b"old\n"


def test_recovery_never_follows_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    upper, root, txn = build(tmp_path)
    assert commit_in_child(upper, root, txn, "4:KILL") == -9  # two operations done
    outside = tmp_path / "outside"
    os.rename(root / "etc", outside)
    os.symlink(str(outside), root / "etc")  # the target changed under the journal
    (outside / ".modified.disco-new").write_text("not ours\n")
    before = snapshot(outside)
    recover(txn, print)
    assert snapshot(outside) == before
    assert not (txn / "journal").exists()


def test_a_saved_original_never_shares_an_inode_with_a_file_of_the_root(tmp_path: Path) -> None:
    """Issue 22: an owner or mode change keeps the live inode in place, so its saved
    original is a copy; a link would follow every later edit and add a name each dance.
    A replaced file with another name in the root stays there too: a copy as well."""
    upper, root, txn = tmp_path / "upper", tmp_path / "root", tmp_path / "txn"
    (txn / "history/1").mkdir(parents=True)
    write(root / "etc/mode", b"mode\n", 0o644)
    write(root / "etc/twice", b"twice\n")
    os.link(root / "etc/twice", root / "etc/other-name")
    write(root / "etc/replaced", b"old\n")
    write(upper / "etc/mode", b"mode\n", 0o600)
    write(upper / "etc/twice", b"new twice\n")
    write(upper / "etc/replaced", b"new\n")
    old_inode = (root / "etc/replaced").lstat().st_ino
    journal = commit(txn, read_changes(upper, [root], exclude=()), root, "1", "m", "s")
    saved = {e.path: journal.saved(e) for e in journal.entries}
    assert (root / "etc/mode").lstat().st_nlink == 1
    (root / "etc/mode").write_bytes(b"edited by hand\n")
    (root / "etc/other-name").write_bytes(b"edited too\n")
    mode, twice, replaced = saved["/etc/mode"], saved["/etc/twice"], saved["/etc/replaced"]
    assert mode is not None and mode.read_bytes() == b"mode\n"
    assert twice is not None and twice.read_bytes() == b"twice\n"
    assert replaced is not None and replaced.lstat().st_ino == old_inode  # left the root
    inodes = {p.lstat().st_ino for p in (root / "etc").iterdir()}
    assert not inodes & {p.lstat().st_ino for p in (mode, twice)}
