"""A step's changes read from its layer and said as the seed says them: a header line, its
content diff, and a record for the report (DESIGN §7, §9)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from disco.dance.package_lines import group
from disco.engine.change_text import content_diff, header
from disco.engine.changes import Change, read_changes
from disco.engine.sandbox import upper_of


class Sink(Protocol):
    """Where a dance says what happens; the CLI prints it."""

    def info(self, text: str) -> None: ...
    def warning(self, text: str) -> None: ...
    def error(self, text: str) -> None: ...
    def text(self, text: str) -> None: ...
    def progress(self, module: str, index: int, total: int) -> None:
        """Module `index` of `total` (from 1) starts: for a progress line."""


class ChangeReport:
    def __init__(
        self,
        sink: Sink,
        records: list[dict[str, str]],
        exclude: Sequence[str],
        sensitive: Sequence[str],
        diff: str,
    ) -> None:
        self.sink = sink
        self.records = records  # the dance's change records, in the order said
        self.exclude = tuple(exclude)
        self.sensitive = sensitive
        self.diff = diff

    def read(self, layer: Path, lowers: list[Path]) -> list[Change]:
        return read_changes(upper_of(layer), lowers, exclude=self.exclude, sensitive=self.sensitive)

    def say(self, module: str, label: str, changes: list[Change]) -> None:
        """Each change's record and diff; the files of the packages the step installed
        or removed said as one line per package (package_lines.py), their records kept
        whole, each with its diff and its package, in the report."""
        packages, folded = group(changes)
        for package in packages:
            self.sink.info(package.line())
        for change in changes:
            line = header(change)
            record = {"module": module, "step": label, "path": change.path,
                      "kind": change.kind.value, "header": line}  # fmt: skip
            diff = content_diff(change, self.diff)
            if change.path in folded:
                record.update(package=folded[change.path], diff=diff)
            else:
                self.sink.info(line)
                if diff:
                    self.sink.text(diff)
            self.records.append(record)
