"""The questions about the running host that the asker puts to it, and what it answers
(DESIGN §7; the asker is asker.py).

Only read-only questions it knows are run, whatever the rules say, each with a timeout,
through disco.run with a clean environment, and the answer says no more than the
question asks: pids and counts of processes, never their names or command lines (pgrep
-l/-a are refused, the processes of a unit's cgroup and its journal are cut from
`systemctl status`). A pidfile is read only if it is a regular file (or none) outside
/proc, /sys and /dev: a FIFO or /proc/kmsg would hang the question, or take what a
process of the host waits for.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable, Sequence

from disco.errors import CommandError
from disco.run import run

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 10.0  # seconds a question may run
MAX_OUTPUT = 1024 * 1024
_UNIT = re.compile(r"^[A-Za-z0-9@:._\\+-]+$")
_NOT_FILES = ("/proc", "/sys", "/dev")  # a pidfile there is no file

# -- what the host is asked --------------------------------------------------------------

# Not cat (the host's transient units in /run) nor show-environment (the manager's).
_SYSTEMCTL_VERBS = frozenset(
    "is-active is-failed is-enabled status show list-units list-unit-files list-timers"
    " list-sockets list-jobs list-dependencies is-system-running get-default".split()
)
_SYSTEMCTL_FLAGS = frozenset(
    "-q --quiet --no-pager --no-legend --value -a --all -l --full --plain --system --failed"
    " -r --recursive --reverse --before --after --show-types --no-ask-password -h --help"
    " --version".split()
)
_SYSTEMCTL_VALUED = frozenset("-p --property -t --type --state -n --lines -o --output".split())
_SSD_FLAGS = frozenset("-T --status -q --quiet -v --verbose".split())
_SSD_VALUED = frozenset("-p --pidfile -x --exec -n --name -u --user".split())
# Not -l/--list-name nor -a/--list-full: other processes' names and command lines.
_PGREP_FLAGS = frozenset(
    "-v --inverse -w --lightweight -c --count -f --full -i --ignore-case -n --newest -o"
    " --oldest -x --exact -L --logpidfile -A --ignore-ancestors -h --help -V --version".split()
)
_PGREP_VALUED = frozenset(
    "-d --delimiter -g --pgroup -G --group -O --older -P --parent -s --session -t --terminal"
    " -u --euid -U --uid -F --pidfile -r --runstates --cgroup --ns --nslist".split()
)
_PIDOF_FLAGS = frozenset("-c -n -q -s -x -z -h".split())
_PIDOF_VALUED = frozenset("-o -d".split())
_PIDFILES = frozenset("-F --pidfile -p".split())

Options = tuple[list[str], list[tuple[str, str]]]  # the words, and (option, value) pairs


def _options(args: Sequence[str], flags: frozenset[str], valued: frozenset[str]) -> Options | None:
    """The words of args that are not options, and the options' values; None if an option
    is not known. As getopt_long: short options may be combined (-fx) and take a value
    attached (-u0) or as the next argument, long ones as --name=value or the next; "--"
    ends the options."""
    words: list[str] = []
    values: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            return words + list(args[i:]), values
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in valued:
                if not eq:
                    if i == len(args):
                        return None
                    value, i = args[i], i + 1
                values.append((name, value))
            elif eq or name not in flags:
                return None
        elif arg.startswith("-") and arg != "-":
            for j in range(1, len(arg)):
                name = "-" + arg[j]
                if name in valued:
                    value = arg[j + 1 :]
                    if not value:
                        if i == len(args):
                            return None
                        value, i = args[i], i + 1
                    values.append((name, value))
                    break
                if name not in flags:
                    return None
        else:
            words.append(arg)
    return words, values


def _pidfiles_ok(values: list[tuple[str, str]]) -> bool:
    return all(_pidfile(value) for name, value in values if name in _PIDFILES)


def _pidfile(path: str) -> bool:
    """Whether the host's file at `path` (its own symlinks resolved) is a regular file, or
    none, outside /proc, /sys and /dev."""
    real = os.path.realpath(path)
    if not path.startswith("/") or any(real == t or real.startswith(t + "/") for t in _NOT_FILES):
        return False
    try:
        return stat.S_ISREG(os.stat(real).st_mode)
    except FileNotFoundError:
        return True  # the question's answer: nothing runs by that pidfile
    except OSError:
        return False


def _systemctl(args: Sequence[str]) -> bool:
    parsed = _options(args, _SYSTEMCTL_FLAGS, _SYSTEMCTL_VALUED)
    if parsed is None:
        return False
    words = parsed[0]
    if not words:  # --version, --help
        return bool(args)
    if words[0] == "show" and len(words) == 1:
        return False  # the manager's own properties: its environment among them
    return words[0] in _SYSTEMCTL_VERBS and all(_UNIT.match(w) for w in words[1:])


def _service(args: Sequence[str]) -> bool:
    return len(args) == 2 and bool(_UNIT.match(args[0])) and args[1] == "status"


def _start_stop_daemon(args: Sequence[str]) -> bool:
    parsed = _options(args, _SSD_FLAGS, _SSD_VALUED)
    if parsed is None or parsed[0]:
        return False
    status = any(a in ("-T", "--status") for a in args)
    return status and _pidfiles_ok(parsed[1])


def _pgrep(args: Sequence[str]) -> bool:
    parsed = _options(args, _PGREP_FLAGS, _PGREP_VALUED)
    return parsed is not None and _pidfiles_ok(parsed[1])


def _pidof(args: Sequence[str]) -> bool:
    return _options(args, _PIDOF_FLAGS, _PIDOF_VALUED) is not None


QUESTIONS: dict[str, Callable[[Sequence[str]], bool]] = {
    "pidof": _pidof,
    "pgrep": _pgrep,
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
    asked = as_asked(argv)
    program = shutil.which(asked[0], path=HOST_PATH)
    if program is None:
        return 127, b"", f"{asked[0]}: command not found\n".encode()
    env = {"PATH": HOST_PATH, "LANG": os.environ.get("LANG", "C.UTF-8"),
           "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "PAGER": "cat"}  # fmt: skip
    try:
        result = run([program, *asked[1:]], env=env, check=False, timeout=TIMEOUT)
    except CommandError as e:
        return e.returncode, b"", f"{e.stderr}\n".encode()
    out = result.stdout
    if asked[0] == "systemctl" and _verb(asked[1:]) == "status":
        out = status_only(out)
    clean = [b.replace(b"\0", b"")[:MAX_OUTPUT] for b in (out, result.stderr)]
    return result.returncode, clean[0], clean[1]


def _verb(args: Sequence[str]) -> str | None:
    parsed = _options(args, _SYSTEMCTL_FLAGS, _SYSTEMCTL_VALUED)
    return parsed[0][0] if parsed is not None and parsed[0] else None


def as_asked(argv: Sequence[str]) -> list[str]:
    """What is run for argv: `systemctl status` without the journal's lines (other
    processes' words), and so `service NAME status` on a host that runs systemd (which
    service(8) turns into that systemctl status)."""
    if argv[0] == "service" and os.path.isdir("/run/systemd/system"):
        return ["systemctl", "--lines=0", "status", f"{argv[1].removesuffix('.sh')}.service"]
    if argv[0] == "systemctl" and _verb(argv[1:]) == "status":
        return ["systemctl", *argv[1:], "--lines=0"]  # the last --lines wins
    return list(argv)


_KEY = re.compile(rb"^\s+([A-Za-z][A-Za-z ]*): ")


def status_only(out: bytes) -> bytes:
    """`systemctl status` output without the tree of processes below each "CGroup:" line: their
    command lines are theirs, not the unit's status."""
    kept, tree = [], False
    for line in out.split(b"\n"):
        key = _KEY.match(line)
        if key is not None or not line.startswith((b" ", b"\t")):
            tree = key is not None and key.group(1) == b"CGroup"
        elif tree:
            continue
        kept.append(line)
    return b"\n".join(kept)
