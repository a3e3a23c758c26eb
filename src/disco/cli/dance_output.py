"""What `disco dance` prints while it runs: its lines, a progress line on a terminal,
`--quiet` and `--json`."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from typing import TextIO

from disco.cli.common import Output
from disco.report.metrics import Meter

CHANGE = "File: "  # how a change record starts (changes.header)


class DanceOutput(Output):
    """The dance's Sink.

    On a terminal (stderr, and never with --json) a progress line at the bottom says which
    module of how many runs and for how long; it is cleared before every other line and
    redrawn after it, so a log or a pipe never sees it. `quiet` keeps only change records,
    their diffs, warnings and errors. `diffs` collects each change record's diff, in
    order, for --json."""

    def __init__(
        self,
        out: TextIO | None = None,
        err: TextIO | None = None,
        *,
        quiet: bool = False,
        tee: StderrTee | None = None,
    ) -> None:
        super().__init__(out, err)
        self.tee = tee
        self.meter: Meter | None = None  # the dance's, once it has one: the progress line's step
        # Through the tee, stderr is a pipe: whether it ends on a terminal is the tee's.
        self.terminal = tee.terminal if tee is not None else self.err.isatty()
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
        self.live = self.terminal

    # -- the Sink --------------------------------------------------------------------

    def progress(self, module: str, index: int, total: int) -> None:
        if self.tee is not None:
            self.tee.mark(module)
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
        self.status = f"[{self.where}{self.last_step()}, {elapsed:.0f} s]"
        self.err.write(f"\r\033[K{self.status}")
        self.err.flush()

    def last_step(self) -> str:
        """The module's last finished step, from the dance's meter: `, after exec 10-x.sh`."""
        records = self.meter.records if self.meter is not None else []
        last = records[-1] if records else None
        if last is None or last.module != self.module:
            return ""
        return f", after {last.step}" + (f" {last.item}" if last.item else "")

    def clear(self) -> None:
        if self.status:
            self.err.write("\r\033[K")
            self.err.flush()
            self.status = ""

    def coloured(self, stream: TextIO) -> bool:
        return self.terminal if stream is self.err else super().coloured(stream)

    def finish(self) -> list[dict[str, str]]:
        """Take the progress line away for good, and stop the tee: the `Would execute`
        lines of the dance, all of them."""
        self.done.set()
        with self.lock:
            self.where = ""
            self.clear()
        if self.tee is not None:
            self.tee.close()
            return self.tee.lines
        return []


def printing_to(json_mode: bool) -> TextIO:
    """Where human lines go: stdout, or stderr when stdout carries the JSON document."""
    return sys.stderr if json_mode else sys.stdout


WOULD = b"warning: Would execute : "  # what a NOOP interceptor prints (view.INTERCEPTOR)


class StderrTee:
    """fd 2 through a pipe for the dance, so that the `Would execute` lines a step's
    interceptors print are kept for the report, with their module.

    Everything written to fd 2 (ours, and every step's: they inherit it) is passed on to
    the real stderr as it comes; `mark(module)` puts a marker in the same pipe, so a line
    is counted for the module whose steps wrote it, whatever the reading thread's lag.
    The markers hold a random nonce of the tee's (128 bits, never shown to a step): a
    step that writes what looks like one has it passed on as its output, and changes
    neither which module a line counts for nor when the tee stops reading.
    Used only where a dance intercepts (NOOP, or live on another root): there no process
    of a step outlives it (a NOOP step's pid namespace ends them all, a live step's init
    kills what is left), and none is left holding the pipe."""

    def __init__(self) -> None:
        self.lines: list[dict[str, str]] = []
        self.module = ""
        nonce = secrets.token_hex(16).encode()
        self.marker = b"\0disco-" + nonce + b"-module:"  # written between modules
        self.end = b"\0disco-" + nonce + b"-end\n"
        self.saved = os.dup(2)
        self.broken = False  # the real stderr refused a write
        self.terminal = os.isatty(self.saved)
        read, write = os.pipe()
        sys.stderr.flush()
        os.dup2(write, 2)
        os.close(write)
        self.read = read
        self.thread = threading.Thread(target=self.pump, daemon=True)
        # The thread never takes SIGINT/SIGTERM: they must reach the main thread only,
        # which blocks them while a commit runs (journal.py); a signal taken here would
        # still raise there at once, in the middle of the commit.
        stop = {signal.SIGINT, signal.SIGTERM}
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        try:
            self.thread.start()  # it inherits the mask
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def mark(self, module: str) -> None:
        sys.stderr.flush()
        os.write(2, self.marker + os.fsencode(module) + b"\n")

    def close(self) -> None:
        if self.read < 0:
            return
        sys.stderr.flush()
        os.write(2, self.end)
        self.thread.join(timeout=10)
        os.dup2(self.saved, 2)
        os.close(self.saved)
        os.close(self.read)
        self.read = -1

    def pump(self) -> None:
        mark, end = self.marker, self.end
        pending, line = b"", b""
        while True:
            chunk = os.read(self.read, 65536)
            if not chunk:
                return
            pending += chunk
            while pending:
                at = pending.find(b"\0")
                text, rest = (pending, b"") if at < 0 else (pending[:at], pending[at:])
                if text:
                    self.forward(text)
                    line = self.scan(line + text)
                pending = rest
                if not pending:
                    break
                if end.startswith(pending[: len(end)]) and len(pending) < len(end):
                    break  # a marker cut in two: wait for its end
                if pending.startswith(end):
                    return
                if pending.startswith(mark):
                    stop = pending.find(b"\n")
                    if stop < 0:
                        break
                    self.module = os.fsdecode(pending[len(mark) : stop])
                    pending = pending[stop + 1 :]
                elif mark.startswith(pending[: len(mark)]) and len(pending) < len(mark):
                    break
                else:  # a NUL of a step's own: pass it on
                    self.forward(pending[:1])
                    pending = pending[1:]

    def forward(self, data: bytes) -> None:
        """Pass bytes on to the real stderr. If that is gone (a reader like `head` left),
        keep draining the pipe all the same: a full pipe would stop every step."""
        if self.broken:
            return
        try:
            os.write(self.saved, data)
        except OSError:
            self.broken = True

    def scan(self, text: bytes) -> bytes:
        """Record the complete `Would execute` lines of `text`; return its unfinished tail."""
        *complete, tail = text.split(b"\n")
        for raw in complete:
            if raw.startswith(WOULD):
                command = raw[len(WOULD) :].decode(errors="surrogateescape")
                self.lines.append({"module": self.module, "command": command})
        return tail
