"""disco-server: serve a disco server directory over rsync+ssh, as its disco user."""

from __future__ import annotations

import argparse
from pathlib import Path

from disco import server
from disco.cli.common import Output, Parser, execute, parser, subparser
from disco.errors import EXIT_FAILED

EPILOG = """\
A server is a directory with parameters/ and modules/. Nodes reach it as
disco@HOST::parameters/NODE/ and disco@HOST::MODULE/ through ssh; each node's key may only
run a read-only rsync daemon that shows it its own parameters and the modules.

examples:
  disco-server init /srv/disco
  disco-server add-node web1.example.com /tmp/web1.pub
  disco-ball init /srv/disco/modules/nginx-1.0 && disco-server sync
  disco-server check
"""


def config_flag(p: Parser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="the rsync daemon config (default: ~/rsyncd.conf); node configs go in "
        "rsyncd.d/ beside it",
    )


def build() -> argparse.ArgumentParser:
    p = parser("disco-server", "Serve a disco server directory over rsync+ssh.", EPILOG)
    subs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    s = subparser(
        subs,
        "init",
        "lay out DIR (parameters/, modules/; what exists is kept) and write the rsync config",
        "disco-server init /srv/disco",
        state_dir=False,  # a server keeps no client state
    )
    s.add_argument("dir", type=Path, metavar="DIR")
    config_flag(s)
    s = subparser(
        subs,
        "sync",
        "rewrite the rsync configs (~/rsyncd.conf, each node's) after modules come or go",
        "disco-server sync  # the DIR of the last init or sync",
        state_dir=False,  # a server keeps no client state
    )
    s.add_argument("dir", type=Path, nargs="?", metavar="DIR")
    config_flag(s)
    s = subparser(
        subs,
        "add-node",
        "let NODE's ssh key fetch, read-only, its own parameters and the modules, nothing else",
        "disco-server add-node web1.example.com /tmp/id_ed25519.pub",
        state_dir=False,  # a server keeps no client state
    )
    s.add_argument("node", metavar="NODE")
    s.add_argument("key", type=Path, metavar="PUBKEY_FILE")
    config_flag(s)
    s.add_argument(
        "--authorized-keys",
        type=Path,
        metavar="PATH",
        help="where the key's line goes (default: ~/.ssh/authorized_keys)",
    )
    s = subparser(
        subs,
        "check",
        "report what is wrong with the server: stale rsync config, missing modules, cycles",
        "disco-server check /srv/disco",
        state_dir=False,  # a server keeps no client state
    )
    s.add_argument("dir", type=Path, nargs="?", metavar="DIR")
    config_flag(s)
    return p


def body(args: argparse.Namespace) -> int:
    out = Output()
    config: Path = args.config or Path.home() / "rsyncd.conf"
    if args.verb in ("init", "sync"):
        written = server.sync(args.dir, config, create=args.verb == "init")
        for path in written:
            parsed = server.read_config(path)
            modules = len(parsed.sections) - 1 if parsed else 0
            node = f" for node {parsed.node}" if parsed and parsed.node else ""
            out.info(f"Wrote {path}{node}: [parameters] and {modules} modules")
    elif args.verb == "add-node":
        keys = args.authorized_keys or Path.home() / ".ssh" / "authorized_keys"
        added = server.add_node(args.node, args.key, config, keys)
        out.info(f"Wrote {added.config}: {args.node} sees parameters/{args.node}/ and the modules")
        out.info(f"{'Replaced' if added.replaced else 'Added'} the key of {args.node} in {keys}")
        if not added.has_parameters:
            out.warning(f"no parameters/{args.node}/ on this server yet: create it")
    else:
        root = server.locate(args.dir, config)
        problems = server.check(root, config)
        for problem in problems:
            out.warning(f"{problem.message}; {problem.hint}")
        if problems:
            return EXIT_FAILED
        out.info(f"server {root} is consistent")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = build()
    return execute(lambda: p.parse_args(argv), body)
