"""What `disco dance` prints while it runs: its lines, a progress line on a terminal,
`--quiet` and `--json`."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from disco.cli.common import Output

CHANGE = "File: "  # how a change record starts (changes.header)


class DanceOutput(Output):
    """The dance's Sink.

    On a terminal (stderr, and never with --json) a progress line at the bottom says which
    module of how many runs and for how long; it is cleared before every other line and
    redrawn after it, so a log or a pipe never sees it. `quiet` keeps only change records,
    their diffs, warnings and errors. `diffs` collects each change record's diff, in
    order, for --json."""

    def __init__(
        self, out: TextIO | None = None, err: TextIO | None = None, *, quiet: bool = False
    ) -> None:
        super().__init__(out, err)
        self.quiet = quiet
        self.diffs: list[str] = []
        self.module: str | None = None  # the module running now
        self.module_started = time.monotonic()
        self.module_index = 0
        self.started = time.monotonic()
        self.status = ""  # the progress line shown now, "" for none
        self.where = ""
        self.lock = threading.RLock()
        self.ticker: threading.Thread | None = None
        self.done = threading.Event()
        self.live = self.err.isatty() and not os.environ.get("DISCO_NO_PROGRESS")

    # -- the Sink --------------------------------------------------------------------

    def progress(self, module: str, index: int, total: int) -> None:
        with self.lock:
            self.module, self.module_started = module, time.monotonic()
            self.module_index = index
            self.where = f"module {index} of {total}: {module}"
            if self.live and self.ticker is None:
                self.ticker = threading.Thread(target=self.tick, daemon=True)
                self.ticker.start()
            self.draw()

    def info(self, text: str) -> None:
        if text.startswith(CHANGE):
            self.diffs.append("")
        elif self.quiet:
            return
        super().info(text)

    def text(self, text: str) -> None:
        if self.diffs:
            self.diffs[-1] = text
        with self.lock:
            self.clear()
            super().text(text)
            self.draw()

    def line(self, kind: str, text: str, stream: TextIO) -> None:
        with self.lock:
            self.clear()
            super().line(kind, text, stream)
            self.draw()

    # -- the progress line -----------------------------------------------------------

    def tick(self) -> None:
        while not self.done.wait(1.0):
            with self.lock:
                self.draw()

    def draw(self) -> None:
        if not self.live or not self.where:
            return
        elapsed = time.monotonic() - self.started
        self.status = f"[{self.where}, {elapsed:.0f} s]"
        self.err.write(f"\r\033[K{self.status}")
        self.err.flush()

    def clear(self) -> None:
        if self.status:
            self.err.write("\r\033[K")
            self.err.flush()
            self.status = ""

    def finish(self) -> None:
        """Take the progress line away for good."""
        self.done.set()
        with self.lock:
            self.where = ""
            self.clear()


def printing_to(json_mode: bool) -> TextIO:
    """Where human lines go: stdout, or stderr when stdout carries the JSON document."""
    return sys.stderr if json_mode else sys.stdout
