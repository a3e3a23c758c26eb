"""disco: the client. `disco dance` fetches a node's modules and applies them."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from disco.cli import report
from disco.cli import timer as timer_cli
from disco.cli.common import Output, Parser, add_state_dir, execute, parser, subparser
from disco.dance import Dance, Options, Outcome, only
from disco.errors import EXIT_FAILED, DiscoError, UsageError
from disco.fetch import fetch, one_connection
from disco.lock import hold
from disco.metrics import DanceReport, Meter, save, utc_now
from disco.params import check_segment
from disco.push import push_report
from disco.state import State, load_settings

EPILOG = """\
examples:
  NOOP=true disco dance
  disco dance --server ./examples/seed --node localhost.localdomain --root /srv/image
  disco report
  disco timer install --every 30min --splay 10min
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
    s.add_argument("--node", help="the node's name (default: this machine's FQDN)")
    s.add_argument(
        "--server",
        action="append",
        metavar="URI",
        help="server to fetch from, instead of disco/server/uri; repeat for failover",
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
        "--module",
        action="append",
        metavar="M",
        help="dance only M and the modules it requires; repeatable",
    )
    s.add_argument(
        "--diff", choices=("normal", "unified"), default="normal", help="content diff format"
    )
    s.add_argument(
        "--detailed-exitcodes",
        action="store_true",
        help="exit 0 no changes, 1 could not run, 2 changes, 4 failures, 6 both",
    )
    report.add_parser(subs)
    timer_cli.add_parser(subs)
    return p


def dance(args: argparse.Namespace) -> int:
    state = State.locate(args.state_dir)
    node = check_segment(socket.getfqdn() if args.node is None else args.node, "node name")
    root = Path(args.root).absolute()
    if not root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory", "give the root to apply to")
    noop = args.noop or bool(os.environ.get("NOOP"))
    # Settings are read (and checked) before the lock is taken: a bad URI or a missing
    # server setting leaves a machine without state as it was.
    settings = load_settings(state.params(), args.server)
    state.create()
    out = Output()
    meter = Meter()
    started = utc_now()
    # One ssh connection for the whole dance: the fetch, then the report's push.
    with hold(state.lock), one_connection(state, settings) as settings:
        with meter.measure("_internal", "fetch"):
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
        options = Options(noop=noop, root=root, diff=args.diff)
        dancer = Dance(state, plan, options, out, meter)
        status = EXIT_FAILED
        try:
            status = exit_status(dancer.run(), args.detailed_exitcodes)
        finally:  # a dance cut short is reported too, as far as it went
            mode = "noop" if noop else "live"
            records, changes = tuple(meter.records), tuple(dancer.outcome.changes)
            summary = DanceReport(started, node, mode, str(root), status, records, changes)
            last = save(state.reports, summary)
            problem = push_report(settings, plan.server, last)
            if problem is not None:
                out.warning(str(problem))
    return status


def exit_status(outcome: Outcome, detailed: bool) -> int:
    failed = bool(outcome.failed or outcome.skipped)
    if not detailed:
        return EXIT_FAILED if failed else 0
    return (DETAILED_CHANGES if outcome.changes else 0) + (DETAILED_FAILURES if failed else 0)


def command(args: argparse.Namespace) -> int:
    if args.command == "report":
        return report.run(args)
    if args.command == "timer":
        return timer_cli.run(args)
    detailed = getattr(args, "detailed_exitcodes", False)
    try:
        return dance(args)
    except DiscoError as e:
        if detailed:  # Puppet's meaning: 1, the dance could not run
            e.status = EXIT_FAILED
        raise


def main(argv: list[str] | None = None) -> int:
    p = build()
    words = sys.argv[1:] if argv is None else argv
    if "--detailed-exitcodes" in words:
        Parser.usage_status = EXIT_FAILED  # subcommand parsers too
    return execute(lambda: p.parse_args(argv), command)
