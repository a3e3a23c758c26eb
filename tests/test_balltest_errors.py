"""disco test: every bad input is one `error:` line naming the thing and the fix."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

import balltest_fixtures as fx
from conftest import BIN, assert_one_error, disco_as_nobody


def disco_test(*args: str, cwd: Path, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", **({"TMPDIR": str(tmp)} if tmp else {})}
    return subprocess.run([str(BIN / "disco"), "test", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip


@pytest.fixture
def motd(tmp_path: Path) -> Path:
    """A ball with one scenario, to break in each test."""
    return fx.ball(tmp_path, "motd", "#!/bin/bash\necho hi >/etc/motd\n", {"plain": {}})


def test_a_ball_that_is_not_there(tmp_path: Path) -> None:
    assert_one_error(disco_test("nosuch", cwd=tmp_path), 2, "ball nosuch", str(tmp_path))
    where = str(tmp_path / "a" / "b")
    assert_one_error(disco_test(where, cwd=tmp_path), 2, f"ball {where}: no such directory")


def test_no_ball_here(tmp_path: Path) -> None:
    assert_one_error(disco_test(cwd=tmp_path), 2, f"no ball with tests in {tmp_path}")


def test_a_ball_without_tests(tmp_path: Path, motd: Path) -> None:
    os.rename(motd / "tests", tmp_path / "elsewhere")
    assert_one_error(disco_test("motd", cwd=tmp_path), 1, "ball motd: no tests/ directory")
    (motd / "tests").mkdir()
    assert_one_error(disco_test("motd", cwd=tmp_path), 1, "ball motd", "holds no scenario")


def test_a_scenario_whose_parameters_is_not_a_directory(tmp_path: Path, motd: Path) -> None:
    (motd / "tests" / "plain" / "parameters").rmdir()
    (motd / "tests" / "plain" / "parameters").write_text("motd/text hello\n")
    result = disco_test("motd", cwd=tmp_path)
    where = motd / "tests" / "plain" / "parameters"
    assert_one_error(result, 1, f"ball motd: scenario plain: {where} is not a directory")


def test_an_unknown_entry_in_a_scenario(tmp_path: Path, motd: Path) -> None:
    (motd / "tests" / "plain" / "verfiy").write_text("#!/bin/bash\n")
    result = disco_test("motd", cwd=tmp_path)
    assert_one_error(result, 1, "scenario plain: unknown entry 'verfiy'", "verify")


def test_a_scenario_name_that_is_no_name(tmp_path: Path, motd: Path) -> None:
    (motd / "tests" / "-x" / "parameters").mkdir(parents=True)
    assert_one_error(disco_test("motd", cwd=tmp_path), 2, "scenario name '-x'")


def test_a_verify_that_is_a_directory(tmp_path: Path, motd: Path) -> None:
    (motd / "tests" / "plain" / "verify").mkdir()
    assert_one_error(disco_test("motd", cwd=tmp_path), 1, "verify is not a file")


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("/var/lib/x/*\n", "line 1: '/var/lib/x/*' has no reason"),
        ("# fine\nvar/lib/x  # relative\n", "line 2: 'var/lib/x' is not an absolute path glob"),
        ("/a /b  # two\n", "'/a /b' is not an absolute path glob"),
    ],
)
def test_a_bad_volatile_line(tmp_path: Path, motd: Path, text: str, said: str) -> None:
    (motd / "tests" / "plain" / "volatile").write_text(text)
    assert_one_error(disco_test("motd", cwd=tmp_path), 1, "scenario plain: volatile", said)


def test_a_required_ball_not_beside_it(tmp_path: Path, motd: Path) -> None:
    (motd / "requires").write_text("# what it needs\nafter users\n")
    result = disco_test("motd", cwd=tmp_path)
    assert_one_error(result, 1, "requires users (line 2)", str(tmp_path / "users"))


def test_root_and_image_cannot_both_be_given(tmp_path: Path, motd: Path) -> None:
    result = disco_test("motd", "--root", "/", "--image", "x.tar", cwd=tmp_path)
    assert_one_error(result, 2, "--image", "not allowed with argument --root")


def test_a_root_that_is_not_a_directory(tmp_path: Path, motd: Path) -> None:
    result = disco_test("motd", "--root", str(tmp_path / "none"), cwd=tmp_path)
    assert_one_error(result, 2, f"--root {tmp_path / 'none'} is not a directory")


def test_an_image_that_is_not_a_root_tarball(tmp_path: Path, motd: Path) -> None:
    result = disco_test("motd", "--image", str(tmp_path / "none.tar"), cwd=tmp_path)
    assert_one_error(result, 2, f"--image {tmp_path / 'none.tar'} is not a file")
    junk = tmp_path / "junk.tar"
    junk.write_text("not a tarball\n")
    scratch = tmp_path / "scratch"  # where the scratch roots would be: left empty
    scratch.mkdir()
    result = disco_test("motd", "--image", str(junk), cwd=tmp_path, tmp=scratch)
    assert_one_error(result, 1, f"--image {junk}: cannot unpack it", "docker export")
    small = tmp_path / "small.tar"
    with tarfile.open(small, "w") as tar:
        tar.add(motd / "scripts", arcname="scripts")
    result = disco_test("motd", "--image", str(small), cwd=tmp_path, tmp=scratch)
    assert_one_error(result, 1, f"--image {small} holds no root", "mmdebstrap")
    result = disco_test("motd", "--keep", "--image", str(small), cwd=tmp_path, tmp=scratch)
    assert_one_error(result, 1, f"--image {small} holds no root")
    assert list(scratch.iterdir()) == []  # nothing left, --keep or not


def test_junit_into_a_missing_directory(tmp_path: Path, motd: Path) -> None:
    result = disco_test("motd", "--junit", str(tmp_path / "no" / "r.xml"), cwd=tmp_path)
    assert_one_error(result, 2, "--junit", str(tmp_path / "no"))


def test_not_root(tmp_path: Path, motd: Path) -> None:
    world = Path("/tmp") / f"disco-test-user-{os.getpid()}"
    os.rename(tmp_path / "motd", world)
    python = Path("/tmp") / f"disco-test-python-{os.getpid()}"
    try:
        os.chmod(world, 0o755)
        python.mkdir(mode=0o755)
        argv = [*disco_as_nobody(python), "test", str(world)]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        assert_one_error(result, 1, "disco test needs root", "sudo")
    finally:
        os.rename(world, tmp_path / "motd")
        shutil.rmtree(python, ignore_errors=True)


def test_terminated_it_leaves_no_scratch_root(tmp_path: Path) -> None:
    """SIGTERM in the middle of a dance: the scratch roots are unmounted and removed."""
    fx.ball(tmp_path, "sleeper", "#!/bin/bash\nsleep 61.25\n", {"plain": {}})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "NO_COLOR": "1", "TMPDIR": str(scratch)}
    child = subprocess.Popen([str(BIN / "disco"), "test", "sleeper"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for _ in range(1200):  # until the ball's script runs: a dance is under way
            if subprocess.run(["pgrep", "-fx", "sleep 61.25"], capture_output=True).stdout:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert err.splitlines()[-1] == "error: interrupted", err
    assert list(scratch.iterdir()) == []
