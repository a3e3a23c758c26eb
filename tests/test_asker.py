"""The asker (DESIGN §7, issue 21): questions about the running host, from clients that a
step can play with. It takes only whole questions, answers no more than they ask, never
follows a symlink in its FIFOs, and no half question, stolen ticket or unread answer
stalls it. Each asker here serves a folder of the test's own with a short timeout; every
wait of the test's own clients is bounded."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Run
from disco.noop.asker import SLOTS, Asker, asking, parse
from disco.noop.questions import as_asked, is_question, status_only
from test_dance_steps import dance, make_server

LIMIT = 0.5  # the asker's timeout in these tests
WAIT = 20.0  # how long a test's client waits before it calls the asker stalled


@pytest.fixture
def asker(tmp_path: Path) -> Iterator[Asker]:
    with asking(tmp_path / "ask", timeout=LIMIT) as asker:
        yield asker


@pytest.fixture
def ask(asker: Asker) -> Path:
    return asker.directory


@dataclass
class Probe:
    """A process of the host (a canary: the test kills it) with a secret on its command
    line."""

    name: str
    pid: int


@pytest.fixture
def probe() -> Iterator[Probe]:
    name = f"disco-probe-{uuid.uuid4().hex[:8]}"
    script = f"exec -a {name} bash -c 'sleep 120 & wait' x --password=hunter2"
    process = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    try:
        yield Probe(name, process.pid)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # it and its sleep
        process.wait()


def take(ask: Path) -> str:
    """A free slot's ticket, as the interceptor takes one."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for slot in SLOTS:
            fd = os.open(ask / f"{slot}.ticket", os.O_RDWR | os.O_NONBLOCK)
            try:
                byte = os.read(fd, 1)
            except BlockingIOError:
                byte = b""
            finally:
                os.close(fd)
            if byte == slot.encode():
                return slot
        time.sleep(0.05)
    raise AssertionError("the asker has no free slot: stalled")


def question(argv: list[str]) -> bytes:
    return b"".join(w + b"\0" for w in [str(len(argv)).encode(), *map(os.fsencode, argv)])


def read_answer(ask: Path, slot: str) -> tuple[int, bytes, bytes]:
    fd = os.open(ask / f"{slot}.resp", os.O_RDWR | os.O_NONBLOCK)
    data, deadline = b"", time.monotonic() + WAIT
    try:
        while True:
            head, _, rest = data.partition(b"\n")
            if _:
                status, olen, elen = map(int, head.split())
                if len(rest) >= olen + elen:
                    return status, rest[:olen], rest[olen : olen + elen]
            assert time.monotonic() < deadline, "no answer: stalled"
            select.select([fd], [], [], 0.1)
            try:
                data += os.read(fd, 65536)
            except BlockingIOError:
                pass
    finally:
        os.close(fd)


def put(ask: Path, argv: list[str]) -> tuple[int, bytes, bytes]:
    """Ask as the interceptor asks."""
    slot = take(ask)
    with open(ask / f"{slot}.req", "wb") as f:
        f.write(question(argv))
    return read_answer(ask, slot)


# ---- what is asked ----


@pytest.mark.parametrize(
    ("argv", "asked"),
    [
        ("pgrep -f sshd", True),
        ("pgrep -fx sshd", True),
        ("pgrep -u root -x sshd", True),
        ("pgrep -u0 -c sshd", True),
        ("pgrep --euid=0 -d , sshd", True),
        ("pgrep -a sshd", False),  # full command lines
        ("pgrep -fa sshd", False),
        ("pgrep -l sshd", False),  # process names
        ("pgrep --list-full sshd", False),
        ("pgrep --list-name sshd", False),
        ("pgrep -F /proc/kmsg", False),  # a pidfile that would hang it
        ("pgrep -F /dev/zero", False),
        ("pgrep --pidfile=/sys/kernel/notes", False),
        ("pgrep -F /run/no-such.pid", True),
        ("pgrep -u", False),  # its value missing
        ("pidof -x sshd", True),
        ("pidof -s -o 1 sshd", True),
        ("pidof --frob sshd", False),
        ("start-stop-daemon --status --pidfile /proc/kmsg", False),
        ("start-stop-daemon -T -p /dev/kmsg", False),
        ("start-stop-daemon --status --exec /usr/sbin/sshd", True),
        ("systemctl show", False),  # the manager's environment
        ("systemctl show ssh", True),
        ("systemctl cat ssh", False),  # the host's transient units in /run
        ("systemctl show-environment", False),
        ("systemctl -qa is-active ssh", True),
        ("systemctl status --lines=5 ssh", True),
    ],
)
def test_a_host_question_asks_no_more_than_it_should(argv: str, asked: bool) -> None:
    assert is_question(argv.split()) is asked


def test_a_pidfile_that_is_a_fifo_or_leads_to_one_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.pid"
    os.mkfifo(fifo)
    (tmp_path / "link.pid").symlink_to(fifo)
    (tmp_path / "real.pid").write_text("1\n")
    for name in ("fifo.pid", "link.pid"):
        assert not is_question(["pgrep", "-F", str(tmp_path / name)])
        assert not is_question(["start-stop-daemon", "--status", "-p", str(tmp_path / name)])
    assert is_question(["pgrep", "-F", str(tmp_path / "real.pid")])


def test_status_is_asked_without_the_journal_and_said_without_the_processes() -> None:
    assert as_asked(["systemctl", "-q", "status", "ssh"])[-1] == "--lines=0"
    out = (
        "● ssh.service - OpenBSD Secure Shell server\n"
        "     Loaded: loaded (/lib/systemd/system/ssh.service; enabled)\n"
        "     Active: active (running) since Mon 2026-01-05 10:00:00 UTC\n"
        "       Docs: man:sshd(8)\n"
        "             man:sshd_config(5)\n"
        "   Main PID: 456 (sshd)\n"
        "     CGroup: /system.slice/ssh.service\n"
        '             ├─456 "sshd: /usr/sbin/sshd -D [listener]"\n'
        "             └─789 backup --password=hunter2\n"
        "\n"
        "● cron.service - Regular background program processing daemon\n"
        "     CGroup: /system.slice/cron.service\n"
        "             `-512 /usr/sbin/cron -f --secret\n"
        "      Tasks: 1\n"
    ).encode()
    kept = status_only(out).decode()
    assert "hunter2" not in kept and "sshd -D" not in kept and "secret" not in kept
    assert "man:sshd_config(5)" in kept and "Main PID: 456 (sshd)" in kept
    assert "CGroup: /system.slice/cron.service" in kept and "Tasks: 1" in kept


def test_only_a_whole_question_is_taken() -> None:
    assert parse(question(["pidof", "sshd"])) == ["pidof", "sshd"]
    assert parse(question(["pidof", ""])) == ["pidof", ""]
    whole = question(["pidof", "sshd"])
    for bad in (whole[:-1], whole[:-3], whole + whole, b"", b"\0", b"2\0pidof\0", b"x\0pidof\0"):
        assert parse(bad) is None, bad


# ---- the asker, served ----


def test_a_question_gets_the_hosts_pids_and_never_a_command_line(ask: Path, probe: Probe) -> None:
    assert put(ask, ["pgrep", "-f", f"^{probe.name}"]) == (0, f"{probe.pid}\n".encode(), b"")
    status, out, err = put(ask, ["pgrep", "-a", "-f", f"^{probe.name}"])
    assert status == 1 and b"hunter2" not in out + err
    assert b"is not a question disco asks the host" in err


def test_half_questions_in_every_slot_stall_nothing(ask: Path) -> None:
    """Every slot taken by a client that writes half a question and then nothing, its
    writer kept open: each is refused once the timeout is past, and the next question is
    answered."""
    held = []
    try:
        for _ in SLOTS:
            slot = take(ask)
            held.append(os.open(ask / f"{slot}.resp", os.O_RDWR | os.O_NONBLOCK))
            held.append(os.open(ask / f"{slot}.req", os.O_WRONLY))
            os.write(held[-1], question(["pidof", "sshd"])[:5])
        for resp in held[::2]:
            select.select([resp], [], [], WAIT)
            assert b"not a whole question" in os.read(resp, 4096)
        assert put(ask, ["pidof", "disco-no-such-process"])[0] == 1
    finally:
        for fd in held:
            os.close(fd)


def test_tickets_taken_and_never_used_come_back(ask: Path) -> None:
    for _ in SLOTS:
        take(ask)
    assert put(ask, ["pidof", "disco-no-such-process"])[0] == 1


def test_answers_never_read_stall_nothing(ask: Path) -> None:
    for _ in SLOTS:
        slot = take(ask)
        with open(ask / f"{slot}.req", "wb") as f:
            f.write(question(["pidof", "disco-no-such-process"]))
    assert put(ask, ["pidof", "disco-no-such-process"])[0] == 1


def test_tickets_forged_by_a_step_are_swept_before_the_next(asker: Asker) -> None:
    """A step that took every ticket, asked in half the slots without reading the answer
    and wrote tickets of its own (right ones, and junk) into every ticket FIFO: after the
    sweep between steps, no client of the next step takes a forged ticket."""
    ask = asker.directory
    for index, _ in enumerate(SLOTS):
        slot = take(ask)
        if index % 2:
            with open(ask / f"{slot}.req", "wb") as f:
                f.write(question(["pidof", "disco-no-such-process"]))
    for slot in SLOTS:
        fd = os.open(ask / f"{slot}.ticket", os.O_RDWR)
        os.write(fd, slot.encode() if slot < "e" else slot.encode() + b"\xff" * 100)
        os.close(fd)
    asker.sweep()
    for _ in range(3):
        assert put(ask, ["pidof", "disco-no-such-process"])[0] == 1


def test_a_symlink_planted_in_a_slot_is_never_followed(ask: Path, tmp_path: Path) -> None:
    """A client that put a symlink where the answer goes (to a file of the host's) or
    the question comes from (to a FIFO that a process of the host reads)."""
    canary = tmp_path / "canary"
    canary.write_text("precious\n")
    fifo = tmp_path / "hosts-fifo"
    os.mkfifo(fifo)
    slot = take(ask)
    (ask / f"{slot}.resp").unlink()
    (ask / f"{slot}.resp").symlink_to(canary)
    with open(ask / f"{slot}.req", "wb") as f:
        f.write(question(["pidof", "disco-no-such-process"]))
    slot = take(ask)
    (ask / f"{slot}.req").unlink()
    (ask / f"{slot}.req").symlink_to(fifo)
    assert put(ask, ["pidof", "disco-no-such-process"])[0] == 1
    assert canary.read_text() == "precious\n"
    with pytest.raises(OSError):  # ENXIO: nobody opened it to read
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


# ---- in a dance ----


HOSTILE = """\
# Take every ticket, write half a question in half the slots, forge a ticket for each.
for s in a b c d e f g h i j k l m n o p; do
    exec {t}<>/var/disco/ask/$s.ticket
    IFS= read -r -t 5 -N 1 -u "$t" got
    case $s in [a-h]) [[ $got == "$s" ]] && printf '2\\0pid' > /var/disco/ask/$s.req ;; esac
    printf '%s' "$s$s" >&$t
    exec {t}<&-
done
echo hostile done
"""


def test_a_step_that_stalls_every_slot_leaves_the_next_steps_questions_answered(
    cmd: Run, tmp_path: Path, probe: Probe, real_root_unchanged: None
) -> None:
    name = probe.name
    script = f'echo "pgrep: $(pgrep -f ^{name}) $?"\necho "list: $(pgrep -af ^{name}) $?"\n'
    server = make_server(
        tmp_path / "srv",
        {
            "a": {"scripts/10-hostile.sh": HOSTILE},
            "b": {"requires": "a\n", "scripts/10-ask.sh": script},
        },
    )
    result = dance(cmd, server, Path("/"))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert "hostile done" in out
    assert f"pgrep: {probe.pid} 0" in out  # the host's answer, once the slots came back
    assert "list:  1" in out  # pgrep -a is not asked: no command line, the secret least
    assert "hunter2" not in result.stdout + result.stderr
