"""A plain rsync daemon (rsync://host:port/) on loopback, serving the seed's example."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import EXAMPLES, Run, assert_one_error
from sshd import free_port

NODE = "localhost.localdomain"
CONF = """\
uid = root
gid = root
use chroot = false
pid file = {tmp}/rsyncd.pid
[parameters]
path = {tmp}/srv/parameters
read only = true
[testmodule-1.0]
path = {tmp}/srv/modules/testmodule-1.0
read only = true
[othermodule-3.2]
path = {tmp}/srv/modules/othermodule-3.2
read only = true
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """rsync --daemon on 127.0.0.1 with the seed's rsyncd.conf modules; its URI."""
    tmp = tmp_path_factory.mktemp("rsyncd")
    shutil.copytree(EXAMPLES / "seed", tmp / "srv")
    (tmp / "rsyncd.conf").write_text(CONF.format(tmp=tmp))
    port = free_port()
    argv = ["rsync", "--daemon", "--no-detach", "--address=127.0.0.1", f"--port={port}"]
    proc = subprocess.Popen([*argv, f"--config={tmp}/rsyncd.conf"])
    try:
        uri = f"rsync://127.0.0.1:{port}/"
        for _ in range(100):
            if subprocess.run(["rsync", uri], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        yield uri
    finally:
        proc.kill()
        proc.wait()


def dance(cmd: Run, state: Path, server: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cmd("disco", "dance", "--noop", "--server", server, "--node", NODE,
               "--state-dir", str(state), *args)  # fmt: skip


def test_the_seed_over_a_plain_rsync_daemon_is_the_seed_from_a_directory(
    cmd: Run, tmp_path: Path, daemon: str, real_root_unchanged: None
) -> None:
    over_daemon = dance(cmd, tmp_path / "a", daemon)
    from_directory = dance(cmd, tmp_path / "b", str(EXAMPLES / "seed"))
    assert over_daemon.returncode == 0, over_daemon.stderr
    assert over_daemon.stdout == from_directory.stdout
    assert "> KEY_VALUE=LOLTHISKEYMEANSNOTHING" in over_daemon.stdout


def test_a_server_rsync_too_old_for_an_option_says_so(
    cmd: Run, tmp_path: Path, daemon: str, real_root_unchanged: None
) -> None:
    # The daemon does not know the option, as an old rsync would not know a new one.
    cmd("disco-param", "--state-dir", str(tmp_path / "s"), "set",
        "disco/client/cmds/rsync", "rsync -aWH -M--bogus-opt")  # fmt: skip
    result = dance(cmd, tmp_path / "s", daemon)
    assert_one_error(result, 1, daemon, "--bogus-opt", "upgrade rsync")
