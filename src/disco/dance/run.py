"""One dance in-process, from the lock to the report (DESIGN §6, §9): what `disco dance`
runs, and what a plan's dances are made of. It never prints: what it says goes to the
console the caller gives it, and it returns the dance's outcome and records."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from disco.client.fetch import Plan, fetch, one_connection
from disco.client.lock import hold
from disco.client.push import push_report
from disco.client.state import Settings, State
from disco.client.transport import Server
from disco.clock import utc_now
from disco.dance.dance import Dance, only
from disco.dance.interrupt import Interrupted, interruptible
from disco.dance.options import Drifted, Guard, Options, Outcome
from disco.dance.reporting import Sink
from disco.engine.sandbox import Usage
from disco.errors import EXIT_FAILED, DiscoError, UsageError
from disco.live import history
from disco.live.journal import seal
from disco.report.metrics import INTERNAL, USAGE_FIELDS, DanceReport, Meter, Record, save

# --detailed-exitcodes (Puppet's meaning)
DETAILED_CHANGES = 2
DETAILED_FAILURES = 4


class Console(Sink, Protocol):
    """The dance's Sink, and what the dance tells it besides (the CLI's DanceOutput)."""

    meter: Meter | None  # the dance's, once it has one
    module: str | None  # the module running now
    module_started: float  # time.monotonic() when it started
    diffs: list[str]  # each change record's diff, in order

    def finish(self) -> list[dict[str, str]]:
        """The dance is over: its `Would execute` lines ({"module", "command"})."""


@dataclass(frozen=True)
class Request:
    """What a dance is asked to do: the flags of `disco dance`, checked."""

    node: str
    root: Path
    noop: bool
    settings: Settings
    history_limit: int  # bytes of undo logs kept (disco/client/history/max_mb)
    wait: float = 0.0  # seconds to wait for the lock
    modules: tuple[str, ...] = ()  # only these and what they require; () for all
    diff: str = "normal"
    effects: str | None = None
    detailed: bool = False  # --detailed-exitcodes
    guard: Guard | None = None  # live: checks each step's changes before its commit
    fetched: Callable[[State, Plan], None] | None = None  # checks what was fetched


@dataclass(frozen=True)
class Danced:
    """A dance that ran (or was cut short): its exit status, report and outcome."""

    status: int
    report: DanceReport
    outcome: Outcome
    would: tuple[dict[str, str], ...]


def dance(
    state: State,
    request: Request,
    out: Console,
    done: Callable[[Danced], None] = lambda _danced: None,
    then: Callable[[Settings, Server], None] | None = None,
) -> Danced:
    """Take the lock, fetch, dance, keep the report and push it. `done` is called with
    the dance as far as it went, even when it was cut short by an error or a signal.
    `then`: called after a dance that ran to its end, still under the lock and over its
    connection to the server it danced from (a node plans the candidates there)."""
    meter = Meter()
    out.meter = meter
    started = utc_now()
    settings = request.settings
    noop, root = request.noop, request.root
    # One ssh connection for the whole dance: the fetch, then the report's push.
    with hold(state.lock, request.wait, out.warning), one_connection(state, settings) as settings:
        with meter.measure("_internal", "fetch_params"):  # the seed's name; modules too
            plan = fetch(state, request.node, settings)
        if request.fetched is not None:
            request.fetched(state, plan)
        for failure in plan.passed_over:
            out.warning(f"{failure.message}; passed over")
        if len(settings.servers) > 1:  # with failover, say which one it was
            out.info(f"Fetched from server {plan.server.uri}")
        if request.modules:
            unknown = sorted(set(request.modules) - set(plan.names))
            if unknown:
                raise UsageError(
                    f"--module {unknown[0]}: not a module of node '{request.node}'",
                    "choose from: " + " ".join(plan.names),
                )
            plan = only(plan, list(request.modules))
        out.info(("Ready to dance : " + " ".join(plan.names)).rstrip())
        mode = "noop" if noop else "live"
        kept = history.begin(state.txn, mode, root, request.node)
        options = Options(
            noop=noop,
            root=root,
            diff=request.diff,
            dance=kept.id,
            timeout=settings.step_timeout,
            limits=settings.limits,
            effects=request.effects,
            packages=settings.packages,
        )
        dancer = Dance(state, plan, options, out, meter, guard=request.guard)
        status = EXIT_FAILED
        try:
            with interruptible():
                status = exit_status(dancer.run(), request.detailed)
        except Interrupted as e:
            status = e.status
            meter.add(interrupted_step(out, status))
            raise interrupted(e, state, kept, noop, out.module) from None
        except Drifted as e:  # a guard's refusal: its status is the dance's
            status = e.status
            raise
        finally:  # a dance cut short is reported too, as far as it went
            records, changes = tuple(meter.records), with_diffs(dancer.outcome, out.diffs)
            if status > 128 and not noop:  # only the records of what was committed
                done_steps = {(j.module, j.step) for j in kept.commits(state.txn)}
                changes = tuple(c for c in changes if (c["module"], c["step"]) in done_steps)
            would = tuple(out.finish())
            summary = DanceReport(started, request.node, mode, str(root), status, records,
                                  changes, would, request.detailed)  # fmt: skip
            last = save(state.reports, summary)
            failures = len(dancer.outcome.failed) + len(dancer.outcome.skipped)
            failed = tuple((c["module"], c["step"], c["path"]) for c in changes if "failed" in c)
            history.finish(state.txn, kept, len(changes) - len(failed), failures, status, failed)
            for text in history.prune(state.txn, request.history_limit):
                out.info(text)
            danced = Danced(status, summary, dancer.outcome, would)
            done(danced)
            problem = push_report(settings, plan.server, last)
            if problem is not None:
                out.warning(str(problem))
        if then is not None:
            then(settings, plan.server)
    return danced


def interrupted_step(out: Console, status: int) -> Record:
    """The step that was cut short: its module, and how long it had run."""
    zero = Usage(**{name: 0 for name in USAGE_FIELDS})
    wall = time.monotonic() - out.module_started
    return Record(out.module or INTERNAL, "interrupted", None, wall, zero, status)


def interrupted(
    e: Interrupted, state: State, kept: history.Kept, noop: bool, module: str | None
) -> DiscoError:
    """The error that ends a dance cut short by a signal, saying what it committed."""
    where = f"interrupted by {e.name}" + (f" in module {module}" if module else "")
    if noop:
        hint = "'disco report' shows the steps that ran, and where it stopped"
        return DiscoError(f"{where}: a NOOP dance changes nothing", hint, e.status)
    with contextlib.suppress(OSError, DiscoError):  # else the next dance's recovery does it
        seal(state.txn)  # the last commit on disk, in the history
    done = [f"{j.module}: {j.step}" for j in kept.commits(state.txn)]
    what = f"{len(done)} commit(s) were applied ({', '.join(done)})" if done else "none applied"
    return DiscoError(
        f"{where}: dance {kept.id} committed nothing more; {what}",
        f"'disco rollback' undoes dance {kept.id}" if done else "'disco report' shows the steps",
        e.status,
    )


def with_diffs(outcome: Outcome, diffs: list[str]) -> tuple[dict[str, str], ...]:
    """The change records, each with the diff printed after it (for reports and --json)."""
    changes = [dict(change) for change in outcome.changes]
    printed = [change for change in changes if "package" not in change]  # a package's: kept
    if len(diffs) == len(printed):  # printed in the same order as recorded
        for change, diff in zip(printed, diffs):
            change["diff"] = diff
    return tuple(changes)


def exit_status(outcome: Outcome, detailed: bool) -> int:
    failed = bool(outcome.failed or outcome.skipped)
    if not detailed:
        return EXIT_FAILED if failed else 0
    return (DETAILED_CHANGES if outcome.changes else 0) + (DETAILED_FAILURES if failed else 0)
