"""A checkout passes its tests wherever it lives (issue 11).

`git clone` into root's home or a `mktemp -d` folder gives a checkout no other user can
enter. The ssh tests run programs as a throw-away server user: they must not need to read
the checkout. This runs tests/test_ssh_isolation.py (the tests that run disco-server as that
user) once more, from a copy of the checkout's files under a 0700 folder, with disco
imported from that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent


def tracked_files() -> list[str]:
    """The files a clone would hold, as they are now in this checkout."""
    if shutil.which("git") is None or not (CHECKOUT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    listed = subprocess.run(
        ["git", "-C", str(CHECKOUT), "ls-files", "-z"], capture_output=True, check=True
    )
    names = [name.decode() for name in listed.stdout.split(b"\0") if name]
    return [name for name in names if (CHECKOUT / name).exists()]  # deleted, not committed


def test_the_ssh_tests_pass_from_a_checkout_only_root_can_enter(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    clone = private / "disco"
    for name in tracked_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CHECKOUT / name, clone / name, follow_symlinks=False)  # balls -> src/...
    # The control: an unprivileged user cannot even see the copy's files.
    seen = subprocess.run(["runuser", "-u", "nobody", "--", "test", "-e", str(clone / "src")])
    assert seen.returncode != 0, "the private folder is readable by nobody: no proof"
    env = {**os.environ, "PYTHONPATH": str(clone / "src")}
    where = subprocess.run(
        [sys.executable, "-c", "import disco; print(disco.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(clone)), where.stdout
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + ["tests/test_ssh_isolation.py"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-2000:]
