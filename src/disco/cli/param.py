"""disco-param: read and write the parameters tree."""

from __future__ import annotations

import argparse
import json
import sys

from disco.cli.common import add_state_dir, execute, parser, subparser
from disco.client.state import State
from disco.errors import DiscoError, UsageError
from disco.tree.names import PATH_MAX, ParamPath, join, split_path
from disco.tree.params import MAP, check_tree, decode, dump_line, parse_assignments

EPILOG = """\
examples:
  disco-param dump
  echo /srv/disco | disco-param set disco/server/uri
  disco-param set disco/client {}
  disco-param get disco/client/cmds/rsync
  disco-param export disco > disco.json && disco-param import disco < disco.json
"""


def build() -> argparse.ArgumentParser:
    p = parser("disco-param", "Read and write disco's parameters tree.", EPILOG)
    add_state_dir(p)
    subs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    s = subparser(
        subs,
        "get",
        "print a value; a map prints {}, a value that is {} prints \\{}",
        "disco-param get disco/server/uri",
    )
    s.add_argument("path")
    s = subparser(
        subs,
        "set",
        "set PATH from stdin (always a value), or to VALUE; VALUE {} makes a map, \\{} is"
        " the value {}; 'set -' reads PATH=VALUE lines",
        "disco-param dump | sed s/old/new/ | disco-param set -",
    )
    s.add_argument("path", metavar="PATH|-")
    s.add_argument("value", nargs="?", metavar="VALUE")
    s = subparser(subs, "keys", "list the keys of a map", "disco-param keys disco/client")
    s.add_argument("path", nargs="?")
    s = subparser(subs, "dump", "print 'path = value' lines, sorted", "disco-param dump disco")
    s.add_argument("path", nargs="?")
    s = subparser(
        subs, "delete", "delete a value or an empty map", "disco-param delete -r old/node"
    )
    s.add_argument("path")
    s.add_argument("-r", "--recursive", action="store_true", help="delete a map and all below it")
    s = subparser(subs, "export", "print a subtree as JSON", "disco-param export disco > d.json")
    s.add_argument("path", nargs="?")
    s = subparser(
        subs,
        "import",
        "replace a subtree (the whole tree without PATH) with JSON from stdin",
        "disco-param import disco < d.json",
    )
    s.add_argument("path", nargs="?")
    return p


def optional(text: str | None) -> ParamPath:
    return split_path(text) if text is not None else ()


def body(args: argparse.Namespace) -> int:
    state = State.locate(args.state_dir)
    store = state.params()
    verb = args.verb
    if verb == "get":
        value = store.get(split_path(args.path))
        # A map prints {}; a value that is {} prints \{} (as in dump): never the same.
        print(MAP if value is None else "\\" + MAP if value == MAP else value)
    elif verb == "set":
        set_verb(state, args.path, args.value)
    elif verb == "keys":
        for key in store.keys(optional(args.path)):
            print(key)
    elif verb == "dump":
        for path, value in store.dump(optional(args.path)):
            print(dump_line(path, value))
    elif verb == "delete":
        store.delete(split_path(args.path), args.recursive)
    elif verb == "export":
        path = optional(args.path)
        print(to_json(store.read(path), join(path)))
    elif verb == "import":
        path, tree = optional(args.path), check_tree(read_json())
        state.create()
        store.replace(path, tree)
    return 0


def set_verb(state: State, target: str, value: str | None) -> None:
    store = state.params()
    if target == "-":
        if value is not None:
            raise UsageError("set -: takes no VALUE", "give PATH=VALUE lines on stdin")
        items = parse_assignments(sys.stdin.buffer.read().decode(errors="surrogateescape"))
        state.create()
        store.set_many(items)
        return
    path = split_path(target)
    if value is None:  # stdin is a value, whatever it holds: a JSON document `{}` too
        stored: str | None = decode(sys.stdin.buffer.read())
    else:  # the argument {} makes a map; \{} is the value {}
        stored = None if value == MAP else MAP if value == "\\" + MAP else value
    state.create()
    store.set(path, stored)


def to_json(value: object, where: str) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).encode().decode()
    except UnicodeEncodeError:
        raise DiscoError(
            f"cannot export '{where or '/'}': a value in it is not UTF-8 text",
            "JSON carries only text; read such values with 'disco-param get'",
        ) from None


def read_json() -> object:
    text = sys.stdin.buffer.read()
    try:
        return json.loads(text)
    except RecursionError:
        raise DiscoError(
            "cannot import: the document is nested too deep for Python's JSON reader",
            f"a parameter path holds at most {PATH_MAX} characters: flatten the document",
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DiscoError(
            f"cannot import: stdin is not JSON ({e})",
            "give a JSON object, e.g. from 'disco-param export'",
        ) from None


def main(argv: list[str] | None = None) -> int:
    p = build()
    return execute(lambda: p.parse_args(argv), body)
