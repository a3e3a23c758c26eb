"""`disco-server mirror`: the server tree pushed to a mirror over a real sshd (DESIGN §13)."""

from __future__ import annotations

import shlex
from pathlib import Path

from conftest import Run, assert_one_error, tree_snapshot
from sshd import SSHServer, sshd_server

__all__ = ["sshd_server"]  # the module-scoped fixture


def ssh_of(server: SSHServer, port: int | None = None) -> str:
    return shlex.split(server.rsync_command(port=port))[2]


def primary(cmd: Run, tmp_path: Path) -> tuple[Path, str]:
    srv, config = tmp_path / "srv", str(tmp_path / "c")
    assert cmd("disco-server", "init", str(srv), "--with-balls", "--config", config).returncode == 0
    (srv / "parameters/web1.example.com/modules").mkdir(parents=True)
    (srv / "parameters/web1.example.com/modules/motd").touch()
    (srv / "reports/web1.example.com").mkdir(parents=True)
    (srv / "reports/web1.example.com/last.json").write_text("{}\n")  # stays on this server
    return srv, config


def test_mirror_copies_parameters_and_modules_exactly(
    cmd: Run, tmp_path: Path, sshd_server: SSHServer
) -> None:
    srv, config = primary(cmd, tmp_path)
    home = sshd_server.home
    args = ["--rsh", ssh_of(sshd_server), "--remote-dir", str(home), "--no-sync"]
    result = cmd("disco-server", "mirror", sshd_server.uri, *args, "--config", config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"info: Mirrored {srv} to {sshd_server.uri}:{home}\n"
    for part in ("parameters", "modules"):
        assert tree_snapshot(home / part) == tree_snapshot(srv / part)
    assert not (home / "reports").exists()
    assert (home / "modules/users").stat().st_uid == home.stat().st_uid  # the mirror's user
    # A module that leaves the server leaves the mirror.
    (srv / "modules/motd/README.md").unlink()
    assert cmd("disco-server", "mirror", sshd_server.uri, *args, "--config", config).returncode == 0
    assert not (home / "modules/motd/README.md").exists()


def test_a_mirror_that_cannot_be_reached_is_an_error_the_others_still_get_it(
    cmd: Run, tmp_path: Path, sshd_server: SSHServer
) -> None:
    srv, config = primary(cmd, tmp_path)
    ssh = ssh_of(sshd_server, port=1)  # nothing listens
    args = ["--rsh", ssh, "--remote-dir", str(tmp_path / "m"), "--no-sync", "--config", config]
    result = cmd("disco-server", "mirror", sshd_server.uri, *args)
    assert_one_error(
        result, 1, f"mirror {sshd_server.uri}", "Connection refused", "disco-server init"
    )


def test_a_bad_mirror_name_is_a_usage_error(cmd: Run, tmp_path: Path) -> None:
    srv, config = primary(cmd, tmp_path)
    result = cmd("disco-server", "mirror", "bad host", "--config", config)
    assert_one_error(result, 2, "'bad host'", "[user@]host")
