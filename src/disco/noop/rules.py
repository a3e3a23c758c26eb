"""What an intercepted command does with its arguments (DESIGN §7): the rules table.

Each rule says, for a command and a pattern of its arguments, whether that invocation
is a question (runs for real), a file-only effect (runs for real, in the overlay in
NOOP), a question about the running host (asked outside the sandbox), or an outside
effect (printed as "Would execute" and not run). The table ships with disco
(data/noop-rules) and is extended by ROOT/etc/disco/noop.d/. It is compiled once per
dance into a bash `case` that the interceptor in the view sources; docs/noop-rules.md
describes the format.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from disco.errors import DiscoError

SEP = "\x1f"  # joins a command's arguments for the compiled patterns: never in an argument
_WORD = re.compile(r"^[A-Za-z0-9_.,:/=+%@!^*?()|\[\]-]+$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


class Kind(enum.Enum):
    QUESTION = "question"
    FILES = "files"
    HOST = "host"
    FETCH = "fetch"  # a package install: fetched on the host, run in the sandbox (§17)
    OUTSIDE = "outside"


@dataclass(frozen=True)
class Rule:
    command: str
    kind: Kind
    words: tuple[str, ...]  # one glob per argument; "..." any arguments, "-..." any options
    status: int = 0  # HOST: the answer of a root that runs nothing
    where: str = ""  # file:line, for errors

    @property
    def catches_all(self) -> bool:
        return self.words == ("...",)


def parse(text: str, where: str) -> list[Rule]:
    """The rules of one file; `where` names it in errors."""
    rules: list[Rule] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split() if not line.lstrip().startswith("#") else []
        if not fields:
            continue
        at = f"{where}:{number}"
        if len(fields) < 2:
            raise DiscoError(
                f"{at}: a rule needs a command and a kind", "write e.g. 'service outside ...'"
            )
        command, kind_word, words = fields[0], fields[1], tuple(fields[2:])
        if not _NAME.match(command):
            raise DiscoError(f"{at}: '{command}' is not a command name", "give its name alone")
        kind, _, status = kind_word.partition("=")
        if kind not in {k.value for k in Kind} or (kind == "host") != bool(status.isdigit()):
            raise DiscoError(
                f"{at}: unknown kind '{kind_word}'",
                "use question, files, host=STATUS (e.g. host=3), fetch or outside",
            )
        for word in words:
            if not _WORD.match(word) or not _balanced(word):
                raise DiscoError(
                    f"{at}: cannot use '{word}' in a pattern",
                    "use globs of letters, digits and _.,:/=+%@-, with balanced @(a|b)",
                )
        rules.append(Rule(command, Kind(kind), words, int(status or 0), at))
    return rules


def _balanced(word: str) -> bool:
    """Parentheses open an extglob (@( ?( *( +( !() and close: else bash cannot parse it."""
    depth = 0
    for i, c in enumerate(word):
        if c == "(" and (i == 0 or word[i - 1] not in "@?*+!"):
            return False
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            return False
    return depth == 0


def parse_names(text: str, where: str) -> list[Rule]:
    """noop.d/*.list: one command name per line, every invocation intercepted."""
    rules: list[Rule] = []
    for number, line in enumerate(text.splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if not _NAME.match(name):
            raise DiscoError(
                f"{where}:{number}: '{name}' is not a command name", "give one name per line"
            )
        rules.append(Rule(name, Kind.OUTSIDE, ("...",), 0, f"{where}:{number}"))
    return rules


def shipped() -> list[Rule]:
    text = resources.files("disco.noop").joinpath("data/noop-rules").read_text()
    return parse(text, "disco's noop-rules")


def load_rules(etc: Path, packages: str = "fetch") -> tuple[Rule, ...]:
    """etc/noop.d/*.rules and *.list in name order, then disco's own table; with
    `packages` = "intercept" (disco/client/noop/packages) a package install is an
    outside effect, as before DESIGN §17."""
    local: list[Rule] = []
    directory = etc / "noop.d"
    files = sorted(directory.glob("*.rules")) + sorted(directory.glob("*.list"))
    for path in sorted(files, key=lambda p: p.name):
        text = path.read_text(errors="replace")
        local += (parse_names if path.suffix == ".list" else parse)(text, str(path))
    rules = (*local, *shipped())
    if packages == "intercept":
        rules = tuple(
            Rule(r.command, Kind.OUTSIDE, r.words, 0, r.where) if r.kind is Kind.FETCH else r
            for r in rules
        )
    return rules


def intercepted(rules: tuple[Rule, ...]) -> tuple[str, ...]:
    """The commands that need an interceptor: all but those whose rules run every
    invocation for real (update-rc.d: files only) up to a rule that catches all."""
    by_command: dict[str, list[Rule]] = {}
    for rule in rules:
        by_command.setdefault(rule.command, []).append(rule)
    names = []
    for command, its in by_command.items():
        for rule in its:
            if rule.kind not in (Kind.QUESTION, Kind.FILES):
                names.append(command)
                break
            if rule.catches_all:
                break
        else:  # no rule catches all: the rest is intercepted
            names.append(command)
    return tuple(names)


def _glob(word: str) -> str:
    """One argument's glob, confined to that argument: * and ? never cross a SEP."""
    out, i = [], 0
    while i < len(word):
        c = word[i]
        nxt = word[i + 1] if i + 1 < len(word) else ""
        if c == "[":
            end = word.find("]", i + 2)
            end = len(word) - 1 if end < 0 else end
            out.append(word[i : end + 1])
            i = end + 1
            continue
        if c in "*?" and nxt != "(":
            out.append(f"*([!{SEP}])" if c == "*" else f"[!{SEP}]")
        else:
            out.append(c)
        i += 1
    return "".join(out)


def pattern(words: tuple[str, ...]) -> str:
    """A rule's words as one bash extglob over SEP + arg1 + SEP + arg2 ..."""
    if not words:
        return '""'
    parts = []
    for word in words:
        if word == "...":
            parts.append(f"?({SEP}*)")
        elif word == "-...":
            parts.append(f"*({SEP}-*([!{SEP}]))")
        else:
            parts.append(SEP + _glob(word))
    return "".join(parts)


def compile_rules(rules: tuple[Rule, ...], real: dict[str, str]) -> str:
    """The bash that the interceptor sources. disco_kind sets `kind` (question, files,
    host=N, outside; run for a name the table lacks) for a command and its SEP-joined
    arguments; disco_real sets `real` to the path of the real binary, or empty."""
    by_command: dict[str, list[Rule]] = {}
    for rule in rules:
        by_command.setdefault(rule.command, []).append(rule)
    lines = ["# Compiled by disco from its noop-rules and noop.d (docs/noop-rules.md)."]
    lines.append("disco_kind() {")
    lines.append("  case $1 in")
    for command, its in by_command.items():
        lines.append(f"  {command})")
        lines.append("    case $2 in")
        for rule in its:
            kind = f"host={rule.status}" if rule.kind is Kind.HOST else rule.kind.value
            lines.append(f"    {pattern(rule.words)}) kind={kind} ;;  # {rule.where}")
        lines.append("    *) kind=outside ;;")
        lines.append("    esac ;;")
    lines.append("  *) kind=run ;;  # a name the table does not list, bound with one it does")
    lines.append("  esac")
    lines.append("}")
    lines.append("disco_real() {")
    lines.append("  case $1 in")
    for name, path in sorted(real.items()):
        lines.append(f"  {name}) real={path} ;;")
    lines.append("  *) real= ;;")
    lines.append("  esac")
    lines.append("}")
    return "\n".join(lines) + "\n"
