"""What every disco command shares: output lines, the state flag, error handling."""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Protocol

from disco import __version__
from disco.errors import EXIT_FAILED, EXIT_USAGE, DiscoError

DEBUG = "log every command run; tracebacks"
COLOURS = {"info": "32", "warning": "33", "error": "31", "report": "36"}


class Stream(Protocol):
    """Where Output prints: a text file (sys.stdout), or a dance's stdio.Writer."""

    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...
    def isatty(self) -> bool: ...


class Output:
    """Prints `info:`, `warning:`, `error:` lines, coloured only on a terminal."""

    def __init__(self, out: Stream | None = None, err: Stream | None = None) -> None:
        # Looked up now, not at import: a redirected sys.stdout is honoured.
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def line(self, kind: str, text: str, stream: Stream) -> None:
        prefix = f"{kind}:"
        if self.coloured(stream) and not os.environ.get("NO_COLOR"):
            prefix = f"\033[{COLOURS[kind]}m{prefix}\033[0m"
        print(f"{prefix} {text}", file=stream, flush=True)

    def coloured(self, stream: Stream) -> bool:
        return stream.isatty()

    def info(self, text: str) -> None:
        self.line("info", text, self.out)

    def warning(self, text: str) -> None:
        self.line("warning", text, self.out)

    def error(self, text: str) -> None:
        self.line("error", text, self.err)

    def text(self, text: str) -> None:
        """Lines as they are: a content diff."""
        print(text, file=self.out, flush=True)


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one `error:` line and exit status 2."""

    usage_status = EXIT_USAGE
    document: Callable[[str, int], None] | None = None  # `disco dance --json`: says it too

    def error(self, message: str) -> None:  # type: ignore[override]
        text = f"{self.prog}: {message}"
        hint = f"see '{self.prog} --help'"
        if Parser.document is not None:
            Parser.document(f"{text}; {hint}", self.usage_status)
        Output().error(f"{text}; {hint}")
        sys.exit(self.usage_status)


def parser(prog: str, description: str, epilog: str) -> Parser:
    p = Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help=DEBUG)
    return p


def add_state_dir(p: argparse.ArgumentParser, default: object = None) -> None:
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        default=default,
        help="client state directory (default: $DISCO_STATE or /var/disco)",
    )


def subparser(
    subs: argparse._SubParsersAction[Parser],
    name: str,
    summary: str,
    example: str,
    state_dir: bool = True,
) -> Parser:
    p: Parser = subs.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Accepted after the verb too; SUPPRESS keeps a flag given before it.
    if state_dir:
        add_state_dir(p, argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG)
    p.add_argument("--version", action="version", version=f"{p.prog.split()[0]} {__version__}")
    return p


def execute(
    parse: Callable[[], argparse.Namespace], body: Callable[[argparse.Namespace], int]
) -> int:
    """Parse, run, and turn DiscoError into an `error:` line and its exit status."""
    # Values are bytes on disk; print the ones that are not UTF-8 as they are.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")
    args = parse()
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="debug: %(message)s", stream=sys.stderr)
    try:
        return body(args)
    except DiscoError as e:
        if args.debug:
            traceback.print_exc()
        Output().error(str(e))
        return e.status
    except KeyboardInterrupt:
        Output().error("interrupted")
        return 130
    except BrokenPipeError:
        # A reader like `head` went away: not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if args.debug:
            raise
        # The last resort for a system error no check foresaw: still one line.
        name = str(e.filename or "")
        where = f": {name if len(name) < 200 else name[:100] + '...' + name[-60:]}" if name else ""
        hint = "run it as root" if isinstance(e, PermissionError) else "rerun with --debug"
        Output().error(f"{e.strerror or e}{where}; {hint}")
        return EXIT_FAILED
