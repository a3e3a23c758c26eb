"""Shared fixtures: the real commands, run as a user would, on state in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def cmd(state: Path) -> Run:
    """Run an installed disco command with DISCO_STATE pointing at the test's state dir."""

    def run(
        *argv: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "DISCO_STATE": str(state), "NO_COLOR": "1", **(env or {})}
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=full_env,
            check=False,
        )

    return run


def assert_one_error(result: subprocess.CompletedProcess[str], status: int, *names: str) -> None:
    """Exit `status`, and exactly one `error:` line on stderr naming every one of `names`."""
    lines = result.stderr.splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], lines[0]


def tree_snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under `root` with its mode and content, to prove nothing changed."""
    snapshot: dict[str, tuple[int, bytes]] = {}
    if not root.exists():
        return snapshot
    for path in sorted(root.rglob("*")):
        if path.name == "lock":
            continue
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        snapshot[str(path.relative_to(root))] = (st.st_mode, data)
    return snapshot
