"""What a package install costs in NOOP against live (issue 25, DESIGN §17).

Run as root after `make test-debs`: python bench/bench_packages.py [PAIRS]

Each run is a dance of one module that installs PACKAGES with `apt-get install`, on a
fresh clone of this machine whose one package source is the loopback repository of the
tests (tests/packages_env.py). A first NOOP dance fills disco's package cache (not
counted); then PAIRS times, alternated, a NOOP dance with that cache (the packages
already there) and a live dance (`--effects run`, apt-get fetching from loopback itself)
on a clone of its own. From each dance's report: the step (exec: apt-get and its
maintainer scripts), the download (NOOP: the host-side check of the cache; a record of
its own), the diff (reading and saying the changes) and the commit (live only). Prints
the medians and NOOP/live.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from packages_env import corpus, dance, install_script, make_server  # noqa: E402

PACKAGES = ["w3m", "lzip", "iputils-arping", "sysstat", "uuid-runtime"]
STEPS = ("exec", "download", "diff", "commit")


def costs(report: Path) -> dict[str, float]:
    records = json.loads(report.read_text())["records"]
    out = {step: sum(r["wall"] for r in records if r["step"] == step) for step in STEPS}
    out["total"] = sum(out.values())
    return out


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    if not set(PACKAGES) <= set(corpus()):
        sys.exit("no package corpus: run `make test-debs` first")
    with tempfile.TemporaryDirectory(prefix="disco-bench-pkgs-") as tmp:
        server = make_server(Path(tmp) / "srv", install_script(PACKAGES))
        runs = ["noop:--noop"]
        for i in range(1, pairs + 1):
            runs += [f"noop.{i}:--noop", f"live{i}:--effects+run"]
        out = dance(Path(tmp), server, runs)
        noop = [costs(out / f"noop.{i}.json") for i in range(1, pairs + 1)]
        live = [costs(out / f"live{i}.json") for i in range(1, pairs + 1)]
        cold = costs(out / "noop.json")
    print(f"packages: {' '.join(PACKAGES)}; {pairs} pairs, alternated; medians in seconds")
    print(f"{'':10} {'NOOP':>8} {'live':>8} {'NOOP/live':>10}")
    for step in (*STEPS, "total"):
        n = statistics.median(c[step] for c in noop)
        l_ = statistics.median(c[step] for c in live)
        ratio = f"{n / l_:.2f}" if l_ else "-"
        print(f"{step:10} {n:8.3f} {l_:8.3f} {ratio:>10}")
    print(
        f"first NOOP (cache empty): download {cold['download']:.3f} s, total {cold['total']:.3f} s"
    )


if __name__ == "__main__":
    main()
