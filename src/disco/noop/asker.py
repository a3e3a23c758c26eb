"""The asker: questions about the running host, answered outside the sandbox (DESIGN §7).

A NOOP step has its own, empty pid namespace and no systemd: `pidof sshd` or
`systemctl is-active nginx` asked in there would answer "no" where the host says "yes".
The interceptor sends such questions here instead, through FIFOs in the view (bash can
open a FIFO; it cannot open a socket). Slot S (a to p) has three:

    ask/S.ticket   holds the byte "S" while the slot is free: a client takes it (read -N 1)
    ask/S.req      the question: its number of words, then the words, each NUL-terminated
    ask/S.resp     the answer: "STATUS OUTLEN ERRLEN\\n", then stdout and stderr

Each slot's req and resp are made anew for every question, so a slow client still
reading an old answer never meets the next one. The asker is a process forked by the
dance, a thread a slot; what it answers, and how, is questions.py.

Its clients are the interceptors in a step, so a step can write anything there, and the
asker takes no more than a whole question: its word count right, within MAX_REQUEST
bytes, ended (its writer gone) within the timeout of its first byte. A slot whose ticket
is taken and no question begun within the timeout, or whose ticket FIFO holds bytes it
did not write, is made anew; an answer not read within the timeout is given up. So no
slot is lost and nothing waits for good, whatever a step does. Between steps the dance
sweeps away the tickets a step may have forged (Asker.sweep), so a step that plays with
the FIFOs spoils no more than its own questions. Every FIFO is reached from a descriptor
of the ask/ directory, never through a symlink, and opened only if it is a FIFO.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import select
import shutil
import signal
import stat
import struct
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from disco.engine.syscalls import PR_SET_PDEATHSIG, libc
from disco.files import open_dir
from disco.noop.packages import QUESTION, Fetcher, fetch
from disco.noop.questions import answer

SLOTS = "abcdefghijklmnop"
TIMEOUT = 10.0  # seconds for a question to come whole, and for its answer to be read
MAX_REQUEST = 64 * 1024
_TICK = 0.5  # how often a free slot looks at its ticket


def _open_fifo(d: int, name: str, flags: int) -> int:
    """The FIFO `name` in the directory `d`, opened with `flags`: never a symlink
    followed, nothing but a FIFO opened (OSError)."""
    if not stat.S_ISFIFO(os.stat(name, dir_fd=d, follow_symlinks=False).st_mode):
        raise OSError(errno.EINVAL, "not a FIFO", name)
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a FIFO", name)
    return fd


def _make_fifo(d: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=d)
    os.mkfifo(name, 0o600, dir_fd=d)


def _waiting(fd: int) -> int:
    """How many bytes wait in the FIFO `fd`."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def parse(data: bytes) -> list[str] | None:
    """The words of a whole question (its word count, then the words, each NUL-terminated),
    the command's name first; None for anything else (half a question, two run together)."""
    if not data.endswith(b"\0"):
        return None
    count, *words = data[:-1].split(b"\0")
    if not count.isdigit() or int(count) != len(words) or not words or not words[0]:
        return None
    return [os.fsdecode(w) for w in words]


def _refusal(what: str) -> bytes:
    err = f"disco: {what}\n".encode()
    return f"1 0 {len(err)}\n".encode() + err


@dataclass(frozen=True)
class Duties:
    """What an asker answers: questions about the running host (only when the dance's
    root is it), and package fetches (DESIGN §17) when `fetcher` is set."""

    on_host: bool = True
    fetcher: Fetcher | None = None

    def answer(self, argv: list[str]) -> tuple[int, bytes, bytes]:
        if argv[0] == QUESTION:
            if self.fetcher is None:
                return 1, b"", b"disco: packages are not fetched in this dance\n"
            return fetch(self.fetcher, argv)
        if not self.on_host:
            return 1, b"", b"disco: the root is not the running system: no host to ask\n"
        return answer(argv)


# What the asker and the dance share, a byte per slot in each half: BUSY from a
# question's first byte until the slot is free again; LEFT set by Asker.sweep when the
# slot's ticket was taken by a step that is over (no question can come).
BUSY, LEFT = 0, len(SLOTS)


class _Slot:
    """One slot of the asker, served by a thread of its own."""

    def __init__(
        self, d: int, index: int, timeout: float, shared: mmap.mmap, duties: Duties
    ) -> None:
        self.d, self.name, self.timeout = d, SLOTS[index], timeout
        self.index, self.shared, self.duties = index, shared, duties
        _make_fifo(d, f"{self.name}.ticket")
        # Read-write: writing a ticket never blocks, and we can see it is still there.
        self.ticket = _open_fifo(d, f"{self.name}.ticket", os.O_RDWR | os.O_NONBLOCK)
        self.req = -1  # the last question's FIFO, held open until the next one is made

    def serve(self) -> None:
        while True:
            try:
                self.cycle()
            except Exception:  # noqa: BLE001 -- whatever a step did, the slot stays
                time.sleep(_TICK)

    def cycle(self) -> None:
        """Make the slot anew, give out its ticket, take a question, answer it."""
        req, resp = f"{self.name}.req", f"{self.name}.resp"
        _make_fifo(self.d, req)
        _make_fifo(self.d, resp)
        # Holding the old req open until now: a client that came late was not left
        # waiting for a reader of it.
        old, self.req = self.req, _open_fifo(self.d, req, os.O_RDONLY | os.O_NONBLOCK)
        if old >= 0:
            os.close(old)
        self.shared[BUSY + self.index] = 0
        self.issue()
        data = self.question(self.req)
        if data is None:
            return
        argv = parse(data)
        if argv is None:  # no interceptor sends it: said if its sender waits, not waited for
            what = f"not a whole question ({len(data)} bytes): not answered"
            self.reply(resp, _refusal(what), patient=False)
            return
        try:
            status, out, err = self.duties.answer(argv)
        except Exception as e:  # noqa: BLE001 -- one bad question must not close the slot
            status, out, err = 1, b"", f"disco: the host could not answer: {e}\n".encode()
        self.reply(resp, f"{status} {len(out)} {len(err)}\n".encode() + out + err)

    def issue(self) -> None:
        """Put the slot's ticket out, and nothing else: bytes someone else wrote go."""
        _drain(self.ticket)
        os.write(self.ticket, self.name.encode())
        self.shared[LEFT + self.index] = 0  # after: a sweep saw no ticket before it

    def question(self, req: int) -> bytes | None:
        """The bytes written to `req` until its writer is gone (with a byte that makes
        them no question if it has not gone within the timeout, or wrote too much); None
        where the slot is to be made anew: its ticket taken and no question begun within
        the timeout or by a step that is over, or bytes in its ticket FIFO that it did not
        write."""
        poller = select.poll()
        poller.register(req, select.POLLIN)
        taken: float | None = None
        while not poller.poll(_TICK * 1000):
            waiting = _waiting(self.ticket)
            if waiting > 1:
                return None
            if waiting == 1:
                taken = None
            elif self.shared[LEFT + self.index]:
                self.shared[LEFT + self.index] = 0
                return None
            elif taken is None:
                taken = time.monotonic()
            elif time.monotonic() - taken > self.timeout:
                return None
        self.shared[BUSY + self.index] = 1
        self.shared[LEFT + self.index] = 0
        deadline = time.monotonic() + self.timeout
        data = b""
        while len(data) <= MAX_REQUEST:
            try:
                chunk = os.read(req, MAX_REQUEST + 1 - len(data))
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                return data
            data += chunk or b""
            left = deadline - time.monotonic()
            if left <= 0:
                break
            poller.poll(left * 1000)
        return data + b"\1"  # not ended in time, or too long: never a whole question

    def reply(self, resp: str, message: bytes, patient: bool = True) -> None:
        """Write `message` to the client once it has `resp` open; given up if it does not
        come (at once, unless `patient`), or does not read, within the timeout."""
        deadline = time.monotonic() + self.timeout
        fd = -1
        while fd < 0:
            try:
                fd = _open_fifo(self.d, resp, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO or not patient or time.monotonic() > deadline:
                    return
                time.sleep(0.002)  # ENXIO: no reader yet
        try:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            view = memoryview(message)
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    poller.poll(left * 1000)
        except BrokenPipeError:
            return
        finally:
            os.close(fd)


def serve(
    directory: Path, timeout: float, shared: mmap.mmap, ready: int = -1, duties: Duties = Duties()
) -> None:
    """Answer questions in `directory` until killed; write a byte to `ready` once its
    slots are there."""
    directory.mkdir(mode=0o755, exist_ok=True)
    d = open_dir(directory)
    slots = [_Slot(d, index, timeout, shared, duties) for index in range(len(SLOTS))]
    threads = [threading.Thread(target=slot.serve, daemon=True) for slot in slots]
    for thread in threads:
        thread.start()
    if ready >= 0:
        os.write(ready, b"!")
        os.close(ready)
    for thread in threads:
        thread.join()


@dataclass
class Asker:
    """The dance's side of a running asker."""

    directory: Path
    shared: mmap.mmap
    tickets: list[int]  # each slot's ticket FIFO, to look into

    def sweep(self) -> None:
        """Between steps, when no client is there: take away what the step before may
        have left in the ticket FIFOs (any byte of a busy slot's, the bytes of a free
        slot's that holds other than one), and have every free slot without its one
        ticket made anew (within the asker's tick)."""
        for index, fd in enumerate(self.tickets):
            waiting = _waiting(fd)  # first: a slot sets BUSY off before it puts its ticket
            if self.shared[BUSY + index]:
                if waiting:
                    _drain(fd)
            elif waiting != 1:
                _drain(fd)
                self.shared[LEFT + index] = 1


@contextlib.contextmanager
def asking(directory: Path, timeout: float = TIMEOUT, duties: Duties = Duties()) -> Iterator[Asker]:
    """An asker serving `directory` while the block runs (a forked process, killed
    afterwards; it dies with us too)."""
    shared = mmap.mmap(-1, 2 * len(SLOTS))  # MAP_SHARED: the child writes, we read
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            serve(directory, timeout, shared, write, duties)
        finally:
            os._exit(0)
    os.close(write)
    tickets: list[int] = []
    try:
        select.select([read], [], [], TIMEOUT)  # its slots made, or it failed
        with contextlib.suppress(OSError):
            d = open_dir(directory)
            try:
                for slot in SLOTS:
                    tickets.append(_open_fifo(d, f"{slot}.ticket", os.O_RDWR | os.O_NONBLOCK))
            finally:
                os.close(d)
        yield Asker(directory, shared, tickets)
    finally:
        for fd in [read, *tickets]:
            os.close(fd)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shared.close()
        shutil.rmtree(directory, ignore_errors=True)
