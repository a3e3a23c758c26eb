"""Large and sparse files (issue 22): a diff is cut at a bound, saying what it left out, and
read without holding a file whole; a sparse file stays sparse in the state, the layers,
the root and the undo log. Live dances target scratch roots only."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BIN, Run
from disco.engine.change_text import Bound, _one_sided, content_diff
from disco.engine.changes import read_changes
from test_dance_steps import NODE, dance, make_server

LINES = st.lists(st.sampled_from([b"a\n", b"bb\n", b"\n", b"ccccccc\n", b"x"]), max_size=12)


def cut_of(lines: list[bytes], bound: Bound, extra: int) -> tuple[int, int, int]:
    """How many of `lines` (each with its newline, if any) a bound keeps when each shows
    with `extra` more bytes; and how many lines and bytes it leaves out."""
    kept = size = 0
    for line in lines:
        if kept == bound.lines or size + len(line) + extra > bound.size:
            break
        kept, size = kept + 1, size + len(line) + extra
    rest = lines[kept:]
    return kept, len(rest), sum(map(len, rest))


def gnu_diff(a: str, b: str, unified: bool) -> list[str]:
    labels = ["-u", "--label", "a/etc/x", "--label", "b/etc/x"] if unified else []
    out = subprocess.run(["diff", "--text", *labels, a, b], capture_output=True).stdout
    return out.decode(errors="replace").removesuffix("\n").split("\n")


@settings(max_examples=80, deadline=None)
@given(
    lines=LINES.filter(lambda ls: b"x" not in ls[:-1]),  # "x" (no newline) only last
    added=st.booleans(),
    unified=st.booleans(),
    bound=st.builds(Bound, st.integers(1, 6), st.integers(1, 40)),
)
def test_a_created_or_deleted_files_diff_is_gnu_diffs_cut_at_the_bound(
    tmp_path_factory: pytest.TempPathFactory,
    lines: list[bytes],
    added: bool,
    unified: bool,
    bound: Bound,
) -> None:
    f = tmp_path_factory.mktemp("d") / "f"
    f.write_bytes(b"".join(lines))
    a, b = ("/dev/null", str(f)) if added else (str(f), "/dev/null")
    whole = gnu_diff(a, b, unified) if lines else []
    shown = _one_sided(
        io.BytesIO(b"".join(lines)), added, "/etc/x", "unified" if unified else "normal", bound
    )
    kept, more, size = cut_of(lines, bound, extra=2)
    if not more:
        assert shown.split("\n") == whole if lines else shown == ""
        return
    head = 3 if unified else 1
    *body, last = shown.split("\n")
    assert body == whole[: head + kept]
    assert last.startswith(f"\\ Diff cut: {more} more line(s), {size} bytes, not shown")


def test_a_modified_files_diff_is_gnu_diffs_cut_at_the_bound(tmp_path: Path) -> None:
    root, upper = tmp_path / "root", tmp_path / "upper"
    (root / "etc").mkdir(parents=True)
    (upper / "etc").mkdir(parents=True)
    (root / "etc/x").write_text("".join(f"old {i}\n" for i in range(50)))
    (upper / "etc/x").write_text("".join(f"new {i}\n" for i in range(50)))
    (change,) = read_changes(upper, [root], exclude=())
    for unified in (False, True):
        whole = gnu_diff(str(root / "etc/x"), str(upper / "etc/x"), unified)
        style = "unified" if unified else "normal"
        assert content_diff(change, style).split("\n") == whole  # within the bound: all
        lines = [(line + "\n").encode() for line in whole]
        for bound in (Bound(7, 1 << 20), Bound(1000, 64)):
            kept, more, size = cut_of(lines, bound, extra=0)
            *body, last = content_diff(change, style, bound).split("\n")
            assert body == whole[:kept] and more
            assert last.startswith(f"\\ Diff cut: {more} more line(s), {size} bytes, not shown")


MEASURED = """
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True)
sys.stderr.buffer.write(result.stderr)
sys.stdout.buffer.write(result.stdout)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_a_three_million_line_file_prints_and_keeps_two_thousand(
    state: Path, tmp_path: Path, scratch_root: Path, cmd: Run
) -> None:
    """Issue 22: NOOP took 660 MB, printed 3M diff lines and kept a 31 MB report."""
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-big.sh": "seq 3000000 > /srv/big\n"}})
    argv = [str(BIN / "disco"), "dance", "--noop", "--server", str(server), "--node", NODE,
            "--root", str(scratch_root)]  # fmt: skip
    env = {**os.environ, "DISCO_STATE": str(state), "NO_COLOR": "1"}
    run = subprocess.run([sys.executable, "-c", MEASURED, *argv], capture_output=True, env=env)
    *lines, peak = run.stdout.decode().splitlines()
    assert run.returncode == 0, run.stderr
    assert lines[2].startswith("info: File: file: /srv/big : Created") and lines[3] == "0a1,3000000"
    assert lines[4:6] == ["> 1", "> 2"] and lines[2003] == "> 2000"
    cut = "\\ Diff cut: 2998000 more line(s), 21.8 MiB, not shown"
    assert lines[2004].startswith(cut) and len(lines) == 2005
    assert int(peak) < 100_000  # KiB: disco and its children, never the file whole
    assert (state / "reports/last.json").stat().st_size < 100_000
    (change,) = json.loads(cmd("disco", "report", "--json").stdout)["changes"]
    assert change["diff"].splitlines()[-1].startswith(cut)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


SIZE = 256 << 20  # a sparse file of this size with a few bytes of data in it


def test_a_sparse_file_stays_sparse_in_the_state_the_root_and_the_undo_log(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"m": {}})
    shipped = server / "modules/m/files/srv/disk.img"
    shipped.parent.mkdir(parents=True)
    with open(shipped, "wb") as f:
        f.truncate(SIZE)
        f.seek(SIZE // 2)
        f.write(b"data in the middle")
    shipped.chmod(0o644)
    assert allocated(shipped) < 1 << 20
    for noop in (True, False):
        result = dance(cmd, server, scratch_root, noop=noop)
        assert result.returncode == 0, result.stdout + result.stderr
    delivered = scratch_root / "srv/disk.img"
    for path in (state / "modules/m/files/srv/disk.img", delivered):
        assert path.stat().st_size == SIZE and allocated(path) < 1 << 20, path
    with open(delivered, "rb") as f:
        f.seek(SIZE // 2)
        assert f.read(18) == b"data in the middle"
    shipped.chmod(0o600)  # a mode change alone: the undo log keeps a copy of the original
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    saved = list((state / "txn/history").glob("*/commits/*/saved/*"))
    assert saved and all(allocated(p) < 1 << 20 for p in saved)
    assert cmd("disco", "rollback", "--root", str(scratch_root)).returncode == 0
    assert delivered.stat().st_mode & 0o777 == 0o644 and allocated(delivered) < 1 << 20
