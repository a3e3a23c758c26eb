"""What a plan costs against one NOOP dance of the same tree (issue 23, DESIGN §15).

The workload of bench_engine (N chained modules, each a 1 KB file, a template and a
guarded script) on a scratch root. Measured in one run, alternated, medians of RUNS:

- one NOOP dance of the base tree (its state warm, as a node's is);
- `disco plan` of a head tree that changes one module (its file): the last module, the
  middle one and the first, since only the modules before the first change are danced
  once for both trees (trees.shared_prefix says why);
- `disco plan` of a head tree that changes every module;
- the middle, first and every-module plans again with DISCO_PLAN_SEQUENTIAL=1: head's
  dance after base's, not beside it in a child (plan/parallel.py), for the gain.

Targets (issue 23): one module of 200 at most 1.3x the NOOP dance, every module at
most 2.1x. Usage: python bench/bench_plan.py [N] (default 200; RUNS=5).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import BIN, build_server, scratch_root, timed, unmount_under  # noqa: E402

RUNS = int(os.environ.get("RUNS", "5"))


def changed(base: Path, top: Path, names: list[str]) -> Path:
    shutil.copytree(base, top, symlinks=True)
    for name in names:
        (top / "modules" / name / "files" / "etc" / "bench" / name).write_bytes(b"y" * 1024)
    return top


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    names = [f"m{i:04d}" for i in range(n)]
    tmp = Path(tempfile.mkdtemp(prefix="disco-bench-plan-"))
    try:
        base = tmp / "base"
        build_server(base, n)
        heads = {
            "plan, last module changed": changed(base, tmp / "last", names[-1:]),
            "plan, middle module changed": changed(base, tmp / "middle", [names[n // 2]]),
            "plan, first module changed": changed(base, tmp / "first", names[:1]),
            "plan, every module changed": changed(base, tmp / "all", names),
        }
        root = tmp / "root"
        scratch_root(root)
        common = ["--node", "bench", "--root", str(root), "--server", str(base)]
        noop = [str(BIN / "disco"), "dance", "--noop", "--state-dir", str(tmp / "s0"), *common]
        argv = {"NOOP dance": noop}
        env = {label: dict(os.environ) for label in ["NOOP dance", *heads]}
        for label, head in heads.items():
            state = str(tmp / f"s-{head.name}")
            argv[label] = [str(BIN / "disco"), "plan", "--state-dir", state, *common,
                           "--head", str(head)]  # fmt: skip
        for label in list(heads)[1:]:
            argv[f"{label}, sequential"] = [*argv[label][:3], f"{argv[label][3]}-seq",
                                            *argv[label][4:]]  # fmt: skip
            env[f"{label}, sequential"] = {**os.environ, "DISCO_PLAN_SEQUENTIAL": "1"}
        runs: dict[str, list[float]] = {label: [] for label in argv}
        for label, args in argv.items():  # warm: the node's state holds the base tree
            timed(args, env=env[label])
        for _ in range(RUNS):
            for label, args in argv.items():
                wall, _rss = timed(args, env=env[label])  # a failure ends the bench, saying why
                runs[label].append(wall)
        floor = statistics.median(runs["NOOP dance"])
        print(f"N = {n}, medians of {RUNS} alternated runs, ratio to one NOOP dance")
        for label, walls in runs.items():
            mid = statistics.median(walls)
            print(f"  {label:44} {mid:7.2f} s  {mid / floor:5.2f}x")
    finally:
        unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
