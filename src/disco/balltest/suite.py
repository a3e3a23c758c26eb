"""`disco test`: every scenario of the balls, each on a fresh scratch root."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from disco.balltest.results import Check
from disco.balltest.roots import Roots, Source
from disco.balltest.scenario_run import run_scenario
from disco.balltest.scenarios import Ball
from disco.errors import DiscoError


@dataclass(frozen=True)
class Outcome:
    checks: tuple[Check, ...]
    scenarios: int
    seconds: float
    kept: tuple[tuple[str, Path], ...]  # "ball/scenario" -> its scratch root, with --keep
    base: Path | None  # with --keep: the tmpfs that holds them all


def test_balls(
    balls: Sequence[Ball], source: Source, keep: bool, progress: Callable[[Check], None]
) -> Outcome:
    if os.geteuid() != 0:
        raise DiscoError(
            "disco test needs root: it mounts scratch roots and dances on them",
            "run it as root, e.g. with sudo",
        )
    started = time.monotonic()
    checks: list[Check] = []
    kept: list[tuple[str, Path]] = []
    count = 0
    with Roots(source, keep) as roots:
        for ball in balls:
            for scenario in ball.scenarios:
                scratch = roots.fresh()
                for check in run_scenario(ball, scenario, scratch):
                    checks.append(check)
                    progress(check)
                count += 1
                if keep:
                    kept.append((f"{ball.name}/{scenario.name}", scratch.root))
        base = roots.base if keep else None
    return Outcome(tuple(checks), count, time.monotonic() - started, tuple(kept), base)
