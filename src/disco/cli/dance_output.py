"""What `disco dance` prints while it runs: its lines, a progress line on a terminal,
`--quiet` and `--json`. Where the lines and the steps' output go is stdio.py's."""

from __future__ import annotations

import threading
import time

from disco.cli.common import Output, Stream
from disco.cli.stdio import DanceStdio
from disco.report.metrics import Meter

CHANGE = "File: "  # how a change record starts (changes.header)
PACKAGE = "Package: "  # a package's line (dance/package_lines.py), kept when quiet


class DanceOutput(Output):
    """The dance's Sink.

    On a terminal (stderr) a progress line at the bottom says which module of how many
    runs and for how long; every other line, and the steps' output, takes it away and
    draws it again after a whole line (stdio.py), so a log or a pipe never sees it.
    `quiet` keeps only change records, their diffs, warnings and errors. `diffs`
    collects each change record's diff, in order, for --json. With --json the lines go
    to stderr: stdout is the document's."""

    def __init__(self, stdio: DanceStdio, *, quiet: bool = False, json: bool = False) -> None:
        super().__init__(stdio.stream(2 if json else 1), stdio.stream(2))
        self.stdio = stdio
        self.meter: Meter | None = None  # the dance's, once it has one: the progress line's step
        self.quiet = quiet
        self.diffs: list[str] = []
        self.module: str | None = None  # the module running now
        self.module_started = time.monotonic()
        self.module_index = 0
        self.started = time.monotonic()
        self.status = ""  # the progress line shown now, "" for none
        self.where = ""
        self.midline = False  # the terminal's cursor is after output that has no newline yet
        self.lock = threading.RLock()
        self.ticker: threading.Thread | None = None
        self.done = threading.Event()
        self.live = stdio.terminal
        if self.live:
            stdio.screen = self

    # -- the Sink --------------------------------------------------------------------

    def progress(self, module: str, index: int, total: int) -> None:
        self.stdio.mark(module)
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
        elif self.quiet and not text.startswith(PACKAGE):
            return
        super().info(text)

    def text(self, text: str) -> None:
        if self.diffs:
            self.diffs[-1] = text
        super().text(text)
        self.redraw()

    def line(self, kind: str, text: str, stream: Stream) -> None:
        # Not under the lock: the line may wait for the thread that passes it on, which
        # takes the lock to clear the progress line before it.
        super().line(kind, text, stream)
        self.redraw()

    # -- the progress line -----------------------------------------------------------

    def tick(self) -> None:
        while not self.done.wait(1.0):
            self.redraw()

    def redraw(self) -> None:
        if self.live:
            with self.lock:
                self.draw()

    def draw(self) -> None:
        """Under the lock."""
        if not self.live or not self.where or self.midline:
            return
        elapsed = time.monotonic() - self.started
        self.status = f"[{self.where}{self.last_step()}, {elapsed:.0f} s]"
        self.stdio.write_screen(f"\r\033[K{self.status}")

    def last_step(self) -> str:
        """The module's last finished step, from the dance's meter: `, after exec 10-x.sh`."""
        records = self.meter.records if self.meter is not None else []
        last = records[-1] if records else None
        if last is None or last.module != self.module:
            return ""
        return f", after {last.step}" + (f" {last.item}" if last.item else "")

    def clear(self) -> None:
        """Under the lock."""
        if self.status:
            self.stdio.write_screen("\r\033[K")
            self.status = ""

    def finish(self) -> list[dict[str, str]]:
        """Take the progress line away for good and give the fds back: the `Would
        execute` lines of the dance, all of them."""
        self.done.set()
        self.stdio.close()  # first what it still holds; not under the lock, which it takes
        with self.lock:
            self.where = ""
            self.clear()
            self.live = False
        return self.stdio.would
