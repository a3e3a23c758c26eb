"""disco: the client. `disco dance` fetches, orders and (next) applies a node's modules."""

from __future__ import annotations

import argparse
import socket

from disco.cli.common import Output, add_state_dir, execute, parser, subparser
from disco.fetch import fetch
from disco.lock import hold
from disco.params import check_segment
from disco.state import State, load_settings

EPILOG = """\
examples:
  disco dance
  disco dance --server ./examples/seed --node localhost.localdomain --state-dir /tmp/disco
"""


def build() -> argparse.ArgumentParser:
    p = parser("disco", "Dead Simple COnfiguration management for Linux.", EPILOG)
    add_state_dir(p)
    subs = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = subparser(
        subs,
        "dance",
        "fetch the node's parameters and modules from the server and put them in order",
        "disco dance --server /srv/disco --node web1.example.com",
    )
    s.add_argument("--node", help="the node's name (default: this machine's FQDN)")
    s.add_argument(
        "--server",
        action="append",
        metavar="URI",
        help="server to fetch from, instead of disco/server/uri; repeat for failover",
    )
    return p


def dance(args: argparse.Namespace) -> int:
    state = State.locate(args.state_dir)
    node = check_segment(socket.getfqdn() if args.node is None else args.node, "node name")
    # Settings are read (and checked) before the lock is taken: a bad URI or a missing
    # server setting leaves a machine without state as it was.
    settings = load_settings(state.params(), args.server)
    state.create()
    with hold(state.lock):
        plan = fetch(state, node, settings)
    out = Output()
    for failure in plan.passed_over:
        out.warning(f"{failure.message}; passed over")
    if plan.passed_over:
        out.info(f"Fetched from server {plan.server.uri}")
    out.info(("Ready to dance : " + " ".join(plan.names)).rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = build()
    return execute(lambda: p.parse_args(argv), dance)
