"""Committing a live step's layer: an upper dir and a target root built by hand in tmp_path.

Every test writes only below tmp_path: the "outside" the symlink tests guard is a directory
there too.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from disco.engine.changes import Change, ChangeKind, Meta, read_changes
from disco.errors import DiscoError
from disco.live.changeset import apply, plan_commit
from disco.live.ops import Attrs, MakeDir, MakeLink, MakeNode, Op, PutFile, Remove, SetMeta

T = 1_600_000_000_123_456_789  # an mtime, in ns


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(upper, root): an empty layer and a target root with /etc."""
    upper, root = tmp_path / "upper", tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (upper / "etc").mkdir(parents=True)
    yield upper, root


def commit(upper: Path, root: Path) -> list[Op]:
    """Read the layer's changes against the root, plan and apply them."""
    ops = plan_commit(read_changes(upper, [root]), root)
    apply(ops)
    return ops


def write(p: Path, data: bytes, mode: int = 0o644, owner: int = 0, mtime: int = T) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chown(p, owner, owner)
    os.chmod(p, mode)
    os.utime(p, ns=(mtime, mtime))
    return p


def whiteout(p: Path) -> None:
    os.mknod(p, stat.S_IFCHR, os.makedev(0, 0))


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes, str]]:
    """Every entry below root: mode, uid, mtime (not of dirs), content, symlink target."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        mtime = 0 if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
        link = os.readlink(p) if p.is_symlink() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, mtime, data, link)
    return out


def test_created_file_keeps_content_owner_mode_mtime_and_xattrs(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    new = write(upper / "etc/app.conf", b"a=1\n", 0o640, owner=1234)
    os.setxattr(new, "user.test", b"kept")
    os.setxattr(new, "security.selinux", b"system_u:object_r:etc_t:s0\0")
    os.setxattr(new, "trusted.overlay.origin", b"\x00fh")
    (change,) = read_changes(upper, [root])
    assert change.after is not None
    # Even a Meta that carried a trusted.overlay.* xattr would not bring it to the target.
    leaky = change.after.xattrs + (("trusted.overlay.origin", b"\x00fh"),)
    change = dataclasses.replace(change, after=dataclasses.replace(change.after, xattrs=leaky))
    ops = plan_commit([change], root)
    assert [type(op) for op in ops] == [PutFile]
    apply(ops)
    got = root / "etc/app.conf"
    st = got.lstat()
    assert got.read_bytes() == b"a=1\n"
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 1234, 0o640)
    assert st.st_mtime_ns == T
    assert sorted(os.listxattr(got)) == ["security.selinux", "user.test"]
    assert os.getxattr(got, "user.test") == b"kept"
    assert os.getxattr(got, "security.selinux").rstrip(b"\0") == b"system_u:object_r:etc_t:s0"
    assert os.listdir(root / "etc") == ["app.conf"]  # no temp file left


def test_modified_content_replaces_the_inode(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    target = write(root / "etc/f", b"v1\n")
    os.link(target, root / "etc/hardlink")
    ino = target.lstat().st_ino
    write(upper / "etc/f", b"v2\n", 0o600)
    ops = commit(upper, root)
    assert [type(op) for op in ops] == [PutFile]
    assert target.read_bytes() == b"v2\n" and stat.S_IMODE(target.lstat().st_mode) == 0o600
    assert target.lstat().st_ino != ino
    assert sorted(os.listdir(root / "etc")) == ["f", "hardlink"]
    assert (root / "etc/hardlink").read_bytes() == b"v1\n"  # replacing breaks the hard link


def test_metadata_only_change_keeps_the_inode(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    target = write(root / "etc/f", b"same\n", 0o644)
    os.setxattr(target, "user.old", b"gone")
    ino = target.lstat().st_ino
    new = write(upper / "etc/f", b"same\n", 0o4750, owner=1234, mtime=T + 1)
    os.setxattr(new, "user.test", b"x")
    os.setxattr(new, "trusted.overlay.origin", b"\x00fh")
    ops = commit(upper, root)
    assert [type(op) for op in ops] == [SetMeta]
    st = target.lstat()
    assert st.st_ino == ino and target.read_bytes() == b"same\n"
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (1234, 0o4750, T + 1)
    assert os.listxattr(target) == ["user.test"]


def test_directory_created_with_its_mode(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    (upper / "etc/secret").mkdir(mode=0o700)
    os.chmod(upper / "etc/secret", 0o700)
    write(upper / "etc/secret/key", b"k", 0o600)
    ops = commit(upper, root)
    assert [type(op) for op in ops] == [MakeDir, PutFile]
    assert stat.S_IMODE((root / "etc/secret").lstat().st_mode) == 0o700
    assert (root / "etc/secret/key").read_bytes() == b"k"


def test_directory_chmod_keeps_its_contents(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    write(root / "etc/d/a", b"a")
    write(root / "etc/d/sub/b", b"b")
    ino = (root / "etc/d").lstat().st_ino
    (upper / "etc/d").mkdir()
    os.chmod(upper / "etc/d", 0o750)
    os.chown(upper / "etc/d", 0, 1234)
    ops = commit(upper, root)
    assert [type(op) for op in ops] == [SetMeta]
    st = (root / "etc/d").lstat()
    assert (st.st_ino, stat.S_IMODE(st.st_mode), st.st_gid) == (ino, 0o750, 1234)
    assert (root / "etc/d/a").read_bytes() == b"a" and (root / "etc/d/sub/b").exists()


def test_symlink_created_and_retargeted(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    (root / "etc/current").symlink_to("v1")
    (upper / "etc/current").symlink_to("v2")
    (upper / "etc/new").symlink_to("/etc/elsewhere")
    os.chown(upper / "etc/new", 1234, 1234, follow_symlinks=False)
    ops = commit(upper, root)
    assert [type(op) for op in ops] == [MakeLink, MakeLink]
    assert os.readlink(root / "etc/current") == "v2"
    assert os.readlink(root / "etc/new") == "/etc/elsewhere"
    assert (root / "etc/new").lstat().st_uid == 1234
    assert sorted(os.listdir(root / "etc")) == ["current", "new"]


def test_fifo_socket_and_device_node(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    os.mkfifo(upper / "etc/pipe")
    os.chmod(upper / "etc/pipe", 0o620)
    os.mknod(upper / "etc/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(upper / "etc/sock"))
    ops = commit(upper, root)
    assert [type(op) for op in ops] == [MakeNode, MakeNode, MakeNode]
    assert stat.S_ISSOCK((root / "etc/sock").lstat().st_mode)
    null, pipe = (root / "etc/null").lstat(), (root / "etc/pipe").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o620


def test_delete_file(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    write(root / "etc/old", b"x")
    whiteout(upper / "etc/old")
    assert [type(op) for op in commit(upper, root)] == [Remove]
    assert os.listdir(root / "etc") == []


def test_delete_directory_with_contents(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    write(root / "etc/d/a", b"a")
    write(root / "etc/d/sub/b", b"b")
    (root / "etc/d/sub/link").symlink_to("/nowhere")
    whiteout(upper / "etc/d")
    ops = commit(upper, root)
    assert [op.path for op in ops] == ["/etc/d/sub/link", "/etc/d/sub/b", "/etc/d/sub",
                                       "/etc/d/a", "/etc/d"]  # fmt: skip
    assert os.listdir(root / "etc") == []
    # A lone record for the directory still removes everything below it.
    write(root / "etc/d/a", b"a")
    apply([Remove(root, "/etc/d")])
    assert os.listdir(root / "etc") == []


def test_directory_replaced_by_file(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    write(root / "etc/d/a", b"a")
    write(upper / "etc/d", b"now a file")
    ops = commit(upper, root)
    assert [(type(op), op.path) for op in ops] == [
        (Remove, "/etc/d/a"),
        (Remove, "/etc/d"),
        (PutFile, "/etc/d"),
    ]
    assert (root / "etc/d").read_bytes() == b"now a file"


def test_file_replaced_by_directory(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    write(root / "etc/f", b"a file")
    write(upper / "etc/f/x", b"inside")
    ops = commit(upper, root)
    assert [type(op) for op in ops] == [Remove, MakeDir, PutFile]
    assert (root / "etc/f/x").read_bytes() == b"inside"


def test_symlink_in_the_target_is_never_followed(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    upper, root = tree
    outside = tmp_path / "outside"
    write(outside / "passwd", b"precious", 0o644)
    (root / "etc").rmdir()
    (root / "etc").symlink_to(outside)  # like etc -> /etc
    write(upper / "etc/x", b"must not land outside")
    m = Meta("regular file", "fd00", "81a4", "root:root 644", "?", "md5", None, 0, 0, 1, T, ())
    put = Change("/etc/x", ChangeKind.CREATED, None, m, None, upper / "etc/x", False)
    gone = Change("/etc/passwd", ChangeKind.DELETED, m, None, None, None, False)
    for change in (put, gone):
        with pytest.raises(DiscoError, match=f"refusing to commit {change.path}: .*symbolic"):
            apply(plan_commit([change], root))
    assert os.listdir(outside) == ["passwd"]
    assert (outside / "passwd").read_bytes() == b"precious"

    # The last component: a symlink is replaced or changed itself, never its target.
    (root / "etc").unlink()
    (root / "etc").mkdir()
    (root / "etc/passwd").symlink_to(outside / "passwd")
    apply([SetMeta(root, "/etc/passwd", Attrs(1234, 1234, 0o600, (), T))])
    apply([PutFile(root, "/etc/passwd", upper / "etc/x", Attrs(0, 0, 0o600, (), T))])
    assert (outside / "passwd").read_bytes() == b"precious"
    assert stat.S_IMODE((outside / "passwd").stat().st_mode) == 0o644
    assert (outside / "passwd").stat().st_uid == 0
    (root / "etc/link").symlink_to(outside)
    apply([Remove(root, "/etc/link")])
    assert os.listdir(outside) == ["passwd"]


def test_plan_order_removals_deepest_first_then_parents_first(tmp_path: Path) -> None:
    def m(kind: str, mode: str) -> Meta:
        return Meta(kind, "fd00", mode, "root:root 755", "?", None, "t", 0, 0, 0, T, ())

    d, f = m("directory", "41ed"), m("regular file", "81a4")
    new = tmp_path / "upper"
    records = [
        Change("/a", ChangeKind.CREATED, None, d, None, new, False),
        Change("/a/b", ChangeKind.CREATED, None, d, None, new, False),
        Change("/a/b/c", ChangeKind.CREATED, None, f, None, new, False),
        Change("/a-z", ChangeKind.CREATED, None, f, None, new, False),
        Change("/x", ChangeKind.DELETED, d, None, new, None, False),
        Change("/x/y", ChangeKind.DELETED, d, None, new, None, False),
        Change("/x/y/z", ChangeKind.DELETED, f, None, new, None, False),
    ]
    ops = plan_commit(records[::-1], tmp_path)
    assert [op.describe().split()[0] + " " + op.path for op in ops] == [
        "rm /x/y/z", "rm /x/y", "rm /x", "install /a", "install /a/b", "install /a/b/c",
        "install /a-z"]  # fmt: skip
    assert ops[0].paths() == (tmp_path / "x/y/z",)
    with pytest.raises(DiscoError, match="not a plain absolute path"):
        plan_commit([Change("/a/../b", ChangeKind.CREATED, None, f, None, new, False)], tmp_path)


def test_describe_reads_like_shell() -> None:
    r = Path("/srv/root")
    ops: list[Op] = [
        PutFile(r, "/etc/a b", Path("/l/upper/etc/a b"), Attrs(0, 0, 0o644, (("user.k", b"v"),))),
        MakeDir(r, "/etc/d", Attrs(0, 1234, 0o700)),
        MakeLink(r, "/etc/l", "../x", Attrs(1234, 0, None, (), T)),
        MakeNode(r, "/dev/null", "c", os.makedev(1, 3), Attrs(0, 0, 0o666)),
        SetMeta(r, "/etc/f", Attrs(0, 0, 0o600, (), T), ("user.old",)),
        Remove(r, "/etc/old"),
    ]
    assert [op.describe() for op in ops] == [
        "install -p -m 0644 -o 0 -g 0 '/l/upper/etc/a b' '/srv/root/etc/a b'"
        " && setfattr -h -n user.k -v 0x76 '/srv/root/etc/a b'",
        "install -d -m 0700 -o 0 -g 1234 /srv/root/etc/d",
        "ln -sfn ../x /srv/root/etc/l && chown -h 1234:0 /srv/root/etc/l",
        "mknod -m 0666 /srv/root/dev/null c 1 3",
        "chown -h 0:0 /srv/root/etc/f && chmod 0600 /srv/root/etc/f"
        " && setfattr -h -x user.old /srv/root/etc/f"
        " && touch -h -m -d @1600000000.123456789 /srv/root/etc/f",
        "rm -rf /srv/root/etc/old",
    ]


def test_everything_at_once_then_again_changes_nothing(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    write(root / "etc/keep", b"unchanged")
    write(root / "etc/mod", b"v1")
    write(root / "etc/gone/a", b"a")
    write(root / "etc/swap", b"file")
    write(root / "etc/meta", b"same", 0o644)
    write(upper / "etc/mod", b"v2", 0o600)
    whiteout(upper / "etc/gone")
    write(upper / "etc/swap/inner", b"in")
    write(upper / "etc/meta", b"same", 0o755, mtime=T + 5)
    write(upper / "etc/new/deep/file", b"deep", owner=1234)
    (upper / "etc/new/link").symlink_to("deep/file")
    ops = commit(upper, root)
    first = snapshot(root)
    assert sorted(first) == ["etc", "etc/keep", "etc/meta", "etc/mod", "etc/new", "etc/new/deep",
                             "etc/new/deep/file", "etc/new/link", "etc/swap",
                             "etc/swap/inner"]  # fmt: skip
    assert (root / "etc/new/link").read_bytes() == b"deep"
    apply(ops)
    assert snapshot(root) == first


def test_a_failure_names_the_operation_and_leaves_no_temp_file(tree: tuple[Path, Path]) -> None:
    upper, root = tree
    op = PutFile(root, "/etc/f", upper / "etc/missing", Attrs(0, 0, 0o644, (), T))
    with pytest.raises(DiscoError, match="cannot commit .*/etc/f") as e:
        apply([op])
    assert e.value.hint.endswith(op.describe())
    write(upper / "etc/f", b"x")
    bad = PutFile(root, "/etc/f", upper / "etc/f", Attrs(0, 0, 0o644, (("bogus.ns", b""),), T))
    with pytest.raises(DiscoError):
        apply([bad])
    assert os.listdir(root / "etc") == []
