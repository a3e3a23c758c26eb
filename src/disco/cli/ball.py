"""disco-ball: make and inspect modules ("disco balls")."""

from __future__ import annotations

import argparse
from pathlib import Path

from disco.cli.common import Output, execute, parser, subparser
from disco.tree.modules import PARTS, init_module

EPILOG = """\
example:
  disco-ball init /srv/disco/modules/nginx-1.0
"""


def build() -> argparse.ArgumentParser:
    p = parser("disco-ball", 'Make disco modules ("disco balls").', EPILOG)
    subs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    s = subparser(
        subs,
        "init",
        "create a module skeleton at PATH; the module is named after PATH's last component",
        "disco-ball init /srv/disco/modules/nginx-1.0",
    )
    s.add_argument("path", type=Path)
    return p


def body(args: argparse.Namespace) -> int:
    module = init_module(args.path)
    Output().info(f"Created module {module.name} in {module.path}: requires, {', '.join(PARTS)}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = build()
    return execute(lambda: p.parse_args(argv), body)
