"""The seed's NOOP sandbox, kept between commands (shell.py): disco-fs-mount,
disco-fs-init, disco-sh-shell, disco-sh-exec, disco-fs-diff and disco-fs-unmount."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from disco.cli.common import Output, Parser, add_state_dir, execute, parser
from disco.client.state import State, default_node
from disco.dance import shell
from disco.errors import DiscoError, UsageError
from disco.live import history
from disco.tree.names import check_node

NOTE = """\
NOOP is implied: writes land in the session's layer, never in the root, and commands
with outside effects (service, kill, apt-get, ...) print 'warning: Would execute'.
"""


def command(
    prog: str,
    summary: str,
    examples: list[str],
    body: Callable[[argparse.Namespace], int],
    argv: list[str] | None,
    arguments: Callable[[Parser], None] = lambda p: None,
) -> int:
    epilog = NOTE + "\nexample:\n" + "".join(f"  {line}\n" for line in examples)
    p = parser(prog, summary, epilog)
    add_state_dir(p)
    arguments(p)

    def as_root(args: argparse.Namespace) -> int:
        if os.geteuid() != 0:
            raise DiscoError(f"{prog} needs root", "run it as root, e.g. with sudo")
        return body(args)

    return execute(lambda: p.parse_args(argv), as_root)


def add_node(p: Parser, default: str) -> None:
    p.add_argument("--node", help=f"the node's name, shown as the hostname ({default})")


def node_of(args: argparse.Namespace) -> str:
    return check_node(default_node() if args.node is None else args.node)


def last_node(state: State) -> str | None:
    """The node of the last dance on this state: the one whose parameters and modules
    the state holds. None if there was none (or its history cannot be read)."""
    with contextlib.suppress(DiscoError):
        for kept in reversed(history.listing(state.txn)):
            if kept.node:
                return kept.node
    return None


def shows(session: shell.Session, names: list[str]) -> str:
    defaults = f" over the defaults of {' '.join(names)}" if names else ""
    return f"/var/disco shows the parameters of node {session.node}{defaults}"


def fs_mount(argv: list[str] | None = None) -> int:
    def arguments(p: Parser) -> None:
        p.add_argument("--root", default="/", metavar="DIR", help="the root (default: /)")
        add_node(p, "default: the last dance's, else what 'hostname -f' prints")

    def body(args: argparse.Namespace) -> int:
        root = Path(args.root).absolute()
        if not root.is_dir():
            raise UsageError(f"--root {args.root} is not a directory", "give the root to try on")
        state = State.locate(args.state_dir)
        last = last_node(state) if args.node is None else None
        node = check_node(last) if last else node_of(args)
        session, names = shell.mount(state, root, node)
        out = Output()
        out.info(f"NOOP session mounted at {session.path}: root {session.root}")
        if last:
            out.info(f"node {node}: the last dance's (--node NAME for another)")
        out.info(shows(session, names))
        return 0

    summary = (
        "Start a NOOP sandbox session over the root: one layer that disco-sh-shell and\n"
        "disco-sh-exec write into, kept between commands until disco-fs-unmount."
    )
    examples = ["NOOP=true disco-fs-mount", "disco-fs-mount --root /srv/image --node web1"]
    return command("disco-fs-mount", summary, examples, body, argv, arguments)


def fs_init(argv: list[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        with shell.opened(State.locate(args.state_dir)) as session:
            node = None if args.node is None else node_of(args)
            Output().info(shows(*shell.init(session, node)))
        return 0

    summary = (
        "Rebuild what the session's sandbox shows at /var/disco: the node's parameters\n"
        "over the defaults of the fetched modules, as a dance shows them."
    )
    examples = ["NOOP=true disco-fs-init", "disco-fs-init --node web1.example.com"]
    return command(
        "disco-fs-init", summary, examples, body, argv, lambda p: add_node(p, "default: kept")
    )


def sh_shell(argv: list[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        with shell.opened(State.locate(args.state_dir)) as session:
            return shell.run_in(session, shell.shell_argv(sys.stdin.isatty()))

    summary = (
        "A bash in the session's NOOP sandbox, interactive on a terminal, else reading\n"
        "commands from stdin. Exits with the shell's status."
    )
    examples = ["NOOP=true disco-sh-shell", "echo 'rm -f /etc/passwd' | disco-sh-shell"]
    return command("disco-sh-shell", summary, examples, body, argv)


def sh_exec(argv: list[str] | None = None) -> int:
    def arguments(p: Parser) -> None:
        p.usage = "%(prog)s [options] SCRIPT [ARGS ...]"
        p.add_argument("script", nargs="?", metavar="SCRIPT", help="a script on this machine")
        p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments")

    def body(args: argparse.Namespace) -> int:
        if args.script is None:
            raise UsageError("disco-sh-exec: give the SCRIPT to run", "see 'disco-sh-exec --help'")
        with shell.opened(State.locate(args.state_dir)) as session:
            return shell.run_script(session, Path(args.script), args.args)

    summary = (
        "Run a script of this machine in the session's NOOP sandbox, where it shows\n"
        "read-only at /var/disco/exec/NAME. Exits with the script's status."
    )
    examples = ["disco-sh-exec ./setup.sh --verbose"]
    return command("disco-sh-exec", summary, examples, body, argv, arguments)


def fs_diff(argv: list[str] | None = None) -> int:
    def arguments(p: Parser) -> None:
        p.add_argument(
            "--diff", choices=("normal", "unified"), default="normal", help="content diff format"
        )

    def body(args: argparse.Namespace) -> int:
        out = Output()
        for line, diff in shell.report(shell.load(State.locate(args.state_dir)), args.diff):
            out.info(line)
            if diff:
                out.text(diff)
        return 0

    summary = "Print what the session changed in its root, as a dance reports a step."
    examples = ["NOOP=true disco-fs-diff", "disco-fs-diff --diff unified"]
    return command("disco-fs-diff", summary, examples, body, argv, arguments)


def fs_unmount(argv: list[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        path = shell.unmount(State.locate(args.state_dir))
        Output().info(f"NOOP session at {path} discarded")
        return 0

    summary = "Discard the NOOP session: everything its shells and scripts wrote."
    return command("disco-fs-unmount", summary, ["disco-fs-unmount"], body, argv)
