"""`disco plan`: NOOP-dance the base tree and the head tree over the same state of the root
and say where head ends differently (DESIGN §15).

Both trees are fetched into states of their own inside the node's state, `plans/base`
and `plans/head` (never over its own copies; kept from one plan to the next). The
node's lock is held throughout, so no live dance changes the root between the two
dances. The modules both dances start with alike are danced once (trees.py):
base's dance copies its layer when it reaches the first module that differs, and head's
dance starts there from that copy, with base's records for what came before. From there
on the two dances run at the same time, head's in a forked child (parallel.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disco.client.fetch import Plan, fetch
from disco.client.lock import hold
from disco.client.state import Settings, State
from disco.clock import utc_now
from disco.dance.dance import Dance
from disco.dance.interrupt import Interrupted, interruptible
from disco.dance.options import Options, Split
from disco.dance.reporting import Sink
from disco.engine.changes import Change
from disco.engine.mounts import mount_tmpfs, private_mounts
from disco.engine.sandbox import upper_of
from disco.errors import DiscoError
from disco.files import remove_tree
from disco.plan.delta import Delta, read_delta
from disco.plan.parallel import Child
from disco.plan.saved import step_entry
from disco.plan.trees import module_hashes, shared_prefix, tree_hash
from disco.report.metrics import Meter
from disco.run import run

FORMAT_VERSION = 1
# --detailed-exitcodes of a plan: a delta, head failing where base did not.
PLAN_DELTA, PLAN_FAILS = 2, 4
# DISCO_PLAN_SEQUENTIAL=1: head's dance after base's, in this process, not beside it in a
# child (parallel.py): the tests check both give the same plan, the bench compares them.
SEQUENTIAL = "DISCO_PLAN_SEQUENTIAL"
EXCHANGE = "head-end"  # where head's child leaves its end layer (parallel.py)


@dataclass(frozen=True)
class PlanRequest:
    node: str
    root: Path
    base: Settings  # where the base tree is fetched from: the node's servers, or --server
    head: Settings  # --head
    wait: float = 0.0  # seconds to wait for the node's lock


@dataclass
class Side:
    """One tree's NOOP dance: its change records (with diffs), failures, `Would execute`
    lines and, per step, its change set (saved.py)."""

    uri: str
    hash: str = ""
    names: tuple[str, ...] = ()
    changes: list[dict[str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    would: list[dict[str, str]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def last_record(self) -> dict[str, dict[str, str]]:
        """Each path's last change record."""
        return {change["path"]: change for change in self.changes}


@dataclass
class NodePlan:
    node: str
    root: str
    created: str
    base: Side
    head: Side
    delta: list[Delta]
    shared: int  # modules danced once for both trees

    @property
    def would_added(self) -> list[str]:
        return _missing(self.head.would, self.base.would)

    @property
    def would_removed(self) -> list[str]:
        return _missing(self.base.would, self.head.would)

    @property
    def head_fails(self) -> list[str]:
        """Modules that fail (or are skipped) in head and not in base."""
        return [m for m in self.head.failed if m not in self.base.failed]

    @property
    def exit(self) -> int:
        """0 no delta, 2 a delta, 4 head fails where base did not, 6 both."""
        changed = bool(self.delta or self.would_added or self.would_removed)
        return (PLAN_DELTA if changed else 0) + (PLAN_FAILS if self.head_fails else 0)


def _missing(these: list[dict[str, str]], there: list[dict[str, str]]) -> list[str]:
    """The `Would execute` lines of `these` that `there` has not (as many times)."""
    left = [_would(w) for w in there]
    out = []
    for line in map(_would, these):
        if line in left:
            left.remove(line)
        else:
            out.append(line)
    return out


def _would(line: dict[str, str]) -> str:
    return f"{line['module']}: {line['command']}" if line.get("module") else line["command"]


class Tap:
    """A dance's Sink inside a plan: its change lines and diffs are kept, not printed;
    warnings, errors and progress go on to `out`, said of the tree they come from."""

    def __init__(self, out: Sink, tag: str) -> None:
        self.out = out
        self.tag = tag
        self.diffs: list[str] = []

    def info(self, text: str) -> None:
        if text.startswith("File: "):
            self.diffs.append("")

    def text(self, text: str) -> None:
        if self.diffs:
            self.diffs[-1] = text

    def warning(self, text: str) -> None:
        self.out.warning(f"{self.tag}: {text}")

    def error(self, text: str) -> None:
        self.out.error(f"{self.tag}: {text}")

    def progress(self, module: str, index: int, total: int) -> None:
        self.out.progress(f"{self.tag}/{module}", index, total)


def plan_node(
    state: State,
    request: PlanRequest,
    out: Sink,
    would: Callable[[], list[dict[str, str]]],
    held: bool = False,
) -> NodePlan:
    """Plan `request.node`: fetch both trees, dance them NOOP, read the delta.
    `held`: the caller holds the node's lock already (a dance planning candidates).

    `out` hears the dances' warnings, errors and progress (modules named `base/M` and
    `head/M`); `would()` is called once both dances are over and gives every `Would
    execute` line seen meanwhile, {"module", "command"}, modules named so (the CLI's
    DanceOutput.finish). Head's lines, and its steps' output (to fd 2), come after all of
    base's (parallel.py). In the main thread, SIGINT and SIGTERM end the plan, both
    dances stopped, with a DiscoError of status 128+N. This is what a node calls to plan
    a candidate in-process."""
    work = state.root / "plans"
    main = threading.current_thread() is threading.main_thread()  # signals reach it alone
    with contextlib.nullcontext() if held else hold(state.lock, request.wait, out.warning):
        try:
            with interruptible() if main else contextlib.nullcontext():
                return _plan(state, request, out, would, work)
        except Interrupted as e:
            raise DiscoError(
                f"the plan was interrupted by {e.name}", "nothing was planned", e.status
            ) from None
        finally:
            # The dances' tmpfs and head's end layer (parallel.py), in our mount namespace.
            for path in (work / "base/txn/run", work / "head/txn/run", work / EXCHANGE):
                run(["umount", "-l", str(path)], check=False)


def _plan(
    state: State,
    request: PlanRequest,
    out: Sink,
    would: Callable[[], list[dict[str, str]]],
    work: Path,
) -> NodePlan:
    created = utc_now()
    # The trees' copies are kept from one plan to the next, as the node keeps its own:
    # a fetch then brings only what changed.
    states = {"base": State(work / "base"), "head": State(work / "head")}
    plans: dict[str, Plan] = {}
    for side, settings in (("base", request.base), ("head", request.head)):
        scratch = states[side]
        scratch.create()
        if (scratch.parameters / "disco").exists():
            remove_tree(scratch.parameters / "disco")
        if (state.parameters / "disco").is_dir():  # the client settings steps see
            shutil.copytree(state.parameters / "disco", scratch.parameters / "disco", symlinks=True)
        plans[side] = fetch(scratch, request.node, settings)
    base = Side(request.base.servers[0].uri, names=plans["base"].names)
    head = Side(request.head.servers[0].uri, names=plans["head"].names)
    hashes = (module_hashes(plans["base"].modules), module_hashes(plans["head"].modules))
    base.hash = tree_hash(states["base"], request.node, plans["base"].modules, hashes[0])
    head.hash = tree_hash(states["head"], request.node, plans["head"].modules, hashes[1])
    shared = shared_prefix(
        (states["base"], plans["base"].modules), (states["head"], plans["head"].modules),
        request.node, hashes,
    )  # fmt: skip
    same = base.hash == head.hash and shared == len(plans["base"].modules)
    split = Split(shared, states["base"].txn / "run" / "split")  # on base's tmpfs
    taps = {"base": Tap(out, "base"), "head": Tap(out, "head")}
    prefix = set(plans["base"].names[:shared])
    if same:
        base_dance = _dance(states["base"], plans["base"], request, state, taps["base"], base)
        head.changes, head.failed, head.steps = base.changes, base.failed, base.steps
        ends = (base_dance.layers.below, base_dance.layers.below)
    elif os.environ.get(SEQUENTIAL) == "1":
        base_dance = _dance(states["base"], plans["base"], request, state, taps["base"], base,
                            save=split if shared else None)  # fmt: skip
        _prefix(base, head, prefix)
        resume = Split(shared, split.below, frozenset(head.failed)) if shared else None
        head_dance = _dance(states["head"], plans["head"], request, state, taps["head"], head,
                            resume=resume)  # fmt: skip
        ends = (base_dance.layers.below, head_dance.layers.below)
    else:
        base_dance, own = _together(states, plans, request, state, taps["base"], base, split, work)
        _prefix(base, head, prefix)
        head.changes += own["changes"]
        head.failed += own["failed"]
        head.steps += own["steps"]
        ends = (base_dance.layers.below, work / EXCHANGE)
    assert ends[0] is not None and ends[1] is not None
    delta = read_delta(
        upper_of(ends[0]),
        upper_of(ends[1]),
        request.root,
        base_dance.exclude,
        base_dance.changes.sensitive,
    )
    for line in would():
        side, _, module = line.get("module", "").partition("/")
        entry = {**line, "module": module}
        if side == "base":
            base.would.append(entry)
            if same or module in prefix:
                head.would.append(entry)
        elif side == "head":
            head.would.append(entry)
    return NodePlan(request.node, str(request.root), created, base, head, delta, shared)


def _prefix(base: Side, head: Side, prefix: set[str]) -> None:
    """What the shared modules said (danced once, by base), head says too."""
    head.changes += [dict(change) for change in base.changes if change["module"] in prefix]
    head.failed += [m for m in base.failed if m in prefix]
    head.steps += [s for s in base.steps if s["module"] in prefix]


def _together(
    states: dict[str, State],
    plans: dict[str, Plan],
    request: PlanRequest,
    node_state: State,
    tap: Tap,
    base: Side,
    split: Split,
    work: Path,
) -> tuple[Dance, dict[str, Any]]:
    """Base's dance here and head's in a child (parallel.py), forked once base has danced
    the shared prefix (at once if there is none): head's records, not its prefix's."""
    exchange = work / EXCHANGE
    child: Child | None = None

    def fork(dancer: Dance | None) -> None:
        nonlocal child
        done = (*dancer.outcome.failed, *dancer.outcome.skipped) if dancer is not None else ()
        resume = Split(split.index, split.below, frozenset(done)) if split.index else None
        exchange.mkdir(exist_ok=True)
        mount_tmpfs(exchange, request.base.limits.tmpfs_mb)  # in this namespace, not the host's

        def head(sink: Sink) -> dict[str, Any]:
            side = Side("")
            dancer = _dance(states["head"], plans["head"], request, node_state,
                            Tap(sink, "head"), side, resume=resume)  # fmt: skip
            assert dancer.layers.below is not None
            run(["cp", "-a", "--", str(upper_of(dancer.layers.below)), str(upper_of(exchange))])
            return {"changes": side.changes, "failed": side.failed, "steps": side.steps}

        child = Child(exchange, head)

    try:
        if not split.index:
            private_mounts()
            fork(None)
        dancer = _dance(states["base"], plans["base"], request, node_state, tap, base,
                        save=split if split.index else None, then=fork)  # fmt: skip
        assert child is not None  # base's dance made the split
        return dancer, child.join(tap.out)
    except BaseException:
        if child is not None:
            child.stop()
        raise


class _Splitting(Dance):
    """A dance that calls `then` once it has saved its split."""

    then: Callable[[Dance], None] | None = None

    def split(self, save: Split) -> None:
        super().split(save)
        if self.then is not None:
            self.then(self)


def _dance(
    scratch: State,
    plan: Plan,
    request: PlanRequest,
    node_state: State,
    tap: Tap,
    side: Side,
    save: Split | None = None,
    resume: Split | None = None,
    then: Callable[[Dance], None] | None = None,
) -> Dance:
    """One tree's NOOP dance on the root; its records land in `side`."""
    settings = request.base
    options = Options(
        noop=True,
        root=request.root,
        diff="unified",
        timeout=settings.step_timeout,
        limits=settings.limits,
        state=node_state.root,
        packages=settings.packages,
    )

    def watch(module: str, step: str, changes: list[Change]) -> None:
        side.steps.append(
            {"module": module, "step": step, "changes": [step_entry(c) for c in changes]}
        )

    dancer = _Splitting(scratch, plan, options, tap, Meter(), watch=watch, save=save, resume=resume)
    dancer.then = then
    outcome = dancer.run()
    records = [dict(change) for change in outcome.changes]
    printed = [record for record in records if "package" not in record]  # a package's: kept
    if len(tap.diffs) == len(printed):
        for record, diff in zip(printed, tap.diffs):
            record["diff"] = diff
    side.changes += records
    side.failed += [*outcome.failed, *outcome.skipped]
    return dancer
