"""Nothing a step plants steers disco's own code (DESIGN §7, issue 21): the change reader,
the report's diffs, the hard-link relinker, delivery, fold and the template writer meet
symlinks, FIFOs and whiteouts where a step could have put them, and neither follow them
out of the layer nor hang on them. Each "host" here is a folder of the test's own; each
FIFO is the test's own, and every wait on one is bounded."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from disco.files import OffPath, open_dir, open_regular, opened_dir, read_regular


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A folder standing for the host outside the layer: what a planted symlink points
    to. Tests assert it is left as it was."""
    where = tmp_path / "host"
    (where / "sub").mkdir(parents=True)
    (where / "secret").write_text("precious\n")
    return where


def listing(top: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[str(path.relative_to(top))] = (st.st_mode, data)
    return out


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO of the test's own that nobody writes: opening or reading it as a file would
    hang. Its reader, if any, is let go after the test."""
    path = tmp_path / "never-written"
    os.mkfifo(path)
    yield path
    _has_reader(path)  # a writer that comes and goes lets a stuck reader go


def _has_reader(path: Path) -> bool:
    """Whether a reader holds the FIFO open (its open, if it waits, then completes)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def bounded(target: object, *args: object, seconds: float = 20) -> object:
    """Call target(*args) in a thread; fail (instead of hanging) if it does not return."""
    result: list[object] = []
    error: list[BaseException] = []

    def call() -> None:
        try:
            result.append(target(*args))  # type: ignore[operator]
        except BaseException as e:  # noqa: BLE001 -- handed to the test
            error.append(e)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{target} hung on a planted path"
    if error:
        raise error[0]
    return result[0]


# ---- the basics: walking from a directory descriptor ----


def test_open_dir_walks_a_path_and_refuses_a_symlink_on_the_way(tmp_path: Path, host: Path) -> None:
    (tmp_path / "layer/etc").mkdir(parents=True)
    (tmp_path / "layer/etc/link").symlink_to(host)
    (tmp_path / "layer/etc/file").write_text("x")
    with opened_dir(tmp_path / "layer", ["etc"]) as fd:
        assert sorted(os.listdir(fd)) == ["file", "link"]
        with pytest.raises(OffPath) as e:
            open_dir(fd, ["link", "sub"])
        assert (e.value.names, e.value.symlink) == (("link",), True)
        with pytest.raises(OffPath) as e:
            open_dir(fd, ["file"])
        assert (e.value.names, e.value.symlink) == (("file",), False)
        with pytest.raises(FileNotFoundError):
            open_dir(fd, ["missing"])
        with pytest.raises(ValueError):
            open_dir(fd, [".."])


def test_open_regular_opens_a_regular_file_and_nothing_else(
    tmp_path: Path, host: Path, fifo: Path
) -> None:
    (tmp_path / "to-secret").symlink_to(host / "secret")
    (tmp_path / "to-fifo").symlink_to(fifo)
    (tmp_path / "file").write_text("mine\n")
    assert read_regular(tmp_path / "file") == b"mine\n"
    for planted in ("to-secret", "to-fifo", "never-written"):
        with pytest.raises(OSError):
            bounded(open_regular, tmp_path / planted)
    assert not _has_reader(fifo)  # never opened, so no writer of the host's was woken
