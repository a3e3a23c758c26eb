"""A sandboxed step's limits (DESIGN §7, issue 21): its cgroup's processes and memory, the
layers' tmpfs. Hitting one fails the step with a message that names the limit and the
setting that raises it; the machine never notices. Every dance is NOOP on a scratch root
or live on one (sandboxed there too), with small limits set for the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import Run
from test_dance_steps import NODE, dance, make_server

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def limited(cmd: Run, **limits: int) -> None:
    for name, value in limits.items():
        result = cmd("disco-param", "set", f"disco/client/sandbox/{name}", input=f"{value}\n")
        assert result.returncode == 0, result.stderr


@root_only
@pytest.mark.parametrize("noop", [True, False])
def test_a_step_past_its_process_limit_fails_naming_it(
    cmd: Run, tmp_path: Path, scratch_root: Path, noop: bool
) -> None:
    # A bounded loop: at most 200 sleeps, none of which outlives the step.
    script = "set -e\nfor i in $(seq 200); do sleep 30 & done\nwait\n"
    server = make_server(tmp_path / "srv", {"forks": {"scripts/10-forks": script}})
    limited(cmd, pids_max=50)
    result = dance(cmd, server, scratch_root, noop=noop)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "forks: script 10-forks exited with status" in result.stderr
    assert "its limit of processes (disco/client/sandbox/pids_max = 50)" in result.stderr


@root_only
def test_a_step_past_its_memory_limit_fails_naming_it(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    script = "python3 -c 'x = bytearray(400 << 20); x[::4096] = b\"x\" * len(x[::4096])'\n"
    server = make_server(tmp_path / "srv", {"hog": {"scripts/10-hog": script}})
    limited(cmd, memory_mb=64)
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "its memory limit (disco/client/sandbox/memory_mb = 64)" in result.stderr


@root_only
def test_a_step_that_fills_the_layers_fails_naming_their_size(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    script = "head -c 40M /dev/zero > /srv/big\n"
    server = make_server(tmp_path / "srv", {"fill": {"scripts/10-fill": script}})
    limited(cmd, tmpfs_mb=16)
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No space left on device" in result.stderr
    assert "layers full (their tmpfs holds disco/client/sandbox/tmpfs_mb = 16)" in result.stderr
    assert not (scratch_root / "srv/big").exists()


@root_only
def test_a_limit_that_is_not_a_number_is_refused_before_the_dance(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-m": "true\n"}})
    limited(cmd)
    cmd("disco-param", "set", "disco/client/sandbox/pids_max", input="lots\n")
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 1
    assert "error: disco/client/sandbox/pids_max is 'lots', not a whole number" in result.stderr
    assert "disco-param set disco/client/sandbox/pids_max" in result.stderr
    assert NODE not in os.listdir(tmp_path / "state" / "parameters")  # refused before the fetch
