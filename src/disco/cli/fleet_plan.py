"""disco-server plan NAME: candidate NAME across the fleet, as the nodes planned it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from disco.cli.common import Output, Parser, subparser
from disco.errors import EXIT_FAILED, DiscoError
from disco.plan import render
from disco.server import plan_pages
from disco.server.plans import FAILURES, FleetPlan, Group, entry_text, fleet_plan, without_content

SHOWN = 10  # node names on one line before the middle ones are left out


def add_parser(subs: Any, config_flag: Callable[[Parser], None]) -> None:
    s = subparser(
        subs,
        "plan",
        "candidate NAME across the fleet: nodes grouped by identical delta, the ones not yet"
        " planned, the unaffected",
        "disco-server plan pr-42 --markdown summary.md --junit plan.xml --detailed-exitcodes",
        state_dir=False,  # a server keeps no client state
    )
    s.add_argument("name", metavar="NAME")
    s.add_argument("--json", action="store_true", help="print the fleet's plan as JSON alone")
    s.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report")
    s.add_argument("--markdown", type=Path, metavar="FILE", help="write a Markdown summary")
    s.add_argument("--html", type=Path, metavar="FILE", help="write an HTML page")
    s.add_argument(
        "--no-content",
        action="store_true",
        help="no file content (diffs) in any output: paths, kinds, summaries only",
    )
    s.add_argument(
        "--detailed-exitcodes",
        action="store_true",
        help="exit 0 no delta, 2 a delta, 4 head fails on a node, 6 both",
    )
    config_flag(s)


def names(nodes: tuple[str, ...]) -> str:
    """Node names, the middle ones left out of a long list: `web01 web02 web03 ... web47`."""
    if len(nodes) <= SHOWN:
        return " ".join(nodes)
    return " ".join([*nodes[: SHOWN - 1], "...", nodes[-1]])


def print_group(out: Output, g: Group, content: bool) -> None:
    on = f"on {len(g.nodes)} node{'s' if len(g.nodes) > 1 else ''}: {names(g.nodes)}"
    if not g.delta and not g.failed:
        out.line("report", f"no change {on}", sys.stdout)
    elif len(g.delta) == 1 and not g.failed:
        out.line("report", f"{entry_text(g.delta[0])} {on}", sys.stdout)
    else:
        out.line("report", f"{len(g.delta)} path(s) {on}", sys.stdout)
        for entry in g.delta:
            out.line("report", f"  {entry_text(entry)}", sys.stdout)
        for module in g.failed:
            out.line("report", f"  head fails: module {module}", sys.stdout)
    for entry in g.delta if content else ():
        if entry.get("diff"):
            out.text(entry["diff"].rstrip("\n"))


def print_plan(out: Output, plan: FleetPlan, content: bool) -> None:
    planned = sum(len(g.nodes) for g in plan.groups)
    out.info(
        f"candidate {plan.candidate}: {planned} node(s) planned in {len(plan.groups)}"
        f" group(s), {len(plan.unplanned)} not yet planned, {len(plan.unaffected)} unaffected"
    )
    for g in plan.groups:
        print_group(out, g, content)
    waiting: dict[str, list[str]] = {}
    for n in plan.unplanned:  # one line a reason: a fleet of a thousand is read at a glance
        waiting.setdefault(n.reason, []).append(n.node)
    for reason, these in waiting.items():
        out.warning(f"not yet planned on {len(these)} node(s): {names(tuple(these))} ({reason})")
    if plan.unaffected:
        nodes = tuple(n.node for n in plan.unaffected)
        out.info(f"unaffected: {names(nodes)} ({plan.unaffected[0].reason})")
    for n in plan.problems:
        out.warning(f"{n.node}: {n.reason}")


def junit(plan: FleetPlan, content: bool) -> str:
    """The planned nodes' plans as `disco plan --junit` writes them (a testsuite a node),
    and a testsuite of the nodes not yet planned, each testcase skipped."""
    documents = [plan.plans[node] for g in plan.groups for node in g.nodes]
    top = ET.fromstring(render.junit([d if content else without_content(d) for d in documents]))
    top.set("name", f"disco plan {plan.candidate}")
    if plan.unplanned:
        count = str(len(plan.unplanned))
        suite = ET.SubElement(top, "testsuite", name="not yet planned", tests=count)
        suite.attrib.update(failures="0", errors="0", skipped=count)
        for n in plan.unplanned:
            case = ET.SubElement(suite, "testcase", classname=n.node, name="plan", time="0")
            ET.SubElement(case, "skipped", message=f"not yet planned: {n.reason}")
        top.set("tests", str(int(top.get("tests", "0")) + len(plan.unplanned)))
    ET.indent(top)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(top, "unicode") + "\n"


def write(path: Path, text: str) -> None:
    try:
        path.write_text(text, errors="surrogateescape")
    except OSError as e:
        raise DiscoError(
            f"cannot write {path}: {e.strerror}", "give a FILE in a writable folder"
        ) from None


def run(args: argparse.Namespace, root: Path) -> int:
    out = Output(err=sys.stderr) if not args.json else Output(out=sys.stderr)
    plan = fleet_plan(root, args.name)
    content = not args.no_content
    if args.json:
        print(json.dumps(plan.as_json(content), indent=2, sort_keys=True))
    else:
        print_plan(out, plan, content)
    for path, output in (
        (args.junit, junit),
        (args.markdown, plan_pages.markdown),
        (args.html, plan_pages.html_page),
    ):
        if path is not None:
            write(path, output(plan, content))
            out.info(f"wrote {path}")
    if args.detailed_exitcodes:
        return plan.exit
    return EXIT_FAILED if plan.exit & FAILURES else 0
