"""`disco plan` dances head beside base, in a child process (plan/parallel.py): the plan
and the output are the sequential plan's, and a signal leaves nothing running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, Run
from plans import BASE, NODE, make_server, plan
from test_plan import head_spec

SEQUENTIAL = {"DISCO_PLAN_SEQUENTIAL": "1"}


def run_plan(
    cmd: Run, state: Path, root: Path, base: Path, head: Path, env: dict[str, str]
) -> tuple[dict[str, Any], list[str]]:
    result = cmd("disco", "plan", "--state-dir", str(state), "--node", NODE, "--root", str(root),
                 "--server", str(base), "--head", str(head), "--json", "--detailed-exitcodes",
                 env=env)  # fmt: skip
    assert result.returncode in (0, 2, 4, 6), result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    del document["created"]
    return document, result.stderr.splitlines()


@pytest.mark.parametrize("where", ["first", "middle"])
def test_a_parallel_plan_is_the_sequential_plan(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path, where: str
) -> None:
    """Every kind of delta, drift, Would-execute lines, a failing module and the steps'
    output in the same order, none shared (alpha changed); beta and gamma changed, alpha
    shared (no module added, which every step could read)."""
    spec = head_spec()
    if where == "middle":
        spec["alpha"] = BASE["alpha"]
        del spec["omega"]
    spec["beta"]["scripts/20-say"] = "#!/bin/bash\necho beta says\necho beta warns >&2\n"
    base = make_server(tmp_path / "base", BASE)
    head = make_server(tmp_path / "head", spec)
    one, out_one = run_plan(cmd, state, scratch_root, base, head, SEQUENTIAL)
    two, out_two = run_plan(cmd, state, scratch_root, base, head, {})
    assert one == two
    assert out_one == out_two
    assert "beta says" in out_two and "beta warns" in out_two
    assert one["would_execute"]["added"] == ["beta: systemctl reload beta"]
    assert one["failed"] == {"base": [], "head": [] if where == "middle" else ["omega"]}
    shared = plan(cmd, state, scratch_root, base, head).stdout
    assert ("1 of 3" if where == "middle" else "0 of 4") + " module(s) danced once" in shared


def _descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below `pid`."""
    children: dict[int, list[tuple[int, str]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append((int(name), fields[19]))
    out: set[tuple[int, str]] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child[0])
    return out


def _sleeping(seconds: str) -> bool:
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sleep", seconds.encode()]:
                return True
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_both_dances_leaves_nothing_running_nor_mounted(
    state: Path, tmp_path: Path, scratch_root: Path, signum: int
) -> None:
    base = make_server(
        tmp_path / "base", {"a": {"scripts/10-wait": "#!/bin/bash\nexec sleep 61.5\n"}}
    )
    head = make_server(
        tmp_path / "head", {"a": {"scripts/10-wait": "#!/bin/bash\nexec sleep 61.25\n"}}
    )
    argv = [str(BIN / "disco"), "plan", "--state-dir", str(state), "--node", NODE,
            "--root", str(scratch_root), "--server", str(base), "--head", str(head)]  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1"}
    mounted, cgroups = _mounts(tmp_path), _cgroups()  # (other suites leave some)
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not (_sleeping("61.5") and _sleeping("61.25")):  # both dances in a step
            assert proc.poll() is None, (tmp_path / "err").read_text()
            assert time.monotonic() < deadline, "the two steps never ran at the same time"
            time.sleep(0.1)
        below = _descendants(proc.pid)
        assert len(below) > 4  # base's zygote, head's child and zygote, the steps
        proc.send_signal(signum)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, (tmp_path / "err").read_text()
    assert f"interrupted by {signal.Signals(signum).name}" in (tmp_path / "err").read_text()
    left = {p for p in below if _alive(p)}
    assert not left, left
    assert not _sleeping("61.5") and not _sleeping("61.25")
    pids = {proc.pid, *(pid for pid, _ in below)}
    made = {c for c in _cgroups() - cgroups if int(c.rsplit("/", 1)[1].split("-")[1]) in pids}
    assert not made, made  # the steps' cgroups removed
    assert _mounts(tmp_path) == mounted  # the scratch root's own, no more


def _cgroups() -> set[str]:
    """The steps' cgroups below ours (disco-PID-N): pids or memory (v1), or v2's."""
    top, found = Path("/sys/fs/cgroup"), set()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, own = line.split(":", 2)
        if controllers in ("", "pids", "memory"):
            here = top / controllers / own.lstrip("/")
            names = os.listdir(here) if here.is_dir() else []
            found |= {f"{here}/{n}" for n in names if n.startswith("disco-")}
    return found


def _mounts(under: Path) -> list[str]:
    return [x for x in Path("/proc/self/mountinfo").read_text().splitlines() if str(under) in x]


def _alive(process: tuple[int, str]) -> bool:
    try:
        stat = Path(f"/proc/{process[0]}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[19] == process[1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to share")
@pytest.mark.parametrize("where", ["first", "middle"])
def test_the_two_dances_share_the_cpus_half_and_half(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path, where: str
) -> None:
    """Each dance's steps (base's zygote too, started before the fork when a prefix is
    shared) run on a half of the CPUs of their own."""
    cpus = {"zcpus": {"scripts/10-cpus": "#!/bin/bash\ngrep Cpus_allowed_list /proc/self/status\n"}}
    spec = {**BASE, **cpus}
    changed = "alpha" if where == "first" else "beta"
    spec[changed] = {**BASE[changed], f"files/etc/{changed}.conf": "changed\n"}
    base = make_server(tmp_path / "base", {**BASE, **cpus})
    head = make_server(tmp_path / "head", spec)
    _, lines = run_plan(cmd, state, scratch_root, base, head, {})
    said = [line.split(":", 1)[1].strip() for line in lines if "Cpus_allowed_list" in line]
    assert len(said) == 2, lines
    halves = [set(_cpus(text)) for text in said]
    assert halves[0] and halves[1] and not halves[0] & halves[1]
    assert halves[0] | halves[1] == os.sched_getaffinity(0)


def _cpus(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out
