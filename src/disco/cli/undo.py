"""disco history and disco rollback: the kept dances, and undoing the last live ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from disco.cli.common import Output, Parser, subparser
from disco.cli.stdio import DanceStdio
from disco.client.lock import hold
from disco.client.state import State
from disco.engine.change_text import content_diff, header
from disco.errors import EXIT_FAILED, DiscoError, UsageError
from disco.live import history
from disco.live.recovery import recover
from disco.report.metrics import DanceReport, Meter, save


def add_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for another dance to let go of the lock (default: exit 3 now)",
    )


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def add_parsers(subs: argparse._SubParsersAction[Parser]) -> None:
    subparser(
        subs,
        "history",
        "list the kept dances: id, start, mode, root, changes, failures, whether they can be"
        " rolled back",
        "disco history\n  disco rollback --noop 12",
    )
    r = subparser(
        subs,
        "rollback",
        "put the root back as it was before the last live dance, or before DANCE and every"
        " later one, file for file",
        "disco rollback --noop --root /srv/image\n  disco rollback 12",
    )
    r.add_argument("dance", nargs="?", metavar="DANCE", help="an id from 'disco history'")
    r.add_argument("--root", default="/", metavar="DIR", help="the root danced on (default: /)")
    r.add_argument(
        "--noop", action="store_true", help="change nothing, show the changes it would make"
    )
    r.add_argument(
        "--force", action="store_true", help="overwrite paths changed since by someone else"
    )
    add_wait(r)


def run(args: argparse.Namespace) -> int:
    state = State.locate(args.state_dir)
    if args.command == "history":
        kept = history.listing(state.txn)
        if not kept:
            Output().info(f"no dance kept in {state.txn / 'history'} yet: 'disco dance' makes one")
        undone = history.rolled_back(state.txn, kept)
        for k in kept:
            print(history.line(state.txn, k, undone))
        return 0
    # A reader of its output that goes away (`| head`) must not stop it half way.
    with DanceStdio() as stdio:
        return rollback(args, state, Output(stdio.stream(1), stdio.stream(2)))


def rollback(args: argparse.Namespace, state: State, out: Output) -> int:
    root = Path(args.root).absolute()
    if not root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory", "give the root danced on")
    if args.dance is not None and not args.dance.isdigit():
        raise UsageError(f"'{args.dance}' is not a dance id", "'disco history' lists them")
    if not (state.txn / "history").is_dir():
        raise DiscoError(f"no live dance on {root} to roll back: {state.root} has no history",
                         "'disco history' lists the dances kept")  # fmt: skip
    limit = history.max_bytes(state.params())
    with hold(state.lock, args.wait, out.warning):
        recover(state.txn, out.warning)
        plan = history.prepare(state.txn, root, args.dance, args.force)
        ids = ", ".join(d.id for d in plan.dances)
        verb = "Would roll back" if args.noop else "Rolling back"
        out.info(f"{verb} dance(s) {ids} on {root}")
        for dance in plan.dances:
            for text in history.not_committed(dance):
                out.info(text)
        records = []
        for change in plan.changes:
            line = header(change)
            out.info(line)
            diff = content_diff(change)
            if diff:
                out.text(diff)
            records.append({"module": "_rollback", "step": f"undo {ids}", "path": change.path,
                            "kind": change.kind.value, "header": line})  # fmt: skip
        if args.noop:
            history.discard(plan)
            return 0
        node = plan.dances[0].node
        kept = history.begin(state.txn, "rollback", root, node, [d.id for d in plan.dances])
        meter = Meter()
        status = EXIT_FAILED
        try:
            with meter.measure("_rollback", "commit", f"undo {ids}"):
                history.apply_rollback(state.txn, plan, kept)
            status = 0
        finally:
            summary = DanceReport(kept.started, node, "rollback", str(root), status,
                                  tuple(meter.records), tuple(records))  # fmt: skip
            save(state.reports, summary)
            history.finish(state.txn, kept, len(records), 0 if status == 0 else 1, status)
            for text in history.prune(state.txn, limit):
                out.info(text)
        out.info(f"Rolled back dance(s) {ids}: {len(records)} change(s), as dance {kept.id}")
    return status
