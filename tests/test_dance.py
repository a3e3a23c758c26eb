"""The dance end to end (DESIGN §6-§10): the seed's example, NOOP and live."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from conftest import EXAMPLES, Run, fingerprint

SEED = EXAMPLES / "seed"
NODE = "localhost.localdomain"
STUFF = "HOST=localhost.localdomain\nKEY_VALUE=LOLTHISKEYMEANSNOTHING\n"


def seed_dance(cmd: Run, state: Path, *args: str, noop: bool = False) -> tuple[int, str]:
    env = {"NOOP": "true"} if noop else {"NOOP": ""}
    result = cmd("disco", "dance", "--server", str(SEED), "--node", NODE, "--state-dir",
                 str(state), *args, env=env)  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def test_noop_seed_dance_on_the_real_root_shows_everything_and_changes_nothing(
    cmd: Run, state: Path
) -> None:
    before = fingerprint()
    status, output = seed_dance(cmd, state, noop=True)
    assert status == 0, output
    lines = output.splitlines()
    assert "info: Processing testmodule-1.0" in lines
    assert "Hello, disco" in lines
    assert "warning: Would execute : service postgresql stop" in lines
    assert "info: Processing othermodule-3.2" in lines
    created = [line for line in lines if "/etc/othermodule/stuff.cfg : Created" in line]
    assert len(created) == 1
    assert created[0].startswith("info: File: file: /etc/othermodule/stuff.cfg : Created : ")
    assert "type=[regular file]" in created[0] and "perms=[root:root 644]" in created[0]
    assert "mode=[81a4]" in created[0]
    md5 = hashlib.md5(STUFF.encode()).hexdigest()
    assert f"md5=[{md5}]" in created[0]
    at = lines.index(created[0])
    assert lines[at + 1 : at + 4] == [
        "0a1,2",
        "> HOST=localhost.localdomain",
        "> KEY_VALUE=LOLTHISKEYMEANSNOTHING",
    ]
    assert not os.path.exists("/etc/othermodule")
    assert fingerprint() == before


def test_live_seed_dance_into_a_scratch_root_then_again_changes_nothing(
    cmd: Run, state: Path, scratch_root: Path
) -> None:
    status, output = seed_dance(cmd, state, "--root", str(scratch_root), "--effects", "run")
    assert status == 0, output
    assert "Hello, disco" in output
    assert "service postgresql stop: done" in output  # --effects run: the command really ran
    assert "Would execute" not in output
    stuff = scratch_root / "etc/othermodule/stuff.cfg"
    assert stuff.read_text() == STUFF
    assert stuff.stat().st_mode & 0o7777 == 0o644
    status, output = seed_dance(cmd, state, "--root", str(scratch_root), "--detailed-exitcodes")
    assert "warning: Would execute : service postgresql stop" in output  # not the running system
    assert status == 0, output
    assert "info: File:" not in output


def test_noop_and_live_report_the_same_changes(
    cmd: Run, state: Path, scratch_root: Path, tmp_path: Path
) -> None:
    _, noop = seed_dance(cmd, state, "--root", str(scratch_root), noop=True)
    assert not (scratch_root / "etc/othermodule").exists()
    _, live = seed_dance(cmd, tmp_path / "state2", "--root", str(scratch_root))
    records = [[line for line in out.splitlines() if line.startswith("info: File:")]
               for out in (noop, live)]  # fmt: skip
    assert records[0] and records[0] == records[1]
