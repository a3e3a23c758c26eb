"""The one way disco runs a program."""

from __future__ import annotations

import logging
import os
import select
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

from disco.errors import CommandError

log = logging.getLogger("disco")
T = TypeVar("T")


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` and capture its output (`pass_fds`: descriptors it gets under the same
    numbers, such as files opened without following a symlink for it to read).

    Stdin is closed unless `input` is given. `env` replaces the environment; by default
    the child gets ours with messages forced to the C locale, so that the errors disco
    parses read the same on every machine. If we are interrupted the child is killed
    (subprocess.run does that on any exception). With `check`, a non-zero exit raises
    CommandError carrying the command, its status and its stderr; so does a child that
    outlives `timeout` seconds (killed, status 124 as timeout(1) says).
    """
    if env is None:
        env = {**os.environ, "LC_ALL": "C"}
    log.debug("run: %s", shlex.join(argv))
    try:
        result = subprocess.run(
            list(argv),
            env=dict(env),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            cwd=cwd,
            check=False,
            timeout=timeout,
            pass_fds=tuple(pass_fds),
        )
    except subprocess.TimeoutExpired as e:
        raise CommandError(argv, 124, f"{argv[0]} did not finish in {timeout} s") from e
    except OSError as e:
        raise CommandError(argv, 127, f"cannot run {argv[0]}: {e.strerror}") from e
    if check and result.returncode != 0:
        raise CommandError(argv, result.returncode, result.stderr.decode(errors="replace"))
    return result


def start(argv: Sequence[str], *, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """Start a long-lived helper (the zygote): an empty environment, our stdout and
    stderr, `pass_fds` kept open under their numbers, stdin closed unless among them."""
    log.debug("start: %s", shlex.join(argv))
    stdin = None if 0 in pass_fds else subprocess.DEVNULL
    try:
        return subprocess.Popen(list(argv), env={}, stdin=stdin, pass_fds=tuple(pass_fds))
    except OSError as e:
        raise CommandError(argv, 127, f"cannot run {argv[0]}: {e.strerror}") from e


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for `proc` to exit (and reap it), at most `timeout` seconds; whether it did.
    Woken by the kernel when it exits (a pidfd), where Popen.wait(timeout) polls with
    sleeps that overshoot the exit by up to 50 ms."""
    if proc.poll() is None:
        fd = os.pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(int(timeout * 1000)):
                return False
        finally:
            os.close(fd)
    proc.wait()
    return True


def read_output(
    argv: Sequence[str],
    consume: Callable[[IO[bytes]], T],
    ok: Collection[int],
    pass_fds: Sequence[int] = (),
) -> T:
    """Run `argv` as run() does, but hand its stdout, a pipe, to `consume` as it comes:
    an output too large to hold is read piece by piece. `consume` reads to the end. An
    exit status not in `ok` raises CommandError with the child's stderr. `pass_fds`
    stay open in the child under their numbers."""
    log.debug("run: %s", shlex.join(argv))
    with tempfile.TemporaryFile() as errors:
        try:
            child = subprocess.Popen(list(argv), env={**os.environ, "LC_ALL": "C"},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=errors, pass_fds=tuple(pass_fds))  # fmt: skip
        except OSError as e:
            raise CommandError(argv, 127, f"cannot run {argv[0]}: {e.strerror}") from e
        try:
            assert child.stdout is not None
            with child.stdout:
                result = consume(child.stdout)
        except BaseException:
            child.kill()
            child.wait()
            raise
        status = child.wait()
        if status not in ok:
            errors.seek(0)
            raise CommandError(argv, status, errors.read().decode(errors="replace"))
        return result
