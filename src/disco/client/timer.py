"""A node that dances by itself: a systemd service and timer (DESIGN §13).

The timer fires on the clock (`OnCalendar`, so that `Persistent=true` catches up a run
missed while the machine was off) plus a random delay of up to the splay
(`RandomizedDelaySec`), fixed per machine (`FixedRandomDelay`): a fleet spreads its
dances evenly over the splay, and each node keeps a steady rhythm. The service runs
`disco dance --wait 600`, so a dance an administrator started by hand is waited for, not
counted as a failure.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from disco.errors import DiscoError, UsageError
from disco.files import write_atomic
from disco.run import run

UNIT_DIR = Path("/etc/systemd/system")
SERVICE = "disco-dance.service"
TIMER = "disco-dance.timer"
WANTS = "timers.target.wants"
MARK = "# Written by 'disco timer install'; 'disco timer remove' removes it."
LOCK_WAIT = 600  # seconds a timed dance waits for a dance that holds the lock
UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
SPAN = re.compile(r"(\d+)\s*(s|sec|m|min|h|hour|d|day)?")


@dataclass(frozen=True)
class Schedule:
    every: int  # seconds between dances
    splay: int  # the most seconds a dance starts late
    noop: bool


@dataclass(frozen=True)
class Status:
    installed: bool
    calendar: str  # OnCalendar= of the installed timer, "" if none
    splay: str  # RandomizedDelaySec=
    command: str  # ExecStart=
    enabled: bool  # linked into timers.target.wants


def seconds(text: str, flag: str) -> int:
    """A systemd time span as seconds: `30min`, `2h`, `1d`, `90` (seconds)."""
    match = SPAN.fullmatch(text.strip())
    if match is None:
        raise UsageError(
            f"{flag} {text}: not a time span", "write a number and a unit: 30min, 2h, 1d, 45s"
        )
    return int(match[1]) * UNITS[match[2] or "s"]


def calendar(every: int) -> str:
    """The OnCalendar= expression that fires every `every` seconds, on the clock."""
    if every == 86400:
        return "*-*-* 00:00:00"
    if every % 3600 == 0 and 24 % (every // 3600) == 0:
        return f"*-*-* 00/{every // 3600}:00:00"
    if every % 60 == 0 and 60 % (every // 60) == 0:
        return f"*-*-* *:00/{every // 60}:00"
    raise UsageError(
        f"--every {span(every)}: the timer runs on the clock, so that a run missed while the"
        " machine was off is caught up (Persistent=true)",
        "give minutes that divide an hour (5min, 10min, 15min, 20min, 30min), hours that divide"
        " a day (1h, 2h, 3h, 4h, 6h, 8h, 12h) or 1d",
    )


def span(value: int) -> str:
    """Seconds as systemd writes a span: 600 -> 10min."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}s"


def schedule(every: str, splay: str, noop: bool) -> Schedule:
    period, delay = seconds(every, "--every"), seconds(splay, "--splay")
    calendar(period)  # refuses what the clock cannot express
    if delay > period:
        raise UsageError(
            f"--splay {splay} is longer than --every {every}",
            "a splay up to the period spreads the fleet; give a shorter one",
        )
    return Schedule(period, delay, noop)


def dance_command(disco: Path, state_dir: str | None, plan: Schedule) -> list[str]:
    argv = [str(disco)] + (["--state-dir", state_dir] if state_dir else [])
    return argv + ["dance", "--wait", str(LOCK_WAIT)] + (["--noop"] if plan.noop else [])


def service_text(command: list[str]) -> str:
    # Escape % (a systemd specifier) and quote words that need it.
    words = " ".join(shlex.quote(word).replace("%", "%%") for word in command)
    return f"""{MARK}
[Unit]
Description=disco dance: apply this node's configuration from its server
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={words}
# A dance spends its time in rsync and bash: let the node's own work go first.
Nice=10
IOSchedulingClass=best-effort
IOSchedulingPriority=7
"""


def timer_text(plan: Schedule) -> str:
    return f"""{MARK}
[Unit]
Description=disco dance every {span(plan.every)}, up to {span(plan.splay)} late

[Timer]
OnCalendar={calendar(plan.every)}
RandomizedDelaySec={plan.splay}
FixedRandomDelay=true
Persistent=true
AccuracySec=1s

[Install]
WantedBy=timers.target
"""


def systemd_running() -> bool:
    """Is this machine booted with systemd (sd_booted's test)?"""
    return Path("/run/systemd/system").is_dir()


def need_systemd(what: str) -> None:
    if not systemd_running():
        raise DiscoError(
            f"cannot {what}: this machine does not run systemd (no /run/systemd/system)",
            "run disco from cron instead ('disco dance --wait 600' every 30 minutes),"
            " or give --unit-dir DIR to only write the unit files",
        )


def ours(path: Path) -> bool:
    """Did `disco timer install` write `path`?"""
    try:
        return path.read_text(errors="replace").startswith(MARK)
    except OSError:
        return False


def install(unit_dir: Path, command: list[str], plan: Schedule, enable: bool) -> list[Path]:
    """Write the two units into `unit_dir`; `enable`: tell systemd and start the timer."""
    if enable:
        need_systemd("install the timer")
    if not Path(command[0]).is_file() or not os.access(command[0], os.X_OK):
        raise DiscoError(f"{command[0]} is not an executable disco", "run 'make install' first")
    written = []
    for name, text in ((SERVICE, service_text(command)), (TIMER, timer_text(plan))):
        path = unit_dir / name
        if path.exists() and not ours(path):
            raise DiscoError(
                f"{path} exists and was not written by disco", "move it away, then install again"
            )
        written.append((path, text))
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        for path, text in written:
            write_atomic(path, text.encode(), 0o644)
    except OSError as e:
        raise DiscoError(f"cannot write {e.filename}: {e.strerror}", "check --unit-dir") from None
    if enable:
        run(["systemctl", "daemon-reload"])
        run(["systemctl", "enable", "--now", TIMER])
    return [path for path, _ in written]


def remove(unit_dir: Path, disable: bool) -> list[Path]:
    """Stop and disable the timer (`disable`), then remove the units disco wrote."""
    if disable and systemd_running():
        run(["systemctl", "disable", "--now", TIMER], check=False)
    removed = []
    link = unit_dir / WANTS / TIMER
    if link.is_symlink() and os.readlink(link).endswith(TIMER):
        link.unlink()
        removed.append(link)
    for path in (unit_dir / TIMER, unit_dir / SERVICE):
        if path.exists() and not ours(path):
            raise DiscoError(f"{path} was not written by disco", "remove it yourself")
        if path.exists():
            path.unlink()
            removed.append(path)
    if disable and systemd_running():
        run(["systemctl", "daemon-reload"])
    return removed


def setting(text: str, key: str) -> str:
    found = [line.partition("=")[2] for line in text.splitlines() if line.startswith(f"{key}=")]
    return found[-1] if found else ""


def status(unit_dir: Path) -> Status:
    timer, service = unit_dir / TIMER, unit_dir / SERVICE
    if not (ours(timer) and ours(service)):
        return Status(False, "", "", "", False)
    ttext, stext = timer.read_text(), service.read_text()
    enabled = (unit_dir / WANTS / TIMER).is_symlink()
    return Status(
        True,
        setting(ttext, "OnCalendar"),
        span(int(setting(ttext, "RandomizedDelaySec") or 0)),
        setting(stext, "ExecStart"),
        enabled,
    )


def next_run() -> str:
    """When systemd will start the next dance, as it says it; "" if it cannot say."""
    if not systemd_running():
        return ""
    shown = run(
        ["systemctl", "show", TIMER, "--property=NextElapseUSecRealtime", "--value"], check=False
    )
    return shown.stdout.decode(errors="replace").strip()
