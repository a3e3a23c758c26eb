"""One NOOP step, this tree against others, alternated (DESIGN §12; issue 21's budget).

Usage, as root: python bench/bench_step_ab.py [--turns T] [--steps M] SRC... [-- ARGV]

Each SRC is a `src` directory of disco (this tree's own, or one made with
`git archive COMMIT | tar -x -C DIR`: DIR/src). One worker per SRC keeps a NOOP zygote as
a dance has it (one for all its steps, layer on a tmpfs, the real root below) and runs
M steps of ARGV (default /bin/true) a turn; the turns go round the workers in a random
order, T times, so that each tree meets the same load. Printed: the median step of each
tree, its quartiles, and its difference to the first tree's. A worker is this file
run with `--worker`, with its SRC first on its path.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(argv: list[str]) -> None:
    from disco.engine.mounts import MS_PRIVATE, MS_REC, Mount
    from disco.engine.runner import Zygote
    from disco.engine.sandbox import Mode, Step
    from disco.run import run

    try:
        from disco.engine.syscalls import CLONE_NEWNS, unshare
    except ImportError:  # before issue 21 the zygote had them
        from disco.engine.zygote import CLONE_NEWNS, unshare  # type: ignore[attr-defined]

    unshare(CLONE_NEWNS)  # what we mount is gone with us
    Mount("/", flags=MS_REC | MS_PRIVATE).do()
    tmpfs = Path(tempfile.mkdtemp(prefix="disco-bench-ab-", dir="/run"))
    run(["mount", "-t", "tmpfs", "tmpfs", str(tmpfs)])
    zygote = Zygote(Mode.NOOP, tmpfs / "z")
    count = iter(range(10**9))

    def step() -> None:
        layer = tmpfs / f"s{next(count)}"
        hide = (str(tmpfs),)
        zygote.run(Step(tuple(argv), Path("/"), layer, (), Mode.NOOP, hostname="n", hide=hide))
        zygote.remove(layer)

    for _ in range(10):
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
            time.sleep(0.0005)  # as disco between steps: the zygote cleans up meanwhile
        print(" ".join(f"{t * 1000:.4f}" for t in times), flush=True)
    zygote.close()  # the tmpfs goes with our mount namespace


def main() -> None:
    args = sys.argv[1:]
    argv = ["/bin/true"]
    if "--" in args:
        argv = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    turns, steps = 20, 20
    while args and args[0] in ("--turns", "--steps"):
        if args[0] == "--turns":
            turns = int(args[1])
        else:
            steps = int(args[1])
        args = args[2:]
    trees = args or [str(Path(__file__).resolve().parent.parent / "src")]
    if os.geteuid() != 0:
        sys.exit("bench_step_ab: run me as root")
    workers = []
    for tree in trees:
        env = dict(os.environ, PYTHONPATH=tree)
        cmd = [sys.executable, __file__, "--worker", *argv]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert p.stdin is not None and p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            sys.exit(f"bench_step_ab: the worker of {tree} did not start")
        workers.append((tree, p))
    times: dict[str, list[float]] = {tree: [] for tree in trees}
    for _ in range(turns):
        for tree, p in random.sample(workers, len(workers)):
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(f"{steps}\n")
            p.stdin.flush()
            times[tree] += map(float, p.stdout.readline().split())
    for _, p in workers:
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load"
        f" {os.getloadavg()[0]:.2f}; {' '.join(argv)}, {turns} turns of {steps} steps a tree"
    )
    first = statistics.median(times[trees[0]])
    for tree in trees:
        med = statistics.median(times[tree])
        q1, _, q3 = statistics.quantiles(times[tree], n=4)
        print(f"  {tree}: {med:.3f} ms (quartiles {q1:.3f}-{q3:.3f}), {med - first:+.3f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2:] or ["/bin/true"])
    else:
        main()
