"""Questions about the running host, answered outside the sandbox (DESIGN §7).

A NOOP step has its own, empty pid namespace and no systemd: `pidof sshd` or
`systemctl is-active nginx` asked in there would answer "no" where the host says "yes".
The interceptor sends such questions here instead, through FIFOs in the view (bash can
open a FIFO; it cannot open a socket):

    ask/tickets      one byte per free slot (a-p); a client takes one with read -N 1
    ask/S.req        the question: NUL-terminated words, the command's name first
    ask/S.resp       the answer: "STATUS OUTLEN ERRLEN\\n", then stdout and stderr

Each slot's FIFOs are made anew for every question, so a slow client still reading an
old answer never meets the next one. The asker is a process forked by the dance; it
runs, with a timeout, only the read-only questions it knows below (whatever the rules
say), each through disco.run with a clean environment, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from disco.engine.syscalls import PR_SET_PDEATHSIG, libc
from disco.errors import CommandError
from disco.run import run

SLOTS = "abcdefghijklmnop"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 10.0  # seconds for one question, and for a client to come for its answer
MAX_REQUEST = 64 * 1024
MAX_OUTPUT = 1024 * 1024
_UNIT = re.compile(r"^[A-Za-z0-9@:._\\+-]+$")

# -- what the host is asked --------------------------------------------------------------

_SYSTEMCTL_VERBS = frozenset(
    "is-active is-failed is-enabled status show cat list-units list-unit-files list-timers"
    " list-sockets list-jobs list-dependencies is-system-running get-default"
    " show-environment".split()
)
_SYSTEMCTL_FLAGS = frozenset(
    "-q --quiet --no-pager --no-legend --value -a --all -l --full --plain --system --failed"
    " -r --recursive --reverse --before --after --show-types --no-ask-password -h --help"
    " --version".split()
)
_SYSTEMCTL_VALUED = frozenset("-p --property -t --type --state -n --lines -o --output".split())
_SSD_FLAGS = frozenset("-T --status -q --quiet -v --verbose".split())
_SSD_VALUED = frozenset("-p --pidfile -x --exec -n --name -u --user".split())


def _options(
    args: Sequence[str], flags: frozenset[str], valued: frozenset[str]
) -> list[str] | None:
    """The words of args that are not options, or None if an option is not known."""
    words: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            if name in valued:
                i += 1 if "=" in arg else 2
                continue
            if arg not in flags:
                return None
        else:
            words.append(arg)
        i += 1
    return words if i == len(args) else None


def _systemctl(args: Sequence[str]) -> bool:
    words = _options(args, _SYSTEMCTL_FLAGS, _SYSTEMCTL_VALUED)
    if words is None:
        return False
    if not words:  # --version, --help
        return bool(args)
    return words[0] in _SYSTEMCTL_VERBS and all(_UNIT.match(w) for w in words[1:])


def _service(args: Sequence[str]) -> bool:
    return len(args) == 2 and bool(_UNIT.match(args[0])) and args[1] == "status"


def _start_stop_daemon(args: Sequence[str]) -> bool:
    words = _options(args, _SSD_FLAGS, _SSD_VALUED)
    return words == [] and any(a in ("-T", "--status") for a in args)


def _anything(args: Sequence[str]) -> bool:
    return True  # it only reads /proc, whatever its options


QUESTIONS: dict[str, Callable[[Sequence[str]], bool]] = {
    "pidof": _anything,
    "pgrep": _anything,
    "runlevel": lambda args: not args,
    "systemctl": _systemctl,
    "service": _service,
    "start-stop-daemon": _start_stop_daemon,
}


def is_question(argv: Sequence[str]) -> bool:
    """Whether the asker would put argv to the host."""
    check = QUESTIONS.get(argv[0]) if argv else None
    return check is not None and check(argv[1:])


def answer(argv: Sequence[str]) -> tuple[int, bytes, bytes]:
    """The host's answer to argv: status, stdout, stderr. Anything that is not a known
    question is refused."""
    if not is_question(argv):
        what = " ".join(argv)
        return 1, b"", f"disco: '{what}' is not a question disco asks the host\n".encode()
    program = shutil.which(argv[0], path=HOST_PATH)
    if program is None:
        return 127, b"", f"{argv[0]}: command not found\n".encode()
    env = {"PATH": HOST_PATH, "LANG": os.environ.get("LANG", "C.UTF-8"),
           "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "PAGER": "cat"}  # fmt: skip
    try:
        result = run([program, *argv[1:]], env=env, check=False, timeout=TIMEOUT)
    except CommandError as e:
        return e.returncode, b"", f"{e.stderr}\n".encode()
    clean = [b.replace(b"\0", b"")[:MAX_OUTPUT] for b in (result.stdout, result.stderr)]
    return result.returncode, clean[0], clean[1]


# -- the server --------------------------------------------------------------------------


def _open_writer(path: Path, deadline: float) -> int | None:
    """Open a FIFO for writing once its reader comes, or None after the deadline."""
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.002)
            continue
        os.set_blocking(fd, True)
        return fd
    return None


def _serve(directory: Path, slot: str, tickets: int) -> None:
    req, resp = directory / f"{slot}.req", directory / f"{slot}.resp"
    while True:
        for fifo in (req, resp):
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()
            os.mkfifo(fifo, 0o600)
        os.write(tickets, slot.encode())
        with open(req, "rb") as f:  # blocks until the client opens it
            data = f.read(MAX_REQUEST)
        argv = [os.fsdecode(w) for w in data.split(b"\0")[:-1]]
        try:
            status, out, err = answer(argv)
        except Exception as e:  # noqa: BLE001 -- one bad question must not close the slot
            status, out, err = 1, b"", f"disco: the host could not answer: {e}\n".encode()
        fd = _open_writer(resp, time.monotonic() + TIMEOUT)
        if fd is not None:
            with open(fd, "wb") as f, contextlib.suppress(BrokenPipeError):
                f.write(f"{status} {len(out)} {len(err)}\n".encode() + out + err)


def serve(directory: Path) -> None:
    """Answer questions in `directory` until killed."""
    directory.mkdir(mode=0o755, exist_ok=True)
    fifo = directory / "tickets"
    os.mkfifo(fifo, 0o644)
    tickets = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)  # also a reader: writes never fail
    threads = [
        threading.Thread(target=_serve, args=(directory, slot, tickets), daemon=True)
        for slot in SLOTS
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@contextlib.contextmanager
def asking(directory: Path) -> Iterator[None]:
    """An asker serving `directory` while the block runs (a forked process, killed
    afterwards; it dies with us too)."""
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            serve(directory)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (directory / "tickets").exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(directory, ignore_errors=True)
