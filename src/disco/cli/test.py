"""disco test (a ball's scenarios on scratch roots) and disco lint (a server tree, no root)."""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from disco.balltest import lint, results
from disco.balltest.results import Check, Status
from disco.balltest.roots import source
from disco.balltest.scenarios import find_balls
from disco.balltest.suite import test_balls
from disco.cli.common import Output, Parser, subparser
from disco.errors import EXIT_FAILED, DiscoError, UsageError


def add_parsers(subs: argparse._SubParsersAction[Parser]) -> None:
    t = subparser(
        subs,
        "test",
        "run balls' test scenarios on scratch roots: NOOP, live, NOOP = live, idempotence,"
        " verify, rollback",
        "cd src/disco/balls && disco test users files --junit report.xml",
        state_dir=False,
    )
    t.add_argument(
        "balls",
        nargs="*",
        metavar="BALL",
        help="a ball's directory, or its name in the current directory"
        " (default: the balls here that have tests/)",
    )
    where = t.add_mutually_exclusive_group()
    where.add_argument(
        "--root",
        metavar="DIR",
        help="scratch roots copy-on-write over DIR (default: over this machine's root)",
    )
    where.add_argument(
        "--image",
        metavar="TARBALL",
        help="scratch roots over this tarball of a root, unpacked"
        " ('docker export', 'mmdebstrap SUITE FILE.tar')",
    )
    add_outputs(t)
    t.add_argument(
        "--keep", action="store_true", help="leave the scratch roots mounted, and say where"
    )
    n = subparser(
        subs,
        "lint",
        "check a server tree without root: shellcheck, parameters read, requires, names,"
        " files/ entries",
        "disco lint /srv/disco --junit lint.xml",
        state_dir=False,
    )
    n.add_argument(
        "dir",
        nargs="?",
        default=".",
        metavar="DIR",
        help="the server tree: parameters/ and modules/ (default: .)",
    )
    add_outputs(n)


def add_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--junit", metavar="FILE", help="write the results as JUnit XML to FILE")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the results as one JSON document; other lines to stderr",
    )


def terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the scratch roots are unmounted and removed on the way out


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, terminated)
    if args.junit and not Path(args.junit).absolute().parent.is_dir():
        raise UsageError(
            f"--junit {args.junit}: no directory {Path(args.junit).parent}",
            "write the report into a directory that exists",
        )
    out = Output(err=None) if not args.json else Output(out=Output().err)
    if args.command == "lint":
        found = lint.lint(Path(args.dir))
        for check in found.checks:
            show(out, check)
        extra: dict[str, Any] = {"tree": str(Path(args.dir).absolute()), "notes": found.notes}
        for note in found.notes:
            out.warning(note)
        return finish(args, out, found.checks, extra, {"tree": extra["tree"]}, "lint")
    where = source(args.root, args.image)
    balls = find_balls(args.balls, Path.cwd())
    outcome = test_balls(balls, where, args.keep, lambda check: show(out, check))
    rate = outcome.scenarios / outcome.seconds if outcome.seconds else 0.0
    out.info(
        f"{outcome.scenarios} scenario(s) on {where.describe()} in"
        f" {outcome.seconds:.1f} s ({rate:.2f} scenarios/s)"
    )
    for name, root in outcome.kept:
        out.info(f"kept: {name}: scratch root {root}")
    if outcome.base is not None:
        out.info(
            f"kept scratch roots under {outcome.base}: remove them with"
            f" 'umount -R {outcome.base} && rmdir {outcome.base}'"
        )
    extra = {
        "root": where.describe(),
        "scenarios": outcome.scenarios,
        "seconds": round(outcome.seconds, 3),
        "kept": {name: str(root) for name, root in outcome.kept},
    }
    return finish(args, out, outcome.checks, extra, {"root": where.describe()}, "test")


def show(out: Output, check: Check) -> None:
    where = f"{check.suite}/{check.group}: {check.name}"
    if check.status is Status.FAILED:
        out.line("error", f"{where}: FAILED: {check.message}", out.out)
        for line in check.details.splitlines():
            out.text(f"    {line}")
    elif check.status is Status.SKIPPED:
        out.info(f"{where}: skipped: {check.message}")
    else:
        out.info(f"{where}: passed: {check.message}")
        for line in check.details.splitlines():  # volatile paths, what verify said
            out.text(f"    {line}")


def finish(
    args: argparse.Namespace,
    out: Output,
    checks: Sequence[Check],
    extra: dict[str, Any],
    properties: dict[str, str],
    kind: str,
) -> int:
    n = results.counts(checks)
    out.info(
        f"{len(checks)} check(s): {n['passed']} passed, {n['failed']} failed,"
        f" {n['skipped']} skipped"
    )
    if args.junit:
        try:
            Path(args.junit).write_bytes(results.junit(checks, properties))
        except OSError as e:
            raise DiscoError(
                f"--junit {args.junit}: cannot write it: {e.strerror}",
                "give a file in a directory that exists",
            ) from None
    if args.json:
        print(json.dumps(results.document(kind, checks, extra), indent=2, sort_keys=True))
    return 0 if results.passed(checks) else EXIT_FAILED
