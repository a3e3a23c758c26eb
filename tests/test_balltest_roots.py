"""disco test's roots: a real Debian image (`--image`, built by `make test-deps`), a
directory (`--root`, copy-on-write: left as it was), and the byte-for-byte comparison a
rollback is held to (content, mode, owner, xattrs, mtimes, parent directories)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BIN, tree_snapshot
from disco.balltest import snapshot

BALLS = Path(__file__).resolve().parent.parent / "src" / "disco" / "balls"
# What `make test-deps` builds (Makefile: TEST_IMAGE, passed on by `make test`).
IMAGE = Path(os.environ.get("DISCO_TEST_IMAGE", "/var/cache/disco-tests/debian-minbase.tar"))


def disco_test(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([str(BIN / "disco"), "test", *args, "--json"], cwd=BALLS, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip


def image() -> Path:
    if not IMAGE.is_file():
        pytest.skip(f"no {IMAGE}: 'make test-deps' builds it with mmdebstrap (it needs the"
                    " network and root), and could not here")  # fmt: skip
    return IMAGE


def all_passed(result: subprocess.CompletedProcess[str], scenarios: int) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    assert document["passed"] is True and document["scenarios"] == scenarios
    return document


def test_balls_on_a_debian_image() -> None:
    """users, groups and files together, hosts and motd, on a minbase Debian: no host file."""
    result = disco_test("files", "hosts", "motd", "--image", str(image()))
    document = all_passed(result, 5)
    assert str(IMAGE) in str(document["root"])
    checks = document["checks"]
    assert isinstance(checks, list)
    verified = {(c["suite"], c["group"]) for c in checks if c["name"] == "verify"
                and c["status"] == "passed"}  # fmt: skip
    assert ("files", "owned-by-new-user") in verified


@pytest.fixture
def unpacked(tmp_path: Path) -> Path:
    root = tmp_path / "image"
    root.mkdir()
    subprocess.run(["tar", "-x", "-p", "-f", str(image()), "-C", str(root)], check=True)
    return root


def test_root_dir_is_copied_on_write(unpacked: Path) -> None:
    before = {top: tree_snapshot(unpacked / top) for top in ("etc", "home", "srv")}
    result = disco_test("users", "--root", str(unpacked))
    document = all_passed(result, 1)
    assert str(unpacked) in str(document["root"])
    assert {top: tree_snapshot(unpacked / top) for top in ("etc", "home", "srv")} == before


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """An overlay root over a small lower tree: (root, upper, lower)."""
    lower, upper, work, root = (tmp_path / n for n in ("lower", "up", "wk", "root"))
    for d in (lower / "etc" / "d", upper, work, root):
        d.mkdir(parents=True)
    (lower / "etc" / "a").write_text("a\n")
    os.utime(lower / "etc", ns=(10**18, 10**18))
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "-o", options, "t", str(root)], check=True)
    try:
        yield root, upper, lower
    finally:
        subprocess.run(["umount", str(root)], check=True)


def test_the_rollback_comparison_sees_every_kind_of_difference(
    overlay: tuple[Path, Path, Path],
) -> None:
    root, upper, lower = overlay
    before = snapshot.take(root, snapshot.upper_paths(upper))
    a = root / "etc" / "a"
    st = a.stat()
    a.write_text("b\n")
    a.chmod(0o600)
    os.chown(a, 1, 2)
    os.setxattr(a, "user.disco", b"x")
    (root / "etc" / "new").write_text("new\n")
    (root / "etc" / "d").rmdir()

    def differences() -> list[str]:
        now = snapshot.take(root, snapshot.upper_paths(upper) | set(before.entries))
        return snapshot.compare(before, now, lower)

    said = differences()
    assert [line.split(":")[0] for line in said] == ["/etc", "/etc/a", "/etc/d", "/etc/new"]
    assert said[1].startswith("/etc/a: mode 0o644 => 0o600, uid 0 => 1, gid 0 => 2, mtime_ns")
    assert "content " in said[1] and "xattrs () => (('user.disco', '78'),)" in said[1]
    assert said[2] == "/etc/d: directory => absent" and said[3] == "/etc/new: absent => file"
    # Put back as a rollback must: content, mode, owner, xattrs, mtimes, parent directory.
    a.write_text("a\n")
    a.chmod(0o644)
    os.chown(a, 0, 0)
    os.removexattr(a, "user.disco")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    (root / "etc" / "new").unlink()
    (root / "etc" / "d").mkdir()
    lst = (lower / "etc" / "d").stat()
    os.utime(root / "etc" / "d", ns=(lst.st_atime_ns, lst.st_mtime_ns))
    assert [line.split(":")[0] for line in differences()] == ["/etc"]  # its mtime alone
    os.utime(root / "etc", ns=(10**18, 10**18))
    assert differences() == []
