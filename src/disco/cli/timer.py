"""disco timer: let systemd run the dance every so often, with splay (DESIGN §13)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from disco.cli.common import Output, Parser, subparser
from disco.client import timer
from disco.client.state import DEFAULT_STATE, State
from disco.errors import DiscoError
from disco.report.metrics import load_last

HOW = "systemctl enable --now disco-dance.timer"


def add_parser(subs: argparse._SubParsersAction[Parser]) -> Parser:
    s = subparser(
        subs,
        "timer",
        "run the dance from a systemd timer: install, remove, status",
        "disco timer install --every 30min --splay 10min",
    )
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
    i = subparser(
        verbs,
        "install",
        "write disco-dance.service and .timer, and enable the timer",
        "disco timer install --every 1h --splay 20min --noop",
    )
    i.add_argument("--every", default="30min", metavar="SPAN", help="period (default: 30min)")
    i.add_argument(
        "--splay",
        default="10min",
        metavar="SPAN",
        help="start up to SPAN late, fixed per node, to spread a fleet (default: 10min)",
    )
    i.add_argument("--noop", action="store_true", help="timed dances only show what would change")
    for verb in (
        i,
        subparser(verbs, "remove", "disable the timer, remove its units", "disco timer remove"),
        subparser(verbs, "status", "schedule, next run, last dance", "disco timer status"),
    ):
        verb.add_argument(
            "--unit-dir",
            type=Path,
            metavar="DIR",
            help=f"write the units here and leave systemd alone (default: {timer.UNIT_DIR},"
            " enabled with systemctl)",
        )
    return s


def disco_path() -> Path:
    """The disco command the service runs: this one, or the one on PATH."""
    me = Path(os.path.abspath(sys.argv[0]))
    if me.name == "disco" and me.is_file():
        return me
    found = shutil.which("disco")
    if found is None:
        raise DiscoError("no disco command on PATH", "run 'make install' first")
    return Path(found)


def run(args: argparse.Namespace) -> int:
    out = Output()
    unit_dir = args.unit_dir or timer.UNIT_DIR
    managed = args.unit_dir is None  # systemd is told only about its own directory
    if args.verb == "install":
        plan = timer.schedule(args.every, args.splay, args.noop)
        # The state this command uses (--state-dir, else DISCO_STATE), as an absolute path:
        # the service's dances use it too, and `timer status` reads it.
        state = os.path.abspath(State.locate(args.state_dir).root)
        chosen = None if state == str(DEFAULT_STATE) else state
        command = timer.dance_command(disco_path(), chosen, plan)
        for path in timer.install(unit_dir, command, plan, enable=managed):
            out.info(f"Wrote {path}")
        when = f"every {timer.span(plan.every)}, up to {timer.span(plan.splay)} late"
        if managed:
            out.info(f"Enabled {timer.TIMER}: disco dances {when}")
        else:
            out.info(
                f"Not enabled (--unit-dir): to dance {when}, copy the units into"
                f" {timer.UNIT_DIR}, then {HOW}"
            )
    elif args.verb == "remove":
        removed = timer.remove(unit_dir, disable=managed)
        for path in removed:
            out.info(f"Removed {path}")
        if not removed:
            out.info(f"no disco timer in {unit_dir}: nothing to remove")
        elif managed and not timer.systemd_running():
            out.warning("no running systemd was told: it reads the units again when it starts")
    else:
        show(out, unit_dir, State.locate(args.state_dir))
    return 0


def show(out: Output, unit_dir: Path, state: State) -> None:
    found = timer.status(unit_dir)
    if not found.installed:
        out.info(f"no disco timer in {unit_dir}; install one with 'disco timer install'")
    else:
        enabled = "enabled" if found.enabled else f"not enabled ({HOW})"
        out.info(f"timer: {enabled}, OnCalendar={found.calendar}, splay {found.splay}")
        out.info(f"runs: {found.command}")
        out.info(f"next run: {timer.next_run() or 'unknown (systemd is not running here)'}")
    try:
        last = load_last(state.reports)
    except DiscoError:
        out.info(f"last dance: none yet in {state.reports}")
        return
    failed = sum(1 for record in last.records if record.exit != 0)
    out.info(
        f"last dance: {last.started} {last.mode}, exit {last.exit},"
        f" {len(last.changes)} changes, {failed} failed steps"
    )
