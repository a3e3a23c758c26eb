"""disco report: what each step of the last dance cost (DESIGN §9)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from disco.cli.common import Output, Parser, subparser
from disco.client.state import State
from disco.errors import DiscoError
from disco.report.metrics import DanceReport, load_last, report_json, report_lines


def add_parser(subs: argparse._SubParsersAction[Parser]) -> Parser:
    s = subparser(
        subs,
        "report",
        "print the time, memory, I/O and exit status of every step of the last dance",
        "disco report testmodule-1.0",
    )
    s.add_argument("module", nargs="?", metavar="MODULE", help="only this module's steps")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true", help="print the report as JSON")
    how.add_argument(
        "--html",
        metavar="FILE",
        type=Path,
        help="write a page with a timeline of the steps to FILE ('-': stdout)",
    )
    return s


def run(args: argparse.Namespace) -> int:
    report = load_last(State.locate(args.state_dir).reports)
    if args.json:
        print(report_json(report, args.module))
    elif args.html is not None and str(args.html) == "-":
        sys.stdout.write(page_of(report, args.module))
    elif args.html is not None:
        page = page_of(report, args.module)
        try:
            args.html.write_text(page, encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            raise DiscoError(
                f"cannot write {args.html}: {e.strerror}", "give a FILE in a writable folder"
            ) from None
        Output(sys.stdout, sys.stderr).info(
            f"wrote the report of the dance started {report.started} to {args.html}"
        )
    else:
        out = Output(sys.stdout, sys.stderr)
        lines = report_lines(report, args.module)
        if not lines:
            out.info(f"the dance started {report.started} recorded no steps")
        for text in lines:
            out.line("report", text, sys.stdout)
    return 0


def page_of(report: DanceReport, module: str | None) -> str:
    # Imported here: html's entity tables cost every dance's memory half a megabyte.
    from disco.report.page import report_html

    return report_html(report, module)
