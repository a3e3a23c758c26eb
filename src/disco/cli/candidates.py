"""What `disco dance` says of the candidates it planned after the dance (DESIGN §15)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from disco.cli.common import Output
from disco.cli.dance_output import DanceOutput
from disco.cli.stdio import DanceStdio
from disco.client.state import Settings, State
from disco.client.transport import Server
from disco.plan.candidates import plan_candidates


def console() -> DanceOutput:
    """A plan's dances' output: warnings and errors on stderr, changes kept, not printed."""
    return DanceOutput(DanceStdio(json=True, intercept=True, progress=False), quiet=True, json=True)


def after_dance(
    args: argparse.Namespace, state: State, node: str, root: Path
) -> Callable[[Settings, Server], None]:
    """run.dance's `then`: plan the candidates, and say how each went."""

    def then(settings: Settings, server: Server) -> None:
        say = Output(out=sys.stderr) if args.json else Output()
        for done in plan_candidates(state, node, root, settings, server, console):
            if done.problem is not None:
                hint = f"; {done.problem.hint}" if done.problem.hint else ""
                what = "candidates" if done.name == "*" else f"candidate {done.name}"
                say.warning(f"{what}: not planned: {done.problem.message}{hint}")
            elif not done.again:
                if not args.quiet:
                    say.info(
                        f"Candidate {done.name}: planned already, and neither tree changed"
                        f" since (plans/{done.name}/{node}.json on {server.uri})"
                    )
            elif done.pushed:
                say.info(
                    f"Planned candidate {done.name} ({done.affects}):"
                    f" pushed to plans/{done.name}/{node}.json on {server.uri}"
                )
            elif not args.quiet:
                say.info(f"Candidate {done.name} does not affect this node: not planned")

    return then
