"""Fetch and order a 200-module chain from a local server: first dance, then a repeat.

Prints wall times of `disco dance` (which, until the sandbox lands, stops after the
fetch and the order). Run with `make bench`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULES = 200
BIN = Path(sys.executable).parent


def build_server(root: Path) -> None:
    (root / "parameters" / "bench" / "modules").mkdir(parents=True)
    (root / "parameters" / "bench" / "parameters" / "something").parent.mkdir()
    (root / "parameters" / "bench" / "parameters" / "something").write_text("value\n")
    for i in range(MODULES):
        name = f"m{i:03d}"
        module = root / "modules" / name
        (module / "files" / "etc" / "bench").mkdir(parents=True)
        (module / "files" / "etc" / "bench" / name).write_bytes(b"x" * 1024)
        (module / "templates" / "etc" / "bench").mkdir(parents=True)
        (module / "templates" / "etc" / "bench" / f"{name}.cfg").write_text("echo $(hostname)\n")
        (module / "scripts").mkdir()
        (module / "scripts" / "00-run.sh").write_text("#!/bin/bash\ntrue\n")
        (module / "requires").write_text(f"m{i - 1:03d}\n" if i else "")
        # The node names only the last: the rest come in through `requires`.
    (root / "parameters" / "bench" / "modules" / f"m{MODULES - 1:03d}").write_text("")


def dance(server: Path, state: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "disco"),
            "dance",
            "--server",
            str(server),
            "--node",
            "bench",
            "--state-dir",
            str(state),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server, state = Path(tmp) / "server", Path(tmp) / "state"
        build_server(server)
        first = dance(server, state)
        repeats = [dance(server, state) for _ in range(5)]
    again = statistics.median(repeats)
    print(f"fetch+order, {MODULES}-module chain, local server:")
    for label, seconds in (("first dance", first), ("repeat dance (median of 5)", again)):
        print(f"  {label:28} {seconds:6.2f} s  {seconds / MODULES * 1000:5.1f} ms per module")


if __name__ == "__main__":
    main()
