"""What each step of a dance cost, and the last 50 dances' reports on disk (DESIGN §9).

A `Meter` collects one `Record` per step (or per template / script inside a step) while
a dance runs; the dance wraps them with its change records in a `DanceReport`, which
`save` writes as JSON and `disco report` reads back with `load_last`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disco.engine.sandbox import Usage
from disco.errors import DiscoError
from disco.files import writing_atomic

FORMAT = 1  # bumped when a report's JSON changes incompatibly
DETAILED = {0: "no changes", 1: "could not run", 2: "changes", 4: "failures",
            6: "changes and failures"}  # fmt: skip
KEEP = 50  # history files kept
INTERNAL = "_internal"  # the module name of disco's own steps
USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))


@dataclass(frozen=True)
class Record:
    module: str  # a module name, or "_internal"
    step: str  # "fetch_params", "fetch", "template", "exec", "diff", "commit", ...
    item: str | None  # a template's path under templates/ or a script's name; None: whole step
    wall: float  # seconds
    usage: Usage
    exit: int  # the step's exit status (0 ok)
    start: float = 0.0  # seconds from the start of the dance's meter to the step's start


@dataclass(frozen=True)
class DanceReport:
    started: str  # ISO 8601 UTC, see utc_now()
    node: str
    mode: str  # "noop" | "live"
    root: str  # target root
    exit: int  # the dance's exit status
    records: tuple[Record, ...]
    changes: tuple[dict[str, str], ...]  # {"module", "step", "path", "kind", "header", "diff"}
    would_execute: tuple[dict[str, str], ...] = ()  # {"module", "command"} NOOP intercepted
    detailed_exitcodes: bool = False  # `exit` in Puppet's meaning (2: changes, 4: failures)

    def failed(self) -> bool:
        """Whether its exit status says the dance failed (2 alone means changes)."""
        return self.exit not in ((0, 2) if self.detailed_exitcodes else (0,))

    def exit_meaning(self) -> str:
        """What its exit status says, in words."""
        if self.exit > 128:
            return "interrupted"
        if self.detailed_exitcodes:
            return DETAILED.get(self.exit, "failed")
        return {0: "success", 1: "failures"}.get(self.exit, "failed")


@dataclass
class Probe:
    """Handed to a measured block: set `exit` to record the step's exit status."""

    exit: int = 0


@dataclass
class Meter:
    """Collects the Records of one dance, in the order the steps ran."""

    records: list[Record] = field(default_factory=list)
    origin: float = field(default_factory=time.perf_counter)  # a record's start counts from here

    @contextlib.contextmanager
    def measure(self, module: str, step: str, item: str | None = None) -> Iterator[Probe]:
        """Time the block: wall clock, and disco's own usage plus that of children reaped
        inside it. An exception records exit 1 (or the probe's status) and goes on."""
        probe = Probe()
        before = _rusage()
        start = time.perf_counter()
        try:
            yield probe
        except BaseException:
            probe.exit = probe.exit or 1
            raise
        finally:
            wall = time.perf_counter() - start
            usage = _delta(before, _rusage())
            offset = start - self.origin
            self.records.append(Record(module, step, item, wall, usage, probe.exit, offset))

    def add(self, record: Record) -> None:
        """A record measured elsewhere, e.g. from a sandboxed step's own wait4 usage. One
        without a start is taken as added when its step ended: it started `wall` ago."""
        if not record.start:
            offset = max(0.0, time.perf_counter() - record.wall - self.origin)
            record = dataclasses.replace(record, start=offset)
        self.records.append(record)

    def now(self) -> float:
        """A start for a Record measured elsewhere: seconds since this meter began."""
        return time.perf_counter() - self.origin


def _rusage() -> tuple[resource.struct_rusage, resource.struct_rusage]:
    return resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)


# A struct_rusage is a sequence in getrusage(2)'s order: every record reads two, by index.
_ORDER = ("utime stime maxrss ixrss idrss isrss minflt majflt nswap inblock oublock msgsnd"
          " msgrcv nsignals nvcsw nivcsw").split()  # fmt: skip
_INDEX = tuple(_ORDER.index(name) for name in USAGE_FIELDS)
_MAXRSS = USAGE_FIELDS.index("maxrss")


def _delta(before: tuple[Any, Any], after: tuple[Any, Any]) -> Usage:
    """disco's own usage plus its reaped children's, between two _rusage() readings."""
    (own0, kids0), (own1, kids1) = before, after
    values = [own1[i] - own0[i] + kids1[i] - kids0[i] for i in _INDEX]
    # maxrss is a high-water mark, not a counter: disco's own, or that of a larger child
    # reaped inside the block (the children's mark only moves when one was).
    i = _INDEX[_MAXRSS]
    values[_MAXRSS] = max(own1[i], kids1[i] if kids1[i] > kids0[i] else 0)
    return Usage(*values)


# -- storage ---------------------------------------------------------------------------------


def save(reports_dir: Path, report: DanceReport) -> Path:
    """Write history/<started>-<pid>.json and make last.json the same file; keep the
    newest KEEP history files. Returns the path of last.json.

    Written a record at a time: the report of a long dance is the largest thing disco
    holds, and a whole JSON text of it (and its dicts) would be the dance's peak memory."""
    history = reports_dir / "history"
    history.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = report.started.replace(os.sep, "_")
    path = history / f"{name}-{os.getpid()}.json"
    with writing_atomic(path) as f:
        _write_json(lambda text: f.write(text.encode("ascii")), report)  # json escapes all else
    last = reports_dir / "last.json"
    link = reports_dir / f".~last.json.{os.getpid()}"
    link.unlink(missing_ok=True)
    os.link(path, link)  # the history file's, under its second name, in one rename
    os.replace(link, last)
    kept = sorted(p for p in history.glob("*.json") if not p.name.startswith("."))
    for old in kept[:-KEEP]:
        old.unlink()
    return last


def _write_json(write: Callable[[str], object], report: DanceReport) -> None:
    """json.dumps(to_data(report), sort_keys=True, separators=(",", ":")), written as it
    is made."""

    def dumps(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    data = to_data(report, lazy=True)
    write("{")
    for i, key in enumerate(sorted(data)):
        write(("," if i else "") + dumps(key) + ":")
        value = data[key]
        if isinstance(value, Iterator):
            write("[")
            for j, item in enumerate(value):
                write(("," if j else "") + dumps(item))
            write("]")
        else:
            write(dumps(value))
    write("}\n")


_REDO = "run 'disco dance' to write a new one"


def load_last(reports_dir: Path) -> DanceReport:
    path = reports_dir / "last.json"
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise DiscoError(
            f"no report yet: {path} does not exist", "run 'disco dance' first"
        ) from None
    except PermissionError:
        raise DiscoError(
            f"cannot read the last report {path}: permission denied",
            "run it as root: the state directory is root's (a dance wrote it as root)",
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DiscoError(f"cannot read the last report {path}: {e}", _REDO) from None
    try:
        return from_data(json.loads(text))
    except (ValueError, TypeError, KeyError) as e:
        raise DiscoError(f"the last report {path} is damaged ({e!r})", _REDO) from None


def to_data(report: DanceReport, lazy: bool = False) -> dict[str, Any]:
    """A report as plain JSON data: what dataclasses.asdict gives, without its deep copy
    of every value (62 ms against 5 for the report of a 200-module dance). `lazy`: its
    lists as iterators, each item made as it is asked for."""
    data = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    lists: dict[str, Iterator[dict[str, Any]]] = {
        "records": (_record_data(r) for r in report.records),
        "changes": (dict(c) for c in report.changes),
        "would_execute": (dict(c) for c in report.would_execute),
    }
    for key, items in lists.items():
        data[key] = items if lazy else list(items)
    return {"format": FORMAT, **data}


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(Record))


def _record_data(record: Record) -> dict[str, Any]:
    data = {name: getattr(record, name) for name in _RECORD_FIELDS}
    data["usage"] = {name: getattr(record.usage, name) for name in USAGE_FIELDS}
    return data


def from_data(data: Any) -> DanceReport:
    """The inverse of to_data; TypeError, ValueError or KeyError if `data` is not one."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a disco report of format {FORMAT}")
    kinds = {"started": str, "node": str, "mode": str, "root": str, "exit": int}
    head = {k: _typed(data[k], kind) for k, kind in kinds.items()}
    records = tuple(_record(r) for r in _typed(data["records"], list))
    changes = tuple(_change(c) for c in _typed(data["changes"], list))
    would = tuple(_change(c) for c in _typed(data.get("would_execute", []), list))
    detailed = _typed(data.get("detailed_exitcodes", False), bool)  # none before issue 22
    return DanceReport(**head, records=records, changes=changes, would_execute=would,
                       detailed_exitcodes=detailed)  # fmt: skip


def _record(data: Any) -> Record:
    item = _typed(data, dict)["item"]
    usage = _typed(data["usage"], dict)
    numbers = {k: _typed(usage[k], float if k in ("utime", "stime") else int) for k in USAGE_FIELDS}
    return Record(
        _typed(data["module"], str),
        _typed(data["step"], str),
        None if item is None else _typed(item, str),
        _typed(data["wall"], float),
        Usage(**numbers),
        _typed(data["exit"], int),
        _typed(data.get("start", 0.0), float),  # reports before issue 11 have none
    )


def _change(data: Any) -> dict[str, str]:
    return {_typed(k, str): _typed(v, str) for k, v in _typed(data, dict).items()}


def _typed(value: Any, kind: type) -> Any:
    """`value` if it is a `kind` (an int will do for a float; a bool is never a number)."""
    ok = isinstance(value, (int, float) if kind is float else kind)
    if not ok or (kind in (int, float) and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, found {value!r}")
    return float(value) if kind is float else value


# -- rendering -------------------------------------------------------------------------------


def select(report: DanceReport, module: str | None) -> DanceReport:
    """Only `module`'s records and changes; DiscoError naming the known modules if absent."""
    if module is None:
        return report
    known = sorted({r.module for r in report.records})
    if module not in known:
        raise DiscoError(
            f"no module '{module}' in the last report (dance started {report.started})",
            f"modules in it: {', '.join(known)}" if known else "it recorded no steps",
        )
    return dataclasses.replace(
        report,
        records=tuple(r for r in report.records if r.module == module),
        changes=tuple(c for c in report.changes if c.get("module") == module),
        would_execute=tuple(w for w in report.would_execute if w.get("module") == module),
    )


def report_lines(report: DanceReport, module: str | None = None) -> list[str]:
    """The text after 'report: ' of each line, in the seed's format, in dance order: a
    block for each run of records of one (module, step), its items as they ran. (A
    module's `diff` and `commit` come after each of its steps, so a block per step kind
    would put the steps out of order.)"""
    groups: list[tuple[tuple[str, str], list[Record]]] = []
    for record in select(report, module).records:
        key = (record.module, record.step)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(record)
        else:
            groups.append((key, [record]))
    lines = []
    for (mod, step), records in groups:
        lines.append(f"{mod}: {step}")
        # A whole-step record (if any) comes before the items it may contain.
        for record in sorted(records, key=lambda r: r.item is not None):
            indent = "   "
            if record.item is not None:
                lines.append(f"{indent}{record.item} :")
                indent = "       "
            lines.extend(indent + text for text in metric_lines(record))
    for would in select(report, module).would_execute:  # what NOOP intercepted, as it ran
        lines.append(f"{would.get('module', '?')}: Would execute : {would.get('command', '')}")
    return lines


def metric_lines(record: Record) -> list[str]:
    u = record.usage
    return [
        f"time_real {record.wall:.2f} : time_user {u.utime:.2f} : time_sys {u.stime:.2f}",
        # mem_avg: Linux keeps no integral memory sizes; GNU time prints 0 as well.
        f"mem_avg 0 : mem_max {u.maxrss} : mem_faults_major {u.majflt}"
        f" : mem_faults_minor {u.minflt}",
        f"io_fsin {u.inblock} : io_fsout {u.oublock} : io_sockin {u.msgrcv}"
        f" : io_sockout {u.msgsnd} : io_signals {u.nsignals}",
        f"exit: {record.exit}",
    ]


def report_json(report: DanceReport, module: str | None = None) -> str:
    return json.dumps(to_data(select(report, module)), indent=2, sort_keys=True)
