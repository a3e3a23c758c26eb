"""What a package install costs in NOOP against live (issue 25, DESIGN §17).

Run as root after `make test-debs`: python bench/bench_packages.py [PAIRS]

Each run is a dance of one module that installs PACKAGES with `apt-get install`, on a
fresh clone of this machine whose one package source is the loopback repository of the
tests (tests/packages_env.py). Two first NOOP dances fill disco's package cache in two
state dirs (not counted); then PAIRS times, alternated: a NOOP dance with that cache and
what the host side remembers of the first fetch (apt's answer, the files it verified:
noop/fetch_memo.py), a NOOP dance with the cache but nothing remembered (`forget`: apt
asked and every file hashed again), and a live dance (`--effects run`, apt-get fetching
from loopback itself), each on a clone of its own. From each dance's report: the step
(exec: apt-get and its maintainer scripts, and in NOOP the wait for the host-side fetch),
the download (NOOP: the host-side fetch, a record of its own, *inside* exec's wall: the
step waits for it), the diff (reading and saying the changes) and the commit (live
only); total = exec + diff + commit. Prints the medians and the ratios to live.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from packages_env import corpus, dance, install_script, make_server  # noqa: E402

PACKAGES = ["w3m", "lzip", "iputils-arping", "sysstat", "uuid-runtime"]
STEPS = ("exec", "download", "diff", "commit")
KINDS = {"noop": "NOOP", "forget": "NOOP, nothing remembered", "live": "live"}


def costs(report: Path) -> dict[str, float]:
    records = json.loads(report.read_text())["records"]
    out = {step: sum(r["wall"] for r in records if r["step"] == step) for step in STEPS}
    out["total"] = out["exec"] + out["diff"] + out["commit"]
    return out


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    if not set(PACKAGES) <= set(corpus()):
        sys.exit("no package corpus: run `make test-debs` first")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="disco-bench-pkgs-") as tmp:
        server = make_server(Path(tmp) / "srv", install_script(PACKAGES))
        runs = ["noop:--noop", "forget:--noop"]
        for i in range(1, pairs + 1):
            runs += [f"noop.{i}:--noop", f"forget.{i}:--noop", f"live{i}:--effects+run"]
        out = dance(Path(tmp), server, runs)
        got = {
            kind: [costs(out / f"{kind}{'' if kind == 'live' else '.'}{i}.json")
                   for i in range(1, pairs + 1)]
            for kind in KINDS
        }  # fmt: skip
        cold = costs(out / "noop.json")
    print(f"packages: {' '.join(PACKAGES)}; {pairs} runs of each, alternated; medians in s")
    print(f"load average at the start: {load:.2f}, at the end: {os.getloadavg()[0]:.2f}")
    print(f"{'':10} {'NOOP':>8} {'forget':>8} {'live':>8} {'NOOP/live':>10} {'forget/live':>12}")
    for step in (*STEPS, "total"):
        n, f, l_ = (statistics.median(c[step] for c in got[kind]) for kind in KINDS)
        ratios = [f"{x / l_:.2f}" if l_ else "-" for x in (n, f)]
        print(f"{step:10} {n:8.3f} {f:8.3f} {l_:8.3f} {ratios[0]:>10} {ratios[1]:>12}")
    print(
        f"first NOOP (cache empty): download {cold['download']:.3f} s, total {cold['total']:.3f} s"
    )


if __name__ == "__main__":
    main()
