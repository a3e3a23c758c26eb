"""disco: the client. `disco dance` fetches a node's modules and applies them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from disco.cli import report, undo
from disco.cli import test as test_cli
from disco.cli import timer as timer_cli
from disco.cli.common import Parser, add_state_dir, execute, parser, subparser
from disco.cli.dance_output import DanceOutput
from disco.cli.interrupt import Interrupted, interruptible
from disco.cli.stdio import DanceStdio
from disco.client.fetch import fetch, one_connection
from disco.client.lock import hold
from disco.client.push import push_report
from disco.client.state import Settings, State, default_node, load_settings
from disco.client.transport import with_ssh_port
from disco.clock import utc_now
from disco.dance.dance import Dance, Options, Outcome, only
from disco.engine.sandbox import Usage
from disco.errors import EXIT_FAILED, DiscoError, UsageError
from disco.live import history
from disco.report.metrics import INTERNAL, USAGE_FIELDS, DanceReport, Meter, Record, save
from disco.tree.names import check_node

EPILOG = """\
examples:
  NOOP=true disco dance
  disco dance --server ./examples/seed --node localhost.localdomain --root /srv/image
  disco dance --root /mnt/other-running-system --effects run
  disco report
  disco history
  disco rollback --noop
  disco timer install --every 30min --splay 10min
  disco test ./balls/users --junit report.xml
  disco lint /srv/disco
"""

# --detailed-exitcodes (Puppet's meaning)
DETAILED_CHANGES = 2
DETAILED_FAILURES = 4


def build() -> argparse.ArgumentParser:
    p = parser("disco", "Dead Simple COnfiguration management for Linux.", EPILOG)
    add_state_dir(p)
    subs = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = subparser(
        subs,
        "dance",
        "fetch the node's modules and apply them in order (NOOP: show what would change)",
        "NOOP=true disco dance --server /srv/disco --node web1.example.com",
    )
    s.add_argument("--node", help="the node's name (default: what 'hostname -f' prints)")
    s.add_argument(
        "--server",
        action="append",
        metavar="URI",
        help="server to fetch from, instead of disco/server/uri; repeat for failover",
    )
    s.add_argument(
        "--port",
        type=port,
        metavar="N",
        help="ssh port of [user@]host servers, instead of the URI's (user@host:N) or ssh's",
    )
    s.add_argument(
        "--noop",
        action="store_true",
        help="change nothing, show what would change (also: NOOP set and not empty)",
    )
    s.add_argument(
        "--root", default="/", metavar="DIR", help="apply to this root directory (default: /)"
    )
    s.add_argument(
        "--effects",
        choices=("run", "intercept"),
        help="live: run commands with outside effects (service restarts, kill, network) or"
        " print 'Would execute' (default: run on /, intercept on another --root)",
    )
    s.add_argument(
        "--module",
        action="append",
        metavar="M",
        help="dance only M and the modules it requires; repeatable",
    )
    s.add_argument(
        "--diff", choices=("normal", "unified"), default="normal", help="content diff format"
    )
    s.add_argument(
        "--timeout",
        type=timeout,
        metavar="SECONDS",
        help="kill a template or script running longer, with its whole process tree, and"
        " fail it (default: disco/client/timeout/step, else no limit)",
    )
    s.add_argument(
        "--detailed-exitcodes",
        action="store_true",
        help="exit 0 no changes, 1 could not run, 2 changes, 4 failures, 6 both",
    )
    s.add_argument(
        "--quiet", "-q", action="store_true", help="print only changes, warnings and errors"
    )
    s.add_argument(
        "--json",
        action="store_true",
        help="print the changes and the outcome as one JSON document; other lines to stderr",
    )
    undo.add_wait(s)
    report.add_parser(subs)
    undo.add_parsers(subs)
    timer_cli.add_parser(subs)
    test_cli.add_parsers(subs)
    return p


def port(text: str) -> str:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port: give one from 1 to 65535")
    return text


def timeout(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 10**7:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds: give a positive number, e.g. 600"
        )
    return text


def dance(args: argparse.Namespace, document: dict[str, Any] | None) -> int:
    if os.geteuid() != 0:
        raise DiscoError(
            "disco dance needs root: every step runs in mount namespaces and overlays",
            "run it as root, e.g. with sudo",
        )
    state = State.locate(args.state_dir)
    node = check_node(default_node() if args.node is None else args.node)
    root = Path(args.root).absolute()
    if not root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory", "give the root to apply to")
    noop = args.noop or bool(os.environ.get("NOOP"))
    if noop and args.effects == "run":
        raise UsageError(
            "--effects run: a NOOP dance never runs outside effects",
            "drop --effects run, or dance live",
        )
    # Settings are read (and checked) before the lock is taken: a bad URI or a missing
    # server setting leaves a machine without state as it was.
    settings = load_settings(state.params(), args.server, args.timeout)
    limit = history.max_bytes(state.params())
    if args.port is not None:
        servers = tuple(with_ssh_port(s, args.port, "--port") for s in settings.servers)
        settings = dataclasses.replace(settings, servers=servers)
    fresh = not state.root.exists()
    state.create()
    # The `Would execute` lines of an intercepting dance (NOOP, or live on another root)
    # are kept for the report; a reader of stdout that goes away stops nothing (stdio.py).
    intercepting = Options(noop=noop, root=root, effects=args.effects).intercepts
    stdio = DanceStdio(json=args.json, intercept=intercepting, progress=True)
    out = DanceOutput(stdio, quiet=args.quiet, json=args.json)
    try:
        return dance_locked(args, state, node, root, noop, settings, out, limit, document)
    except DiscoError:
        if fresh and not state.reports.exists():  # refused before it began: leave no trace
            shutil.rmtree(state.root, ignore_errors=True)
        raise
    finally:
        out.finish()


def dance_locked(
    args: argparse.Namespace,
    state: State,
    node: str,
    root: Path,
    noop: bool,
    settings: Settings,
    out: DanceOutput,
    limit: int,
    document: dict[str, Any] | None,
) -> int:
    meter = Meter()
    out.meter = meter
    started = utc_now()
    # One ssh connection for the whole dance: the fetch, then the report's push.
    with hold(state.lock, args.wait, out.warning), one_connection(state, settings) as settings:
        with meter.measure("_internal", "fetch_params"):  # the seed's name; modules too
            plan = fetch(state, node, settings)
        for failure in plan.passed_over:
            out.warning(f"{failure.message}; passed over")
        if len(settings.servers) > 1:  # with failover, say which one it was
            out.info(f"Fetched from server {plan.server.uri}")
        if args.module:
            unknown = sorted(set(args.module) - set(plan.names))
            if unknown:
                raise UsageError(
                    f"--module {unknown[0]}: not a module of node '{node}'",
                    "choose from: " + " ".join(plan.names),
                )
            plan = only(plan, args.module)
        out.info(("Ready to dance : " + " ".join(plan.names)).rstrip())
        mode = "noop" if noop else "live"
        kept = history.begin(state.txn, mode, root, node)
        options = Options(
            noop=noop,
            root=root,
            diff=args.diff,
            dance=kept.id,
            timeout=settings.step_timeout,
            limits=settings.limits,
            effects=args.effects,
        )
        dancer = Dance(state, plan, options, out, meter)
        status = EXIT_FAILED
        try:
            with interruptible():
                status = exit_status(dancer.run(), args.detailed_exitcodes)
        except Interrupted as e:
            status = e.status
            meter.add(interrupted_step(out, status))
            raise interrupted(e, state, kept, noop, out.module) from None
        finally:  # a dance cut short is reported too, as far as it went
            records, changes = tuple(meter.records), with_diffs(dancer.outcome, out.diffs)
            if status > 128 and not noop:  # only the records of what was committed
                done = {(j.module, j.step) for j in kept.commits(state.txn)}
                changes = tuple(c for c in changes if (c["module"], c["step"]) in done)
            would = tuple(out.finish())
            summary = DanceReport(started, node, mode, str(root), status, records, changes, would,
                                  args.detailed_exitcodes)  # fmt: skip
            last = save(state.reports, summary)
            failures = len(dancer.outcome.failed) + len(dancer.outcome.skipped)
            failed = tuple((c["module"], c["step"], c["path"]) for c in changes if "failed" in c)
            history.finish(state.txn, kept, len(changes) - len(failed), failures, status, failed)
            for text in history.prune(state.txn, limit):
                out.info(text)
            if document is not None:  # printed by command(), once stdout is ours again
                document.update(dance_json(summary, dancer.outcome, out.stdio.output))
            problem = push_report(settings, plan.server, last)
            if problem is not None:
                out.warning(str(problem))
    return status


def interrupted_step(out: DanceOutput, status: int) -> Record:
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
    if len(diffs) == len(changes):  # printed in the same order as recorded
        for change, diff in zip(changes, diffs):
            change["diff"] = diff
    return tuple(changes)


def dance_json(
    report: DanceReport, outcome: Outcome, output: list[dict[str, str]]
) -> dict[str, Any]:
    """`disco dance --json`: the dance's change records and outcome, one document."""
    return {
        "node": report.node,
        "mode": report.mode,
        "root": report.root,
        "started": report.started,
        "exit": report.exit,
        "error": None,
        "hint": None,
        "failed": outcome.failed,
        "skipped": outcome.skipped,
        "changes": list(report.changes),
        "would_execute": list(report.would_execute),
        "output": output,
    }


REFUSAL = ("exit", "error", "hint")  # what an error says over a dance's document


def refused_json(args: argparse.Namespace, error: DiscoError) -> dict[str, Any]:
    """The document of a dance that could not run, or was cut short: its error."""
    noop = bool(getattr(args, "noop", False) or os.environ.get("NOOP"))
    return {
        "node": getattr(args, "node", None),
        "mode": "noop" if noop else "live",
        "root": getattr(args, "root", "/"),
        "started": None,
        "failed": [],
        "skipped": [],
        "changes": [],
        "would_execute": [],
        "output": [],
        "exit": error.status,
        "error": error.message,
        "hint": error.hint or None,
    }


def print_document(document: dict[str, Any]) -> None:
    """stdout's one document. A reader gone by now loses it; the status stays."""
    try:
        print(json.dumps(document, indent=2, sort_keys=True), flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def exit_status(outcome: Outcome, detailed: bool) -> int:
    failed = bool(outcome.failed or outcome.skipped)
    if not detailed:
        return EXIT_FAILED if failed else 0
    return (DETAILED_CHANGES if outcome.changes else 0) + (DETAILED_FAILURES if failed else 0)


def command(args: argparse.Namespace) -> int:
    if args.command == "report":
        return report.run(args)
    if args.command in ("history", "rollback"):
        return undo.run(args)
    if args.command == "timer":
        return timer_cli.run(args)
    if args.command in ("test", "lint"):
        return test_cli.run(args)
    detailed = getattr(args, "detailed_exitcodes", False)
    document: dict[str, Any] | None = {} if args.json else None

    def refused(e: DiscoError) -> None:
        if document is not None:  # as far as the dance went, with its error
            said = refused_json(args, e)
            print_document({**said, **document, **{k: said[k] for k in REFUSAL}})

    try:
        status = dance(args, document)
    except DiscoError as e:
        if detailed:  # Puppet's meaning: 1, the dance could not run
            e.status = EXIT_FAILED
        refused(e)
        raise
    except KeyboardInterrupt:  # before the dance could take the signal itself
        refused(DiscoError("interrupted", status=130))
        raise
    except OSError as e:  # execute()'s last resort says it too
        refused(DiscoError(str(e)))
        raise
    if document is not None:
        print_document(document)
    return status


def main(argv: list[str] | None = None) -> int:
    p = build()
    words = sys.argv[1:] if argv is None else argv
    if "--detailed-exitcodes" in words:
        Parser.usage_status = EXIT_FAILED  # subcommand parsers too
    if "--json" in words and "dance" in words:  # a usage error is a document too
        Parser.document = lambda message, status: print_document(
            refused_json(argparse.Namespace(), DiscoError(message, status=status))
        )
    return execute(lambda: p.parse_args(argv), command)
