"""What the commit journal costs (DESIGN §8, §12). Run as root: python bench/bench_journal.py [N]

For commits of 1, 10 and 1000 small (1 KB) files, each created or replacing a file of the
target, prints the median wall time of the plain commit (changeset.apply: write beside,
rename; nothing flushed) and of the journaled one (live.commit: the journal put on disk
by one syncfs first, the last commit's changes with it), and the flushes (fsync, syncfs)
each makes. A dance's last commit pays one more pair at the dance's end (journal.seal),
not counted here. The target and the state live on the same disk filesystem, under /var/tmp, as
/ and /var/disco do on most machines; the change list is read once, outside the timing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import disco.live.commit
import disco.live.journal
from disco.engine.changes import Change, read_changes
from disco.live.changeset import apply, plan_commit
from disco.live.commit import commit

DATA = b"x" * 1023 + b"\n"
fsyncs = 0
_real_fsync = os.fsync


sync = True  # False: count flushes but skip them, to see the journal's own CPU and I/O


def _counting_fsync(fd: Any) -> None:
    global fsyncs
    fsyncs += 1
    if sync:
        _real_fsync(fd)


_real_syncfs = disco.live.journal.syncfs


def _counting_syncfs(path: Path) -> None:
    global fsyncs
    fsyncs += 1
    if sync:
        _real_syncfs(path)


def layer(where: Path, count: int, replace: bool) -> tuple[Path, Path, list[Change]]:
    """A root with `count` files (if `replace`) in etc/app/, an upper with new content."""
    root, upper = where / "root", where / "upper"
    (root / "etc/app").mkdir(parents=True)
    (upper / "etc/app").mkdir(parents=True)
    for i in range(count):
        if replace:
            (root / f"etc/app/f{i}").write_bytes(b"old\n")
        (upper / f"etc/app/f{i}").write_bytes(DATA)
    return root, upper, read_changes(upper, [root], exclude=())


def upper0(where: Path) -> Path:
    """A layer of one file, the commit before the measured one."""
    upper = where / "upper0"
    (upper / "etc/app").mkdir(parents=True)
    (upper / "etc/app/before").write_bytes(DATA)
    return upper


def measure(count: int, replace: bool, journaled: bool, runs: int) -> tuple[float, int]:
    """Median ms of one commit, and the fsyncs of one."""
    global fsyncs
    times, syncs = [], 0
    for _ in range(runs + 1):  # the first warms caches
        where = Path(tempfile.mkdtemp(prefix="bench-journal-", dir="/var/tmp"))
        try:
            root, _upper, changes = layer(where, count, replace)
            txn = where / "txn"
            (txn / "history/1").mkdir(parents=True)
            if journaled:  # a commit before it, done: this one's flush puts it on disk
                commit(txn, read_changes(upper0(where), [root], exclude=()), root, "1", "m", "0")
            os.sync()
            fsyncs = 0
            start = time.perf_counter()
            if journaled:
                commit(txn, changes, root, "1", "m", "s")
            else:
                apply(plan_commit(changes, root))
            times.append(time.perf_counter() - start)
            syncs = fsyncs
        finally:
            shutil.rmtree(where)
    return statistics.median(times[1:]) * 1000, syncs


def main() -> None:
    global sync
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    os.fsync = _counting_fsync
    vars(disco.live.commit)["syncfs"] = _counting_syncfs  # the name commit.py calls
    disco.live.journal.syncfs = _counting_syncfs
    print(f"commit of N files of 1 KB, median of {runs} runs; load {os.getloadavg()[0]:.2f}")
    print("fsyncs: the plain commit's flushes, +journal: the journaled one's (fsync, syncfs)")
    for sync in (True, False):
        print("with fsync" if sync else "fsync skipped (the journal's own work)")
        print(f"{'files':>6} {'kind':<8} {'plain ms':>9} {'journal ms':>11} {'extra':>8}"
              f" {'fsyncs':>7} {'+journal':>9}")  # fmt: skip
        for count in (1, 10, 1000):
            for replace in (False, True):
                n = max(3, runs // 3) if count == 1000 else runs
                plain, plain_syncs = measure(count, replace, False, n)
                logged, logged_syncs = measure(count, replace, True, n)
                kind = "replace" if replace else "create"
                print(f"{count:>6} {kind:<8} {plain:>9.2f} {logged:>11.2f}"
                      f" {logged - plain:>+8.2f} {plain_syncs:>7}"
                      f" {logged_syncs - plain_syncs:>+9}")  # fmt: skip
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
