"""A cgroup for the steps of one zygote, with pids and memory limits (DESIGN §7).

The steps of a zygote run one at a time, so one cgroup serves them all: each step's
pid 1 joins it before it enters its own cgroup namespace (rooted there, owned by the
host's user namespace: a step can neither see the host's cgroups nor raise its own
limits). The cgroup is made below disco's own, in each v1 hierarchy (pids, memory) or in
the unified v2 one, and removed when the zygote is gone. Whether a step hit a limit is
read from the kernel's counters before and after it: the step's failure then names the
limit and the setting that raises it.

On v2 the controllers must be enabled for disco's cgroup's children; where disco's
cgroup holds processes and they are not, the kernel forbids it (no internal
processes), and the steps get a cgroup without limits: `missing` says so.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
SETTING = "disco/client/sandbox"


@dataclass(frozen=True)
class Limits:
    """What one step may use; 0 means no limit. The defaults (`defaults()`): 4096
    processes, half the machine's memory for a step, a quarter for the layers' tmpfs
    (every layer of a dance, hence of every step of a NOOP dance)."""

    pids: int = 4096
    memory_mb: int = 0
    tmpfs_mb: int = 0  # the layers' tmpfs, shared by the steps of a dance

    @classmethod
    def defaults(cls) -> Limits:
        total = _mem_total_mb()
        return cls(4096, total // 2, total // 4)


def _mem_total_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class StepCgroup:
    dirs: dict[str, Path] = field(default_factory=dict)  # by v1 controller; v2: ""
    v2: bool = False
    missing: str = ""  # why the limits could not be set, if they could not

    @property
    def procs(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def counters(self) -> dict[str, int]:
        """How often a process was refused (pids) and killed for memory (memory), so far."""
        pids, memory = (
            self.dirs.get("" if self.v2 else "pids"),
            self.dirs.get("" if self.v2 else "memory"),
        )
        events = "memory.events" if self.v2 else "memory.oom_control"
        return {
            "pids": _event(pids / "pids.events", "max") if pids else 0,
            "memory": _event(memory / events, "oom_kill") if memory else 0,
        }

    def remove(self) -> None:
        for d in self.dirs.values():
            with contextlib.suppress(OSError):
                os.rmdir(d)
        self.dirs = {}


def _event(path: Path, key: str) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _own(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; "" for the unified hierarchy."""
    out = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def make(name: str, limits: Limits) -> StepCgroup:
    """A cgroup named `name` below ours, with `limits`; raises OSError if none can be
    made at all (no cgroup filesystem)."""
    own = _own(Path("/proc/self/cgroup").read_text())
    if (CGROUP_FS / "cgroup.controllers").exists():
        return _make_v2(CGROUP_FS / own.get("", "/").lstrip("/"), name, limits)
    group = StepCgroup()
    for controller in ("pids", "memory"):
        base = CGROUP_FS / controller
        if controller not in own or not base.is_dir():
            group.missing = f"no {controller} cgroup hierarchy"
            continue
        d = base / own[controller].lstrip("/") / name
        d.mkdir(exist_ok=True)
        group.dirs[controller] = d
        if controller == "pids" and limits.pids:
            (d / "pids.max").write_text(str(limits.pids))
        if controller == "memory" and limits.memory_mb:
            (d / "memory.limit_in_bytes").write_text(str(limits.memory_mb << 20))
    if not group.dirs:
        raise OSError(2, "no pids or memory cgroup hierarchy")
    return group


def _make_v2(parent: Path, name: str, limits: Limits) -> StepCgroup:
    group = StepCgroup(v2=True)
    enabled = (parent / "cgroup.subtree_control").read_text().split()
    wanted = [c for c in ("pids", "memory") if c not in enabled]
    if wanted:
        try:
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
        except OSError as e:
            group.missing = (
                f"the {' and '.join(wanted)} controllers cannot be enabled below"
                f" {parent} ({e.strerror})"
            )
    d = parent / name
    d.mkdir(exist_ok=True)
    group.dirs[""] = d
    if limits.pids and (d / "pids.max").exists():
        (d / "pids.max").write_text(str(limits.pids))
    if limits.memory_mb and (d / "memory.max").exists():
        (d / "memory.max").write_text(str(limits.memory_mb << 20))
        with contextlib.suppress(OSError):  # no swap for a step either
            (d / "memory.swap.max").write_text("0")
    return group
