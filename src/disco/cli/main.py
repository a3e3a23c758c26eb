"""disco: the client. `disco dance` fetches a node's modules and applies them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from disco.cli import candidates, report, undo
from disco.cli import plan as plan_cli
from disco.cli import test as test_cli
from disco.cli import timer as timer_cli
from disco.cli.common import Parser, add_state_dir, execute, parser, subparser
from disco.cli.dance_output import DanceOutput
from disco.cli.stdio import DanceStdio
from disco.client.state import State, default_node, load_settings
from disco.client.transport import with_ssh_port
from disco.dance import run
from disco.dance.options import Drifted, Options, Outcome
from disco.dance.run import Danced, Request
from disco.errors import EXIT_FAILED, DiscoError, UsageError
from disco.live import history
from disco.plan.saved import Guard, check_age, check_head, load, max_age
from disco.plan.trees import tree_hash
from disco.report.metrics import DanceReport
from disco.tree.names import check_node

EPILOG = """\
examples:
  NOOP=true disco dance
  disco dance --server ./examples/seed --node localhost.localdomain --root /srv/image
  disco dance --root /mnt/other-running-system --effects run
  disco plan --head /srv/checkout-of-pr-42 --markdown plan.md
  disco report
  disco history
  disco rollback --noop
  disco timer install --every 30min --splay 10min
  disco test ./balls/users --junit report.xml
  disco lint /srv/disco
"""


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
    s.add_argument(
        "--plan",
        metavar="FILE",
        help="apply exactly the plan 'disco plan --out FILE' saved, or refuse (exit 5)",
    )
    undo.add_wait(s)
    report.add_parser(subs)
    plan_cli.add_parser(subs)
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
    saved = applying(args, node, root, noop) if args.plan else None
    # Settings are read (and checked) before the lock is taken: a bad URI or a missing
    # server setting leaves a machine without state as it was.
    servers = [saved["plan"]["head"]["uri"]] if saved else args.server
    settings = load_settings(state.params(), servers, args.timeout)
    if saved is not None:
        check_age(saved, max_age(state.params()))
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
    request = Request(
        node=node,
        root=root,
        noop=noop,
        settings=settings,
        history_limit=limit,
        wait=args.wait,
        modules=tuple(args.module or ()),
        diff=args.diff,
        effects=args.effects,
        detailed=args.detailed_exitcodes,
        guard=None if saved is None else Guard(saved),
        fetched=None
        if saved is None
        else lambda s, p: check_head(saved, tree_hash(s, node, p.modules)),
    )

    def done(danced: Danced) -> None:
        if document is not None:  # printed by command(), once stdout is ours again
            document.update(dance_json(danced.report, danced.outcome, out.stdio.output))

    try:
        then = candidates.after_dance(args, state, node, root)
        return run.dance(state, request, out, done, then).status
    except DiscoError:
        if fresh and not state.reports.exists():  # refused before it began: leave no trace
            shutil.rmtree(state.root, ignore_errors=True)
        raise
    finally:
        out.finish()


def applying(args: argparse.Namespace, node: str, root: Path, noop: bool) -> dict[str, Any]:
    """The saved plan of `--plan FILE`, for this node and root, with no flag against it."""
    saved = load(Path(args.plan))
    for flag, given in (("--server", args.server), ("--module", args.module), ("--noop", noop)):
        if given:
            raise UsageError(
                f"--plan with {flag}: a plan names its head tree and applies all of it, live",
                f"drop {flag}" + (" (and NOOP)" if flag == "--noop" else ""),
            )
    plan = saved["plan"]
    if plan.get("node") != node:
        raise UsageError(
            f"--plan {args.plan} was made for node '{plan.get('node')}', not '{node}'",
            f"apply it on that node, or give --node {plan.get('node')}",
        )
    if plan.get("root") != str(root):
        raise UsageError(
            f"--plan {args.plan} was made for root {plan.get('root')}, not {root}",
            f"give --root {plan.get('root')}",
        )
    return saved


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


def command(args: argparse.Namespace) -> int:
    if args.command == "report":
        return report.run(args)
    if args.command in ("history", "rollback"):
        return undo.run(args)
    if args.command == "timer":
        return timer_cli.run(args)
    if args.command == "plan":
        return plan_cli.run(args)
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
        if detailed and not isinstance(e, Drifted):  # Puppet's 1: the dance could not run
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
