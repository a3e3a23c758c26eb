"""A server that stops answering in the middle of a fetch is passed over like one that
never answered (DESIGN §5): the fetch starts again from the next server of the list."""

from __future__ import annotations

from pathlib import Path

from conftest import Run
from sshd import SSHServer, sshd_server
from test_ssh import NODE, SEED, configure, dance

__all__ = ["sshd_server"]  # the module-scoped fixture


def test_a_server_failing_after_the_parameters_is_passed_over(
    cmd: Run, tmp_path: Path, sshd_server: SSHServer, scratch_root: Path
) -> None:
    conf = sshd_server.rsyncd_conf
    before = conf.read_text()
    # The node's parameters come, then a module's rsync is refused: the server broke.
    broken = before.replace(
        "[othermodule-3.2]\n",
        "[othermodule-3.2]\nauth users = nobody\nsecrets file = /nonexistent\n",
    )
    assert broken != before
    conf.write_text(broken)
    try:
        state = tmp_path / "state"
        configure(cmd, state, f"{sshd_server.uri}\n{SEED}", sshd_server.rsync_command())
        result = dance(cmd, state, "--root", str(scratch_root), noop=True)
    finally:
        conf.write_text(before)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    passed = [line for line in lines if line.startswith("warning: ")]
    assert len(passed) == 1 and sshd_server.uri in passed[0] and "auth failed" in passed[0]
    assert passed[0].endswith("; passed over")
    assert f"info: Fetched from server {SEED}" in lines
    assert "info: Processing othermodule-3.2" in lines
    assert (state / "parameters" / NODE).is_dir()
