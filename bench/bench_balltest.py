"""What `disco test` costs on every shipped ball (DESIGN §16). Run as root:
python bench/bench_balltest.py [ROUNDS]

Per round, alternated: `disco test` on all balls (every scenario: setup, NOOP, live, live
again, verify, rollback, and the checks between: the same `disco` commands, and a
snapshot of each root's changed paths), and the floor: the same scenarios' dances
alone (NOOP, live, live again, verify, rollback: the same `disco` commands on the same kind
of scratch root, with no snapshot, no comparison and no report). Prints the medians,
scenarios per second, and the ratio of `disco test` to the floor.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from disco.balltest.roots import Roots, Source
from disco.balltest.scenario_run import VERIFY, Run, make_server
from disco.balltest.scenarios import find_balls

BALLS = Path(__file__).resolve().parent.parent / "src" / "disco" / "balls"
DISCO = Path(sys.executable).parent / "disco"


def disco_test() -> float:
    started = time.monotonic()
    result = subprocess.run([str(DISCO), "test"], cwd=BALLS, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"disco test failed:\n{result.stdout}{result.stderr}")
    return time.monotonic() - started


def floor() -> float:
    """The dances alone, in a child process (it makes its mount namespace)."""
    code = "import bench_balltest as b; print(b.dances_only())"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the floor failed:\n{out.stderr}")
    return float(out.stdout)


def dances_only() -> float:
    started = time.monotonic()
    balls = find_balls([], BALLS)
    with Roots(Source("host", Path("/")), keep=False) as roots:
        for ball in balls:
            for scenario in ball.scenarios:
                r = Run(ball, scenario, roots.fresh())
                make_server(r)
                setup = scenario.script("setup") is not None
                if setup:
                    r.dance(module="disco-test-setup")
                r.dance("--noop")
                r.dance()
                r.dance()
                if scenario.script("verify") is not None:
                    r.dance("--noop", module=VERIFY)
                live = "3" if setup else "2"  # the dances' ids: setup, NOOP, live
                r.disco("rollback", live, "--root", str(r.scratch.root))
    return time.monotonic() - started


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run it as root: disco test mounts scratch roots")
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    scenarios = sum(len(b.scenarios) for b in find_balls([], BALLS))
    tests, floors = [], []
    for _ in range(rounds):
        tests.append(disco_test())
        floors.append(floor())
    t, f = statistics.median(tests), statistics.median(floors)
    print(f"balls: {scenarios} scenarios, {rounds} rounds alternated, medians")
    print(f"  disco test       {t:7.2f} s  {scenarios / t:5.2f} scenarios/s")
    print(f"  dances alone     {f:7.2f} s  {scenarios / f:5.2f} scenarios/s")
    print(f"  disco test / dances alone: {t / f:.2f}x")


if __name__ == "__main__":
    main()
