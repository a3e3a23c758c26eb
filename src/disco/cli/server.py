"""disco-server: serve a disco server directory over rsync+ssh, as its disco user."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from disco.cli import fleet_plan
from disco.cli.common import Output, Parser, execute, parser, subparser
from disco.client.timer import seconds
from disco.errors import EXIT_FAILED, DiscoError
from disco.server import candidates, fleet, mirror, server

EPILOG = """\
A server is a directory with parameters/ and modules/. Nodes reach it as
disco@HOST::parameters/NODE/ and disco@HOST::MODULE/ through ssh; each node's key may only
run an rsync daemon that shows it its own parameters and the modules, read only, and takes
its dance reports into reports/NODE/, write only.

examples:
  disco-server init /srv/disco --with-balls
  disco-server add-node web1.example.com /tmp/web1.pub
  disco-ball init /srv/disco/modules/nginx-1.0 && disco-server sync
  disco-server check
  disco-server report --older-than 1h
  disco-server mirror disco@mirror1.example.com
  disco-server propose pr-42 ~/checkouts/pr-42 && disco-server plan pr-42
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
    s.add_argument(
        "--with-balls",
        action="store_true",
        help="add the standard balls (users, groups, packages, ...) to DIR/modules",
    )
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
    s = subparser(
        subs,
        "report",
        "the fleet: each node's last dance (time, mode, exit, changes, failures), silent nodes",
        "disco-server report --older-than 2h --html /var/www/fleet.html",
    )
    s.add_argument("dir", type=Path, nargs="?", metavar="DIR")
    config_flag(s)
    s.add_argument(
        "--older-than",
        default="2h",
        metavar="SPAN",
        help="a node whose last dance is older is silent (default: 2h)",
    )
    how = s.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true", help="print the fleet as JSON")
    how.add_argument(
        "--html", type=Path, metavar="FILE", help="write a page of nodes, each linking its dance"
    )
    m = subparser(
        subs,
        "mirror",
        "push parameters/ and modules/ to mirror servers (rsync over ssh), then sync them",
        "disco-server mirror disco@mirror1.example.com disco@mirror2.example.com",
    )
    m.add_argument("hosts", nargs="+", metavar="HOST", help="[user@]host of a mirror")
    m.add_argument(
        "--dir", type=Path, metavar="DIR", help="the server tree (default: the last init)"
    )
    m.add_argument(
        "--remote-dir", metavar="RDIR", help="where the tree is on the mirrors (default: DIR)"
    )
    m.add_argument("--rsh", default="ssh", metavar="CMD", help="the ssh command (default: ssh)")
    m.add_argument(
        "--no-sync",
        action="store_true",
        help="do not run 'disco-server sync' on the mirrors afterwards",
    )
    config_flag(m)
    s = subparser(
        subs,
        "propose",
        "publish DIR (a checkout of a change) as candidate NAME: each node it affects plans it",
        "disco-server propose pr-42 ~/checkouts/pr-42",
        state_dir=False,  # a server keeps no client state
    )
    s.add_argument("name", metavar="NAME", help="the candidate's name, e.g. pr-42")
    s.add_argument("source", type=Path, metavar="DIR", help="a server tree: parameters/, modules/")
    s.add_argument(
        "--replace", action="store_true", help="replace candidate NAME (its plans are dropped)"
    )
    config_flag(s)
    s = subparser(
        subs,
        "withdraw",
        "remove candidate NAME and its plans",
        "disco-server withdraw pr-42",
        state_dir=False,  # a server keeps no client state
    )
    s.add_argument("name", metavar="NAME")
    config_flag(s)
    fleet_plan.add_parser(subs, config_flag)
    return p


def report(args: argparse.Namespace, config: Path) -> int:
    """Print (or write) the fleet; exit 1 if a node is silent, damaged or failed."""
    out = Output()
    silent_after = seconds(args.older_than, "--older-than")
    root = server.locate(args.dir, config)
    nodes = fleet.fleet(root, silent_after)
    if args.json:
        print(json.dumps([n.as_json() for n in nodes], indent=2, sort_keys=True))
    elif args.html is not None:
        pages = args.html.parent / f"{args.html.stem}-nodes"
        try:
            pages.mkdir(exist_ok=True)
            for node, page in fleet.node_pages(root, nodes).items():
                (pages / f"{node}.html").write_text(page, errors="surrogateescape")
            args.html.write_text(fleet.fleet_html(nodes, pages.name), errors="surrogateescape")
        except OSError as e:
            raise DiscoError(
                f"cannot write {e.filename}: {e.strerror}", "give a FILE in a writable folder"
            ) from None
        out.info(f"wrote the fleet of {len(nodes)} nodes to {args.html}, their dances in {pages}")
    else:
        for n in nodes:
            if n.age is not None:
                text = (
                    f"{n.node}: {n.started} ({fleet.human(n.age)} ago) {n.mode}, exit {n.exit},"
                    f" {n.changes} changes, {n.failures} failures"
                )
                out.line("report", text, sys.stdout)
            if n.problem:
                out.warning(f"{n.node}: {n.problem}")
        if not nodes:
            out.info(f"no nodes on server {root} yet")
    return EXIT_FAILED if any(n.problem or n.failures for n in nodes) else 0


def candidate(args: argparse.Namespace, root: Path) -> int:
    """propose or withdraw a candidate tree."""
    out = Output()
    if args.verb == "withdraw":
        candidates.withdraw(root, args.name)
        out.info(f"Withdrew candidate {args.name} and its plans")
        return 0
    done = candidates.propose(root, args.name, args.source, args.replace)
    for problem in done.problems:
        out.warning(f"candidate {args.name}: {problem.message}; {problem.hint}")
    what = "Replaced" if done.replaced else "Proposed"
    out.info(f"{what} candidate {args.name}: {done.path}, a copy of {args.source}")
    reached = candidates.reach(root, args.name)
    affected = [r.node for r in reached if r.affects]
    untouched = [r.node for r in reached if not r.affects]
    out.info(f"it affects {len(affected)} node(s): {' '.join(affected) or '-'}")
    if untouched:
        out.info(f"unaffected: {' '.join(untouched)}")
    out.info(f"each plans it after its next dance; see 'disco-server plan {args.name}'")
    return 0


def body(args: argparse.Namespace) -> int:
    out = Output()
    config: Path = args.config or Path.home() / "rsyncd.conf"
    if args.verb == "report":
        return report(args, config)
    if args.verb == "plan":
        return fleet_plan.run(args, server.locate(None, config))
    if args.verb in ("propose", "withdraw"):
        return candidate(args, server.locate(None, config))
    if args.verb == "mirror":
        root = server.locate(args.dir, config)
        done = mirror.mirror(root, args.hosts, args.rsh, args.remote_dir, not args.no_sync)
        for m in done:
            if m.problem:
                hint = mirror.problem_hint(args.remote_dir or str(root))
                out.error(f"mirror {m.host}: {m.problem}; {hint}")
            else:
                out.info(f"Mirrored {root} to {m.host}:{args.remote_dir or root}")
        return EXIT_FAILED if any(m.problem for m in done) else 0
    if args.verb in ("init", "sync"):
        if getattr(args, "with_balls", False):
            server.sync(args.dir, config, create=True)  # lays DIR out first
            balls = server.add_balls(server.locate(args.dir, config))
            out.info(f"Added balls to {args.dir}/modules: {' '.join(balls) or 'none (all there)'}")
        written = server.sync(args.dir, config, create=args.verb == "init")
        for path in written:
            parsed = server.read_config(path)
            served = [n for n in parsed.sections if n not in server.RESERVED] if parsed else []
            node = f" for node {parsed.node}" if parsed and parsed.node else ""
            areas = "[parameters], [reports], [candidates], [plans]" if node else "[parameters]"
            out.info(f"Wrote {path}{node}: {areas} and {len(served)} modules")
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
