"""`disco plan`: what a change to the server tree would do on this node (DESIGN §15).
It parses, runs the planner (disco.plan) and writes the outputs asked for."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from disco.cli.common import Output, Parser, subparser
from disco.cli.dance_output import DanceOutput
from disco.cli.stdio import DanceStdio
from disco.cli.undo import seconds
from disco.client.state import State, default_node, load_settings
from disco.errors import EXIT_FAILED, DiscoError, UsageError
from disco.files import write_atomic
from disco.plan.document import plan_document
from disco.plan.planner import NodePlan, PlanRequest, plan_node
from disco.plan.render import junit, markdown, plan_html, text_lines
from disco.plan.saved import saved_plan
from disco.quoting import quote
from disco.tree.names import check_node

EXAMPLE = "disco plan --head /srv/checkout-of-pr-42 --json --junit plan.xml --markdown plan.md"


def add_parser(subs: argparse._SubParsersAction[Parser]) -> None:
    s = subparser(
        subs,
        "plan",
        "NOOP-dance the base tree and a head tree over this root; show where head differs",
        EXAMPLE,
    )
    s.add_argument("--head", required=True, metavar="URI", help="the tree to review (a server URI)")
    s.add_argument(
        "--server",
        action="append",
        metavar="URI",
        help="the base tree, instead of disco/server/uri; repeat for failover",
    )
    s.add_argument("--node", help="the node's name (default: what 'hostname -f' prints)")
    s.add_argument("--root", default="/", metavar="DIR", help="plan for this root (default: /)")
    s.add_argument("--out", metavar="FILE", help="save the plan for 'disco dance --plan FILE'")
    s.add_argument("--json", action="store_true", help="print the plan as one JSON document")
    s.add_argument("--junit", metavar="FILE", help="write JUnit XML: a testcase per module")
    s.add_argument("--markdown", metavar="FILE", help="write a summary for a pull request")
    s.add_argument("--html", metavar="FILE", help="write the plan as a page")
    s.add_argument(
        "--no-content",
        action="store_true",
        help="no file content anywhere (paths, kinds, hashes, modes): for places a pull"
        " request's author can read",
    )
    s.add_argument(
        "--detailed-exitcodes",
        action="store_true",
        help="exit 0 no delta, 1 could not plan, 2 a delta, 4 head fails, 6 both",
    )
    s.add_argument(
        "--wait", type=seconds, default=0.0, metavar="SECONDS", help="wait for the node's lock"
    )


def run(args: argparse.Namespace) -> int:
    try:
        return plan(args)
    except DiscoError as e:
        if args.detailed_exitcodes:
            e.status = EXIT_FAILED  # the plan could not run
        if args.json:
            print_json({"format_version": 1, "error": str(e), "exit": e.status})
        raise


def plan(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise DiscoError(
            "disco plan needs root: its dances run in mount namespaces and overlays",
            "run it as root, e.g. with sudo",
        )
    root = Path(args.root).absolute()
    if not root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory", "give the root to plan for")
    outputs = [(flag, getattr(args, flag)) for flag in ("out", "junit", "markdown", "html")]
    for flag, name in outputs:
        if name is not None and not Path(name).absolute().parent.is_dir():
            raise UsageError(
                f"--{flag} {quote(name)}: its directory does not exist",
                "give a file in an existing directory",
            )
    state = State.locate(args.state_dir)
    node = check_node(default_node() if args.node is None else args.node)
    base = load_settings(state.params(), args.server)
    head = load_settings(state.params(), [args.head])
    state.create()
    result = planned(state, PlanRequest(node, root, base, head, args.wait))
    write_outputs(args, result)
    if args.detailed_exitcodes:
        return result.exit
    return EXIT_FAILED if result.head_fails else 0


def planned(state: State, request: PlanRequest) -> NodePlan:
    """Plan in-process, the steps' output and the progress line on stderr, stdout left
    alone; their `Would execute` lines caught for the plan (a node's own plans too)."""
    stdio = DanceStdio(json=True, intercept=True, progress=True)
    out = DanceOutput(stdio, quiet=True, json=True)
    try:
        return plan_node(state, request, out, out.finish)
    finally:
        out.finish()


def write_outputs(args: argparse.Namespace, result: NodePlan) -> None:
    document = plan_document(result, args.no_content)
    if args.out:
        saved = saved_plan(plan_document(result, no_content=True), result.head.steps)
        write_atomic(Path(args.out), (json.dumps(saved, indent=1) + "\n").encode(), 0o600)
    if args.junit:
        write_atomic(Path(args.junit), junit([document]).encode())
    if args.markdown:
        write_atomic(Path(args.markdown), markdown([document]).encode())
    if args.html:
        write_atomic(Path(args.html), plan_html([document]).encode())
    if args.json:
        print_json(document)
        return
    say = Output()
    for kind, text in text_lines(document):
        getattr(say, kind)(text)
    say.info(f"{result.shared} of {len(result.head.names)} module(s) danced once for both trees")


def print_json(document: dict[str, Any]) -> None:
    try:
        print(json.dumps(document, indent=2, sort_keys=True), flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
