"""`disco timer`: the units a node dances by, checked by systemd's own verifier (DESIGN §13).

Every install here writes into a temporary --unit-dir: nothing is enabled on this machine.
"""

from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from conftest import BIN, Run, assert_one_error, tree_snapshot
from test_dance_cli import SEED

SERVICE, TIMER = "disco-dance.service", "disco-dance.timer"


def verify(unit_dir: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify, as a unit's author runs it."""
    units = [str(unit_dir / TIMER), str(unit_dir / SERVICE)]
    return subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False
    )


def settings(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")


def install(cmd: Run, unit_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cmd("disco", "timer", "install", "--unit-dir", str(unit_dir), *args)


def test_installed_units_pass_systemd_analyze_verify(cmd: Run, state: Path, tmp_path: Path) -> None:
    result = install(cmd, tmp_path / "units", "--every", "1h", "--splay", "20min", "--noop")
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert "Not enabled (--unit-dir)" in result.stdout
    checked = verify(tmp_path / "units")
    assert checked.returncode == 0 and not checked.stderr, checked.stderr
    timer = settings(tmp_path / "units" / TIMER)
    assert timer["OnCalendar"] == "*-*-* 00/1:00:00"
    assert timer["RandomizedDelaySec"] == "1200"
    assert timer["Persistent"] == "true" and timer["WantedBy"] == "timers.target"
    service = settings(tmp_path / "units" / SERVICE)
    assert service["Type"] == "oneshot"
    # cmd sets DISCO_STATE: the service dances with that state too
    assert service["ExecStart"] == f"{BIN / 'disco'} --state-dir {state} dance --wait 600 --noop"


def test_the_verifier_refuses_a_broken_unit(cmd: Run, tmp_path: Path) -> None:
    """The check above can fail: the same verifier, a timer with its schedule spoiled."""
    assert install(cmd, tmp_path).returncode == 0
    timer = tmp_path / TIMER
    timer.write_text(timer.read_text().replace("OnCalendar=*-*-*", "OnCalendar=never"))
    assert verify(tmp_path).returncode != 0


def test_the_state_dir_goes_into_the_service(cmd: Run, tmp_path: Path) -> None:
    state = tmp_path / "my state"
    result = cmd(
        "disco", "--state-dir", str(state), "timer", "install", "--unit-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    command = settings(tmp_path / SERVICE)["ExecStart"]
    assert command == f"{BIN / 'disco'} --state-dir '{state}' dance --wait 600"
    assert verify(tmp_path).returncode == 0


@pytest.mark.parametrize("how", ["DISCO_STATE", "relative --state-dir", "default"])
def test_the_service_dances_with_the_state_timer_status_reads(
    how: str, cmd: Run, tmp_path: Path
) -> None:
    """DISCO_STATE, as --state-dir, goes into the service, always as an absolute path."""
    state = tmp_path / "elsewhere"
    units = tmp_path / "units"
    argv = ("timer", "install", "--unit-dir", str(units))
    if how == "DISCO_STATE":
        result = cmd("disco", *argv, env={"DISCO_STATE": str(state)})
    elif how == "relative --state-dir":
        relative = os.path.relpath(state)
        result = cmd("disco", "--state-dir", relative, *argv, env={"DISCO_STATE": ""})
    else:
        result = cmd("disco", *argv, env={"DISCO_STATE": ""})
    assert result.returncode == 0, result.stderr
    command = settings(units / SERVICE)["ExecStart"]
    flag = "" if how == "default" else f" --state-dir {state}"
    assert command == f"{BIN / 'disco'}{flag} dance --wait 600"


def elapses(expression: str) -> list[datetime]:
    shown = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=3", expression],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.findall(r"(?:Next elapse|Iter\. #\d): \w+ (\S+ \S+)", shown)
    return [datetime.strptime(when, "%Y-%m-%d %H:%M:%S") for when in found]


@pytest.mark.parametrize("every,seconds", [("5min", 300), ("30min", 1800), ("6h", 21600)])
def test_the_timer_fires_every_period_by_systemds_own_calendar(
    every: str, seconds: int, cmd: Run, tmp_path: Path
) -> None:
    assert install(cmd, tmp_path, "--every", every, "--splay", "0").returncode == 0
    times = elapses(settings(tmp_path / TIMER)["OnCalendar"])
    assert len(times) == 3
    assert [(b - a).total_seconds() for a, b in zip(times, times[1:])] == [seconds, seconds]


@pytest.mark.parametrize(
    "args,names",
    [
        (["--every", "7min"], ["--every 7min", "divide an hour"]),
        (["--every", "soon"], ["--every soon", "30min"]),
        (["--every", "90min"], ["--every 90min"]),
        (["--splay", "2h"], ["--splay 2h", "--every 30min"]),
        (["--splay", "-5"], ["--splay -5"]),
    ],
)
def test_a_bad_schedule_is_refused_and_nothing_written(
    args: list[str], names: list[str], cmd: Run, tmp_path: Path
) -> None:
    assert_one_error(install(cmd, tmp_path / "units", *args), 2, *names)
    assert not (tmp_path / "units").exists()


@pytest.mark.skipif(
    Path("/run/systemd/system").is_dir(), reason="systemd runs here: an install would enable"
)
def test_without_systemd_the_timer_is_not_installed(cmd: Run) -> None:
    before = tree_snapshot(Path("/etc/systemd/system"))
    assert_one_error(cmd("disco", "timer", "install"), 1, "does not run systemd", "--unit-dir")
    assert tree_snapshot(Path("/etc/systemd/system")) == before


def test_a_unit_disco_did_not_write_is_left_alone(cmd: Run, tmp_path: Path) -> None:
    (tmp_path / TIMER).write_text("[Timer]\nOnCalendar=daily\n")
    assert_one_error(install(cmd, tmp_path), 1, str(tmp_path / TIMER), "not written by disco")
    assert (tmp_path / TIMER).read_text() == "[Timer]\nOnCalendar=daily\n"
    assert not (tmp_path / SERVICE).exists()
    result = cmd("disco", "timer", "remove", "--unit-dir", str(tmp_path))
    assert_one_error(result, 1, str(tmp_path / TIMER))
    assert (tmp_path / TIMER).exists()


def test_install_again_replaces_and_remove_takes_units_and_link(cmd: Run, tmp_path: Path) -> None:
    assert install(cmd, tmp_path).returncode == 0
    assert install(cmd, tmp_path, "--every", "10min", "--splay", "1min").returncode == 0
    assert settings(tmp_path / TIMER)["RandomizedDelaySec"] == "60"
    wants = tmp_path / "timers.target.wants"
    wants.mkdir()
    (wants / TIMER).symlink_to(tmp_path / TIMER)  # as systemctl enable links it
    status = cmd("disco", "timer", "status", "--unit-dir", str(tmp_path))
    assert "info: timer: enabled, OnCalendar=*-*-* *:00/10:00, splay 1min" in status.stdout
    result = cmd("disco", "timer", "remove", "--unit-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("info: Removed ") == 3
    assert sorted(os.listdir(tmp_path)) == ["timers.target.wants"] and not os.listdir(wants)
    again = cmd("disco", "timer", "remove", "--unit-dir", str(tmp_path))
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_status_shows_schedule_and_last_dance(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    units = tmp_path / "units"
    result = cmd("disco", "timer", "status", "--unit-dir", str(units))
    assert "no disco timer in" in result.stdout and "last dance: none yet" in result.stdout
    assert install(cmd, units, "--every", "2h", "--splay", "15min").returncode == 0
    node = ("--node", "localhost.localdomain", "--server", str(SEED), "--root", str(scratch_root))
    assert cmd("disco", "dance", "--noop", *node).returncode == 0
    status = cmd("disco", "timer", "status", "--unit-dir", str(units)).stdout.splitlines()
    assert status[0] == (
        "info: timer: not enabled (systemctl enable --now disco-dance.timer),"
        " OnCalendar=*-*-* 00/2:00:00, splay 15min"
    )
    assert status[1] == f"info: runs: {BIN / 'disco'} --state-dir {state} dance --wait 600"
    assert status[2] == "info: next run: unknown (systemd is not running here)" or (
        Path("/run/systemd/system").is_dir()
    )
    assert re.fullmatch(
        r"info: last dance: \S+Z noop, exit 0, \d+ changes, 0 failed steps", status[3]
    )
    assert not re.search(r" 0 changes", status[3])  # the seed's NOOP dance changes files
