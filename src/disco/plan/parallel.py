"""Head's dance in a forked child while base's goes on here, on the other core (issue 23).

A dance changes process-wide state: it unshares the calling thread's mount namespace,
mounts its tmpfs there, and its zygotes and steps write to fds 1 and 2. So head's dance
runs in a process of its own, forked once base has danced the shared prefix:

- its fds 1 and 2 (its steps' output) go to a file, and what its Sink is told is kept
  with the offset in that file it came at; once base is over, both are passed on in
  that order (`Child.join`): the two dances' output never interleaves, and the `Would
  execute` lines are read as the sequential plan's are;
- its tmpfs lives and dies in its own mount namespace; what its dance would write (its
  end layer) is copied to `exchange`, a tmpfs the parent mounted in its namespace
  before the fork (the child's is a copy of it: the same filesystem);
- its records come back as JSON beside it.

The two dances share the CPUs half and half while both run (`Cores`): each is a chain of
processes that hand over to each other (disco, its zygote, a step), and left to the
scheduler the two chains often wait on the same core while the other idles.

It dies with the parent (PR_SET_PDEATHSIG), and SIGINT or SIGTERM unwinds its dance
(its zygotes stopped, their cgroups removed) before it exits; the parent ends it so when
it is interrupted itself (`Child.stop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from disco.dance.interrupt import SIGNALS, Interrupted
from disco.dance.reporting import Sink
from disco.engine.syscalls import PR_SET_PDEATHSIG, libc
from disco.errors import DiscoError

RESULT = "result.json"


class Recorder:
    """The child's Sink: each call kept with where the steps' output stood then."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str, list[Any]]] = []

    def _keep(self, kind: str, *args: Any) -> None:
        self.events.append((os.fstat(1).st_size, kind, list(args)))

    def info(self, text: str) -> None:
        self._keep("info", text)

    def warning(self, text: str) -> None:
        self._keep("warning", text)

    def error(self, text: str) -> None:
        self._keep("error", text)

    def text(self, text: str) -> None:
        self._keep("text", text)

    def progress(self, module: str, index: int, total: int) -> None:
        self._keep("progress", module, index, total)


def _once(signum: int, _frame: FrameType | None) -> None:
    """The first SIGINT or SIGTERM unwinds the dance; later ones must not cut that short."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


class Child:
    """`work(sink)` run in a forked child; it returns the JSON-able result."""

    def __init__(self, exchange: Path, work: Callable[[Sink], dict[str, Any]]) -> None:
        self.exchange = exchange
        self.output = tempfile.TemporaryFile()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        self.cores = Cores()
        self.pid = os.fork()
        self.status: int | None = None
        if self.pid == 0:
            self.cores.take(1)
            self._child(parent, work)
        self.cores.take(0, besides=self.pid)

    def _child(self, parent: int, work: Callable[[Sink], dict[str, Any]]) -> None:
        status = 1
        try:
            for s in SIGNALS:
                signal.signal(s, _once)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # it died before the line above
                raise Interrupted(signal.SIGTERM)
            fd = self.output.fileno()
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            # The parent's pipes (base's zygotes', the CLI's) must see their end when the
            # parent closes them, not when this child exits.
            for name in os.listdir("/proc/self/fd"):
                if int(name) > 2:
                    with contextlib.suppress(OSError):
                        os.close(int(name))
            sink = Recorder()
            try:
                result = work(sink)
            except DiscoError as e:
                result = {"error": [e.message, e.hint, e.status]}
            except Exception:
                result = {"error": [f"head's dance failed: {traceback.format_exc()}", "", 1]}
            result["events"] = sink.events
            (self.exchange / RESULT).write_text(json.dumps(result))
            status = 0
        except Interrupted as e:
            status = e.status
        finally:
            os._exit(status)

    def wait(self) -> int:
        if self.status is None:
            _, code = os.waitpid(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(code)
            self.cores.give_back()
        return self.status

    def stop(self) -> None:
        """End the child (interrupted), and wait for it."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            self.wait()
        self.output.close()

    def join(self, out: Sink) -> dict[str, Any]:
        """Wait for the child, pass on its output and its Sink's lines to `out` in their
        order (the output to fd 2, where a dance's steps write), and give its result."""
        status = self.wait()
        data = os.pread(self.output.fileno(), os.fstat(self.output.fileno()).st_size, 0)
        self.output.close()
        path = self.exchange / RESULT
        if not path.exists():
            raise DiscoError(f"head's dance ended with status {status} and no result")
        result: dict[str, Any] = json.loads(path.read_text())
        at = 0
        for offset, kind, args in result.pop("events"):
            _write_all(2, data[at:offset])
            at = max(at, offset)
            getattr(out, kind)(*args)
        _write_all(2, data[at:])
        if "error" in result:
            message, hint, code = result["error"]
            raise DiscoError(message, hint, code)
        return result


class Cores:
    """The CPUs this process may use, split in two halves: one for each dance."""

    def __init__(self) -> None:
        self.all = sorted(os.sched_getaffinity(0))

    def take(self, half: int, besides: int = 0) -> None:
        """Keep this process and its children (base's zygote, started before the fork),
        but for `besides`, to one half."""
        if len(self.all) > 1:
            mid = len(self.all) // 2
            _set(self.all[mid:] if half else self.all[:mid], besides)

    def give_back(self) -> None:
        if len(self.all) > 1:
            _set(self.all)


def _set(cpus: list[int], besides: int = 0) -> None:
    pids = [0]
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/self/task/{task}/children").read_text().split()]
    for pid in pids:
        if pid == besides and pid:
            continue
        with contextlib.suppress(OSError):  # a child that has just ended
            os.sched_setaffinity(pid, cpus)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
