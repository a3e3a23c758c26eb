"""DESIGN §12's benchmark: a chain of 200 modules, each a 1 KB file, a template of
hostname + one parameter and a small script. Prints the bash-fork baseline, a NOOP
dance on this machine's root (which it leaves unchanged) and a live dance into a
scratch root, with the fetch time each report recorded. Run with `make bench`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULES = 200
BIN = Path(sys.executable).parent


def build_server(root: Path) -> None:
    node = root / "parameters" / "bench"
    (node / "modules").mkdir(parents=True)
    (node / "parameters").mkdir()
    (node / "parameters" / "something").write_text("value\n")
    for i in range(MODULES):
        name = f"m{i:03d}"
        module = root / "modules" / name
        (module / "files" / "etc" / "bench").mkdir(parents=True)
        (module / "files" / "etc" / "bench" / name).write_bytes(b"x" * 1024)
        (module / "templates" / "etc" / "bench").mkdir(parents=True)
        template = 'echo "$(hostname) $(disco-param get bench/parameters/something)"\n'
        (module / "templates" / "etc" / "bench" / f"{name}.cfg").write_text(template)
        (module / "scripts").mkdir()
        (module / "scripts" / "00-run.sh").write_text("#!/bin/bash\necho ok >/dev/null\n")
        (module / "requires").write_text(f"m{i - 1:03d}\n" if i else "")
    # The node names only the last module: the rest come in through `requires`.
    (node / "modules" / f"m{MODULES - 1:03d}").write_text("")


def bash_forks() -> float:
    """What just forking bash for the 400 templates and scripts costs."""
    start = time.perf_counter()
    for _ in range(2 * MODULES):
        subprocess.run(["bash", "-c", "echo ok >/dev/null"], check=True)
    return time.perf_counter() - start


def dance(server: Path, state: Path, *args: str) -> tuple[float, float]:
    """Wall time of the whole dance, and of its fetch."""
    argv = ["dance", "--server", str(server), "--node", "bench", "--state-dir", str(state)]
    start = time.perf_counter()
    subprocess.run([str(BIN / "disco"), *argv, *args], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    report = json.loads((state / "reports" / "last.json").read_text())
    fetch = sum(
        r["wall"] for r in report["records"] if r["step"] == "fetch" and r["module"] == "_internal"
    )
    return wall, fetch


def scratch_root(tmp: Path) -> tuple[Path, list[Path]]:
    root = tmp / "root"
    for d in ("usr", "etc", "var/tmp", "root", "tmp"):
        (root / d).mkdir(parents=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        if Path("/", name).is_symlink():
            (root / name).symlink_to(Path("/", name).readlink())
    subprocess.run(["mount", "--bind", "-o", "ro", "/usr", str(root / "usr")], check=True)
    return root, [root / "usr"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = tmp / "server"
        build_server(server)
        forks = bash_forks()
        print(f"{MODULES}-module chain (DESIGN §12)")
        print(f"  forking bash {2 * MODULES} times       {forks:6.2f} s")
        noop, noop_fetch = dance(server, tmp / "state-noop", "--noop")
        again, again_fetch = dance(server, tmp / "state-noop", "--noop")
        print(f"  NOOP dance on /  first        {noop:6.2f} s  (fetch {noop_fetch:.2f} s)"
              f"  {noop / forks:4.2f}x the forks, target 1.35x")  # fmt: skip
        print(f"  NOOP dance on /  again        {again:6.2f} s  (fetch {again_fetch:.2f} s)")
        root, mounts = scratch_root(tmp)
        try:
            live, live_fetch = dance(server, tmp / "state-live", "--root", str(root))
            print(f"  live dance, scratch root      {live:6.2f} s  (fetch {live_fetch:.2f} s)")
            steady, _ = dance(server, tmp / "state-live", "--root", str(root))
            print(f"  live dance again, no change   {steady:6.2f} s")
        finally:
            for mount in reversed(mounts):
                subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(tmp / "state-noop", ignore_errors=True)


if __name__ == "__main__":
    main()
