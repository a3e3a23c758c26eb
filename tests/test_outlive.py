"""No step outlives its dance (issue 22, item 6; DESIGN §7): when disco is killed with
SIGKILL mid-step, the step's processes die with it, live (the host's namespaces: a
watchdog kills what is left in the steps' cgroup) and sandboxed (the step's pid 1 dies
with the zygote, and its pid namespace with it). The engine is driven directly, on a
scratch root: a test never dances live on this machine's /."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

DRIVER = """
import sys
from pathlib import Path
from disco.engine.runner import Zygote
from disco.engine.sandbox import Mode, Step
mode, root, layer, tag = Mode(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
script = f"exec -a {tag} sleep 600 & exec -a {tag} sleep 601"
with Zygote(mode, layer.parent / "z") as z:
    print("started", flush=True)
    z.run(Step(("bash", "-c", script), root, layer, mode=mode, hide=(str(layer.parent),)))
"""


def tagged(tag: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(tag.encode()):
                found.append(int(pid))
        except OSError:
            pass
    return found


@root_only
@pytest.mark.parametrize("mode", ["live", "noop"])
def test_a_step_dies_with_a_killed_disco(tmp_path: Path, scratch_root: Path, mode: str) -> None:
    tag = f"disco-outlive-{uuid.uuid4().hex[:12]}"
    work = tmp_path / "work"
    work.mkdir()
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, mode, str(scratch_root), str(work / "layer"), tag],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout is not None and driver.stdout.readline() == "started\n"
        deadline = time.monotonic() + 20
        while len(tagged(tag)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(tagged(tag)) == 2, "the step's two sleeps never started"
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 10
        while tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tagged(tag) == []
    finally:
        driver.kill()
        driver.wait()
        for pid in tagged(tag):  # only our own canaries
            os.kill(pid, 9)
