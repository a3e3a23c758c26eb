"""The file descriptors 1 and 2 of a dance, as its steps inherit them.

Where stdout or stderr is a pipe or a socket, or where the dance must see what passes
(NOOP's `Would execute` lines, `--json`'s step output, the progress line on a
terminal), the dance's fd is a pipe of ours instead, pumped to the real one by a thread:

- a reader that goes away (`| head`, a `less` quit) never stops the dance: what follows
  is dropped, every step still runs and commits, and the exit status is the dance's (a
  step writing into a pipe with no reader would die of SIGPIPE, and disco's own print
  would raise);
- `--json`: both fds go to stderr, so that stdout carries the document alone, and the
  steps' output is kept for it, by module;
- on a terminal the progress line is taken away before any output and drawn again after
  a whole line, so it never shares a line with a step's output.

Where stdout and stderr are one file (`2>&1`), they share one pipe and keep their order.
disco's own lines are sent as marked chunks (OWN), so that they are neither kept as a
step's output nor read as a `Would execute` line; `mark(module)` puts a marker in each
pipe, so that what follows is counted for that module whatever the thread's lag. The
markers carry a random key of the dance's, which no step is told: what a step prints is
passed on as it is, never read as a marker. The thread stops on a message of its own
pipe, never on anything in the streams.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import sys
import threading
from dataclasses import dataclass, field
from typing import Protocol

WOULD = b"warning: Would execute : "  # what a NOOP interceptor prints (view.INTERCEPTOR)
CHUNK = 4000  # an OWN chunk in one write of at most PIPE_BUF bytes: never cut by another
KEEP = 1 << 20  # bytes of step output kept for --json; the rest is counted
LINE_MAX = 65536  # bytes of a line kept to look for `Would execute`


class Screen(Protocol):
    """The progress line a channel to the terminal takes away and draws again."""

    lock: threading.RLock
    midline: bool

    def clear(self) -> None: ...
    def draw(self) -> None: ...


@dataclass
class Channel:
    """One pipe of ours in front of a real stdout or stderr."""

    read: int
    write: int
    dest: int  # our copy of the real fd
    tty: bool
    scan: bool  # look for `Would execute` lines
    keep: bool  # keep the steps' output (--json)
    broken: bool = False  # the real fd refused a write: drop what follows
    pending: bytes = b""
    own: int = 0  # bytes of an OWN chunk still to come
    line: bytes = b""  # the unfinished line, for scan
    module: str = ""
    progress: bool = False  # the terminal with the progress line
    fds: list[int] = field(default_factory=list)  # the dance's fds that are this pipe


class DanceStdio:
    """See the module's text. Use as a context manager; `close()` may come earlier."""

    def __init__(self, *, json: bool = False, intercept: bool = False, progress: bool = False):
        sys.stdout.flush()
        sys.stderr.flush()
        self.real = {1: os.dup(1), 2: os.dup(2)}
        key = b"\0disco-" + os.urandom(16).hex().encode()  # 128 bits
        self.mark_head = key + b"-module:"  # it, NAME, \n: what follows is module NAME's
        self.own_head = key + b"-own:"  # it, LENGTH, \n, BYTES: disco's own, as it is
        self.terminal = progress and os.isatty(self.real[2])  # the progress line's
        self.screen: Screen | None = None
        self.would: list[dict[str, str]] = []  # {"module", "command"}
        self.output: list[dict[str, str]] = []  # {"module", "text"}: --json
        self.kept = 0
        self.dropped = 0
        self.channels: list[Channel] = []
        self.by_fd: dict[int, Channel] = {}
        self.closed = False
        same = _same_file(self.real[1], self.real[2])
        if json:  # stdout is the document's alone: the dance's fd 1 is its stderr
            self._channel((1, 2), 2, scan=intercept, keep=True)
        else:
            err = intercept or self.terminal or _pipe(self.real[2])
            out = _pipe(self.real[1]) or (same and err)
            if same and (err or out):
                self._channel((1, 2), 2, scan=intercept, keep=False)
            else:
                if err:
                    self._channel((2,), 2, scan=intercept, keep=False)
                if out:
                    self._channel((1,), 1, scan=False, keep=False)
        self.thread: threading.Thread | None = None
        if self.channels:
            self.stop_read, self.stop_write = os.pipe2(os.O_CLOEXEC)
            self.thread = threading.Thread(target=self.pump, daemon=True)
            # The thread never takes SIGINT/SIGTERM: they must reach the main thread only,
            # which blocks them while a commit runs (journal.py).
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                self.thread.start()  # it inherits the mask
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _channel(self, fds: tuple[int, ...], dest: int, scan: bool, keep: bool) -> None:
        read, write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read, False)
        tty = os.isatty(self.real[dest])
        channel = Channel(read, write, self.real[dest], tty, scan, keep, fds=list(fds))
        channel.progress = self.terminal and dest == 2
        for fd in fds:
            os.dup2(write, fd)  # inheritable, unlike `write`: the steps get it
            self.by_fd[fd] = channel
        self.channels.append(channel)

    def __enter__(self) -> DanceStdio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the dance writes ---------------------------------------------------------------

    def stream(self, fd: int) -> Writer:
        """A text stream for disco's own lines to `fd` (1 or 2)."""
        return Writer(self, fd)

    def say(self, fd: int, data: bytes) -> None:
        """disco's own bytes to the dance's `fd`: marked in our pipe, else written."""
        channel = None if self.closed else self.by_fd.get(fd)
        if channel is None:
            _write_all(fd, data)
            return
        for at in range(0, len(data), CHUNK):
            piece = data[at : at + CHUNK]
            os.write(channel.write, self.own_head + str(len(piece)).encode() + b"\n" + piece)

    def mark(self, module: str) -> None:
        """What comes after this in each pipe is `module`'s."""
        if self.closed:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for channel in self.channels:
            os.write(channel.write, self.mark_head + os.fsencode(module) + b"\n")

    def write_screen(self, text: str) -> None:
        """The progress line, straight to the terminal."""
        with contextlib.suppress(OSError):
            _write_all(2 if self.closed else self.real[2], text.encode())

    def close(self) -> None:
        """Give the dance's fds back, after the thread has passed on all they hold."""
        if self.closed:
            return
        self.closed = True
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, real in self.real.items():
            os.dup2(real, fd)
        if self.thread is not None:
            for channel in self.channels:
                os.close(channel.write)
            os.write(self.stop_write, b".")
            self.thread.join()
            for channel in self.channels:
                os.close(channel.read)
            os.close(self.stop_read)
            os.close(self.stop_write)
        for real in self.real.values():
            os.close(real)
        if self.dropped:
            self.output.append(
                {"module": "_internal", "text": f"({self.dropped} more bytes of output not kept)"}
            )

    # -- the thread ----------------------------------------------------------------------------

    def pump(self) -> None:
        poll = select.poll()
        by_read = {c.read: c for c in self.channels}
        for fd in (*by_read, self.stop_read):
            poll.register(fd, select.POLLIN)
        stopping = False
        while by_read and not stopping:
            for fd, _ in poll.poll():
                if fd == self.stop_read:
                    stopping = True  # the dance's fds are back: what is left, then stop
                elif not self.drain(by_read[fd]):
                    poll.unregister(fd)
                    del by_read[fd]
        for channel in by_read.values():
            self.drain(channel)
        for channel in self.channels:  # a marker cut short at the very end: as it is
            if channel.pending:
                self.step_output(channel, channel.pending)
                channel.pending = b""

    def drain(self, channel: Channel) -> bool:
        """Read what the pipe holds now; False at its end."""
        while True:
            try:
                chunk = os.read(channel.read, 65536)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            self.parse(channel, channel.pending + chunk)

    def parse(self, channel: Channel, data: bytes) -> None:
        channel.pending = b""
        while data:
            if channel.own:
                piece, data = data[: channel.own], data[channel.own :]
                channel.own -= len(piece)
                self.forward(channel, piece)
                continue
            at = data.find(b"\0")
            if at < 0:
                self.step_output(channel, data)
                return
            if at:
                self.step_output(channel, data[:at])
                data = data[at:]
            for marker in (self.mark_head, self.own_head):
                if len(data) < len(marker) and marker.startswith(data):
                    channel.pending = data  # a marker cut in two: wait for its end
                    return
            if data.startswith(self.mark_head) or data.startswith(self.own_head):
                end = data.find(b"\n", 0, 300)
                if end < 0 and len(data) < 300:
                    channel.pending = data
                    return
                head = data[:end] if end > 0 else b""
                if head.startswith(self.mark_head):
                    channel.module = os.fsdecode(head[len(self.mark_head) :])
                    channel.line = b""  # a line a step left open ends with its module
                    data = data[end + 1 :]
                    continue
                size = head[len(self.own_head) :]
                if size.isdigit() and int(size) <= CHUNK:  # larger: not one of ours
                    channel.own = int(size)
                    data = data[end + 1 :]
                    continue
            self.step_output(channel, data[:1])  # a NUL of a step's own
            data = data[1:]

    def step_output(self, channel: Channel, data: bytes) -> None:
        self.forward(channel, data)
        if channel.keep:
            room = max(0, KEEP - self.kept)
            if room:
                text = data[:room].decode(errors="surrogateescape")
                module = channel.module or "_internal"
                if self.output and self.output[-1]["module"] == module:
                    self.output[-1]["text"] += text
                else:
                    self.output.append({"module": module, "text": text})
                self.kept += min(room, len(data))
            self.dropped += max(0, len(data) - room)
        if channel.scan:
            *complete, tail = (channel.line + data).split(b"\n")
            channel.line = tail[:LINE_MAX]
            for raw in complete:
                at = raw.find(WOULD)  # after what a step printed with no newline too
                if at >= 0:
                    command = raw[at + len(WOULD) :].decode(errors="surrogateescape")
                    self.would.append({"module": channel.module, "command": command})

    def forward(self, channel: Channel, data: bytes) -> None:
        """Pass bytes on to the real fd; once it refuses one (its reader is gone), drop
        them: a full pipe would stop every step."""
        if channel.broken or not data:
            return
        screen = self.screen if channel.progress else None
        try:
            if screen is None:
                _write_all(channel.dest, data)
                return
            with screen.lock:
                screen.clear()
                _write_all(channel.dest, data)
                screen.midline = not data.endswith(b"\n")
                screen.draw()
        except OSError:
            channel.broken = True


class Writer:
    """disco's own text to the dance's fd 1 or 2 (a TextIO for print and Output)."""

    def __init__(self, stdio: DanceStdio, fd: int) -> None:
        self.stdio = stdio
        self.fd = fd
        self.buffer: list[str] = []
        channel = stdio.by_fd.get(fd)
        self.tty = channel.tty if channel is not None else os.isatty(fd)

    def write(self, text: str) -> int:
        self.buffer.append(text)
        return len(text)

    def flush(self) -> None:
        """A whole line in one go (print writes its text and its end apart)."""
        if self.buffer:
            data = "".join(self.buffer).encode(errors="surrogateescape")
            self.buffer = []
            self.stdio.say(self.fd, data)

    def isatty(self) -> bool:
        return self.tty


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pipe(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    if os.isatty(a) and os.isatty(b):
        return sa.st_rdev == sb.st_rdev
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
