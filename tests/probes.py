"""Hostile probes of the sandbox (issue 21, DESIGN §7 "Isolation by construction").

A probe is one module whose script tries one way out of its step and says so when it gets
out: a line `PROBE-ESCAPED <name> <what>` on stdout, and/or a canary of its own on the host
(a uniquely named file, key, cgroup, binfmt entry, IPC object or mount; a connection to a
listener of the test's; a canary process of the test's signalled). Every probe ends with
`PROBE-DONE <name>`, so a probe that did not run cannot pass.

Each probe is harmless when it succeeds: it creates or removes only canaries of its own,
reads (never writes) devices and kernel settings (`access(W_OK)` instead of a write), and
signals nothing but a process the test started. Escapes through a process (nsenter, /proc,
ptrace, kill) target only disco's own processes of this dance (found by walking up from
the probe to the dance that carries the environment's token) or the test's canaries; in
the host's pid namespace a probe says so and touches no other process. `environment()`
removes every canary of its token when it ends, even when a test failed.

Many probes share one dance (`run_probes`): one module each, in the catalog's order, run
once per mode (MODES); each probe's test then looks at its own lines and canaries.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import BIN, fingerprint, refuse_live_dance_on_this_machine
from disco.engine.mounts import CAPS
from probes_host import Host, make_scratch_root, start_host

NODE = "probe-node.example"
MODES = ("noop-host", "noop-scratch", "live-scratch")
SCRATCH = ("noop-scratch", "live-scratch")
STEP_TIMEOUT = 20  # disco's --timeout for every step of a probe dance
DANCE_TIMEOUT = 240.0  # a whole dance of many probes; past it the dance hangs: an escape
SOLO_TIMEOUT = 30.0  # a dance of a few modules

x86_64 = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 system calls")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, namespaces)")

# -- the probes' own code ------------------------------------------------------------------

# What a terminal adds to a line: escapes, carriage returns, disco's progress line.
_TERMINAL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\r|\[module \d+ of \d+: [^\]]*\]")

SH_HEAD = """\
# A hostile probe of disco's sandbox (tests/probes.py): harmless when it gets out.
P=@NAME@
export PROBE_SH=$$
escaped() { echo "PROBE-ESCAPED $P $*"; }
"""
SH_TAIL = 'echo "PROBE-DONE $P"\nexit 0\n'

PY_HEAD = r'''
import ctypes, errno, fcntl, os, signal, socket, stat, struct, sys
NAME, UUID, TOKEN = "@NAME@", "@UUID@", "@TOKEN@"
CANARY, SECRET_FILE, SECRET = "@CANARY@", "@SECRET_FILE@", b"@SECRET@"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_RDONLY, MS_REMOUNT, MS_BIND, MNT_DETACH = 1, 32, 4096, 2
KEEP = 2 | 4 | 8 | 1024 | 2048 | 4096  # nosuid nodev noexec noatime nodiratime relatime
SCRIPT = int(os.environ.get("PROBE_SH") or os.getppid())  # the probe's bash


def escaped(*what):
    print("PROBE-ESCAPED", NAME, *what, flush=True)


def call(nr, *args):
    """A system call by number: (result, errno)."""
    r = libc.syscall(ctypes.c_long(nr), *args)
    return r, (ctypes.get_errno() if r < 0 else 0)


def mount(source, target, fstype, flags=0, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    return libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0


def remount_rw(path, bind=True):
    """Remount a mount read-write, keeping its other flags (as mount -o remount,rw)."""
    flags = MS_REMOUNT | (MS_BIND if bind else 0) | (os.statvfs(path).f_flag & KEEP)
    return mount(None, path, None, flags)


def umount(path):
    return libc.umount2(os.fsencode(path), MNT_DETACH) == 0


def mounts():
    """(mount point, per-mount options, fs type, source) of every mount we see."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            a = line.split()
            at = a.index("-")
            point = a[4].encode().decode("unicode_escape")
            found.append((point, a[5].split(","), a[at + 1], a[at + 2]))
    return found


def fresh_dir(tag=""):
    d = f"/tmp/{NAME}-{UUID}{tag}"
    os.makedirs(d, exist_ok=True)
    return d


def create(path):
    """Create a canary file: True if it worked."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return True
    except OSError:
        return False


def read(path, n=4096):
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return None


def sees_secret():
    """Whether disco's state (where the secret is) is within reach."""
    return read(SECRET_FILE) == SECRET


def cmdline(pid):
    got = read(f"/proc/{pid}/cmdline", 65536)
    return (got or b"").replace(b"\0", b" ").decode(errors="replace")


def ppid(pid):
    for line in (read(f"/proc/{pid}/status") or b"").decode(errors="replace").splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def own_tree():
    """The probe's bash and what it started."""
    parent = {int(p): ppid(p) for p in os.listdir("/proc") if p.isdigit()}
    mine, grown = {SCRIPT}, True
    while grown:
        grown = False
        for p, q in parent.items():
            if q in mine and p not in mine:
                mine.add(p)
                grown = True
    return mine


def sandbox_init(pid):
    """Whether `pid` is the sandbox's own init (pid 1 of the steps' pid namespace): named
    init, not disco's zygote, and out of the step's reach (no signal, no root, no fds)."""
    if pid != 1 or host_pidns() or (read("/proc/1/comm") or b"").strip() != b"init":
        return False
    if "zygote" in cmdline(1) or TOKEN in cmdline(1):
        return False
    try:
        os.kill(1, 0)
        return False
    except PermissionError:
        pass
    for path in ("/proc/1/root/.", "/proc/1/fd/0"):
        try:
            os.stat(path)
            return False
        except PermissionError:
            pass
        except FileNotFoundError:
            pass
    return True


def foreign():
    """What the step sees that is not its own, but for the sandbox's init."""
    own = own_tree()
    return sorted(int(p) for p in os.listdir("/proc")
                  if p.isdigit() and int(p) not in own and not sandbox_init(int(p)))


def host_pidns():
    return os.readlink("/proc/self/ns/pid") == "@NS_PID@"


def disco_processes():
    """disco's processes above the probe (zygote, disco) that it can see; never further
    up than the dance of this test, which carries TOKEN."""
    found, pid, own = [], ppid(SCRIPT), own_tree()
    for _ in range(64):
        if pid <= 0:
            break
        line = cmdline(pid)
        comm = (read(f"/proc/{pid}/comm") or b"").strip()
        if TOKEN in line or "import zygote" in line or comm == b"disco-init":
            found.append(pid)
        if TOKEN in line:
            break
        pid = ppid(pid)
    if not host_pidns() and 1 not in own and 1 not in found:
        found.append(1)  # pid 1 of a namespace of disco's own
    return [p for p in found if p not in own]


def reachable(pid, token):
    """Whether `pid` may be the test's canary process: not the probe's own, and either not
    in our /proc or carrying the canary's token (never another process)."""
    if pid in own_tree():
        return False
    line = cmdline(pid)
    return line == "" or token in line
'''


def py(body: str) -> str:
    """A probe's Python part, run by the python3 of the root, after PY_HEAD."""
    return f"python3 - <<'PYEOF'\n{PY_HEAD}\n{body.strip()}\nPYEOF\n"


@dataclass(frozen=True)
class Probe:
    name: str
    klass: str  # the class of escape it tries (the issue's)
    what: str  # what it tries, and why it must fail
    script: str  # bash, with @KEY@ placeholders (Env.values)
    modes: tuple[str, ...] = MODES
    # A module run right after the probe's own ("p05-NAME-2"): its files by path.
    then: Mapping[str, str] = field(default_factory=dict)
    # Escapes the host sees after the dance (beyond canaries named after the probe).
    host: Callable[[Env], list[str]] | None = None
    # Why the probe cannot get out on this machine whatever the sandbox ("": it can).
    testable: Callable[[], str] = lambda: ""


@dataclass
class Result:
    returncode: int | None  # None: killed when it ran out of time
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """stdout's lines; on a terminal without disco's progress line and escapes."""
        return [_TERMINAL.sub("", line).lstrip(" ") for line in self.stdout.splitlines()]


@dataclass
class Env:
    """One mode's world for a dance of probes: the host's side of each probe."""

    mode: str
    base: Path  # test-owned, on the host
    host: Host
    root: Path  # "/" or the scratch root
    ro_inside: str  # the read-only filesystem, as the sandbox shows it
    result: Result = field(default_factory=lambda: Result(None, "", ""))
    mounts_before: str = ""
    print_before: str = ""

    @property
    def uuid(self) -> str:
        return self.host.uuid

    @property
    def canary(self) -> Path:
        return self.host.canary

    @property
    def noop(self) -> bool:
        return self.mode.startswith("noop")

    @property
    def values(self) -> dict[str, str]:
        return {**self.host.values, "RO": self.ro_inside}


def host_may(cap: str) -> Callable[[], str]:
    """ "" if this machine's root holds capability `cap` (so a step could take it), else why
    a probe of it cannot get out here."""

    def why() -> str:
        held = int(Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0], 16)
        if held >> CAPS.index(cap) & 1:
            return ""
        return f"this machine's root lacks CAP_{cap.upper()}: no step can take it here"

    return why


def render(probe: Probe, text: str, env: Env) -> str:
    out = text.replace("@NAME@", probe.name)
    for key, value in env.values.items():
        out = out.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z][A-Z0-9_]*@", out)
    assert not left, f"{probe.name}: no value for {left}"
    return out


def module_names(probes: Sequence[Probe]) -> list[tuple[str, Probe]]:
    """Module names in the catalog's order (disco dances unrelated modules by name)."""
    return [(f"p{i:02d}-{p.name}", p) for i, p in enumerate(probes, 1)]


def write_server(where: Path, modules: Mapping[str, Mapping[str, str]]) -> Path:
    for name, files in modules.items():
        for rel, text in files.items():
            path = where / "modules" / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (where / "parameters" / NODE / "modules").mkdir(parents=True, exist_ok=True)
        (where / "parameters" / NODE / "modules" / name).touch()
    return where


def server_of(env: Env, probes: Sequence[Probe], where: Path) -> Path:
    modules: dict[str, dict[str, str]] = {}
    for name, probe in module_names(probes):
        modules[name] = {
            "scripts/10-probe.sh": render(probe, SH_HEAD + probe.script + SH_TAIL, env)
        }
        if probe.then:
            then = probe.then.items()
            modules[f"{name}-2"] = {render(probe, k, env): render(probe, v, env) for k, v in then}
    return write_server(where, modules)


def dance_argv(env: Env, server: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment of `disco dance` of NODE from `server` in `env`'s mode."""
    argv = [str(BIN / "disco"), "dance", "--server", str(server), "--node", NODE,
            "--state-dir", str(env.host.state), "--timeout", str(STEP_TIMEOUT), *args]  # fmt: skip
    if env.noop:
        argv.append("--noop")
    if env.mode in SCRATCH:
        argv += ["--root", str(env.root)]
    environ = {**os.environ, "NO_COLOR": "1", "NOOP": "", "DISCO_PROBE_ENV": env.uuid}
    refuse_live_dance_on_this_machine(("disco", *argv[1:]), environ)
    return argv, environ


def dance(env: Env, server: Path, *args: str, timeout: float = SOLO_TIMEOUT) -> Result:
    """The dance of NODE from `server` in `env`'s mode."""
    return run_command(*dance_argv(env, server, *args), timeout)


def run_command(argv: list[str], environ: dict[str, str], timeout: float) -> Result:
    """A disco command in a session of its own (a probe's `kill 0` reaches no process of
    the test's), killed with its processes if it runs past `timeout`: it hangs."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=environ, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        return Result(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: ours alone
        out, err = proc.communicate()
        return Result(None, out, err + f"\n[{argv[0]} ran past {timeout:g} s: killed]")


def run_probes(env: Env, probes: Sequence[Probe], timeout: float = DANCE_TIMEOUT) -> Result:
    server = server_of(env, probes, env.base / f"server-{secrets.token_hex(3)}")
    return dance(env, server, timeout=timeout)


AFTER = SH_HEAD.replace("@NAME@", "after") + 'echo "PROBE-AFTER"\n'


def solo(env: Env, probe: Probe, *args: str, after: str = AFTER) -> Result:
    """A dance of `probe` alone (it may stop or hang a dance), then a module `zz-after`."""
    server = server_of(env, [probe], env.base / f"server-{secrets.token_hex(3)}")
    write_server(server, {"zz-after": {"scripts/10-after.sh": after}})
    env.result = dance(env, server, *args)
    return env.result


def stopped(result: Result) -> list[str]:
    """How the dance failed to go on past the probe: it hung, died, or skipped the rest."""
    if result.returncode is None:
        return ["the dance hung"]
    if result.returncode not in (0, 1):
        return [f"the dance died (exit {result.returncode})"]
    return [] if "PROBE-AFTER" in result.lines else ["the dance stopped before the next module"]


# -- an environment per mode -----------------------------------------------------------------


@contextmanager
def environment(mode: str, base: Path) -> Iterator[Env]:
    """The host side of a probe dance in `mode`: canaries, listeners, a read-only
    filesystem holding a socket, a FIFO and a lock of the test's, and (scratch modes) a
    scratch root with that filesystem at /srv/ro; everything undone afterwards."""
    with ExitStack() as stack:
        root = Path("/")
        ro_inside = ""
        if mode in SCRATCH:
            root = stack.enter_context(make_scratch_root(base / "root"))
            host = stack.enter_context(start_host(base, root / "srv/ro"))
            ro_inside = "/srv/ro"
        else:
            host = stack.enter_context(start_host(base, base / "ro"))
            ro_inside = str(base / "ro")
        env = Env(mode, base, host, root, ro_inside)
        env.mounts_before = Path("/proc/self/mountinfo").read_text()
        if mode == "noop-host":
            env.print_before = fingerprint()
        yield env


class Dances:
    """One dance per mode for the probes of a test file: run when a test first asks for its
    mode, undone with all its canaries when the file's tests are done."""

    def __init__(
        self,
        factory: pytest.TempPathFactory,
        name: str,
        run: Callable[[Env], Result],
        undo: Callable[[Env], object] | None = None,
    ) -> None:
        self.factory, self.name, self.run, self.undo = factory, name, run, undo
        self.envs: dict[str, Env] = {}
        self.stack = ExitStack()

    def __call__(self, mode: str) -> Env:
        if mode not in self.envs:
            base = self.factory.mktemp(f"{self.name}-{mode}")
            env = self.stack.enter_context(environment(mode, base))
            if self.undo is not None:
                self.stack.callback(self.undo, env)
            env.result = self.run(env)
            self.envs[mode] = env
        return self.envs[mode]

    def __enter__(self) -> Dances:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


def applicable(probes: Sequence[Probe], env: Env) -> list[Probe]:
    return [p for p in probes if env.mode in p.modes]


def dance_of(probes: Sequence[Probe]) -> Callable[[Env], Result]:
    """One dance of the probes that apply to an environment's mode."""
    return lambda env: run_probes(env, applicable(probes, env))


def pairs(probes: Sequence[Probe]) -> list[object]:
    """(mode, probe) parameters of a probe test, mode by mode, for each mode a probe
    applies to."""
    return [pytest.param(m, p, id=f"{m}-{p.name}") for m in MODES for p in probes if m in p.modes]


def escapes(env: Env, probe: Probe) -> list[str]:
    """What of `probe` got out: its own lines, canaries named after it, its host check."""
    lines = env.result.lines
    found = [line for line in lines if line.startswith(f"PROBE-ESCAPED {probe.name} ")]
    for entry in sorted(os.listdir(env.canary)):
        if entry.startswith(f"{probe.name}-{env.uuid}"):
            found.append(f"host canary {env.canary / entry}")
        elif entry == f"_{probe.name}" and os.listdir(env.canary / entry):
            found.append(f"host directory written: {os.listdir(env.canary / entry)}")
    if probe.host is not None:
        found += probe.host(env)
    return found


def assert_held(env: Env, probe: Probe, also: Sequence[str] = ()) -> None:
    """The probe ran to its end, and nothing of it got out."""
    why = probe.testable()
    if why:
        pytest.skip(why)
    lines = env.result.lines
    assert f"PROBE-DONE {probe.name}" in lines, (
        f"{probe.name} did not run to its end ({stopped(env.result) or 'exit 0'}):\n"
        + env.result.stderr[-3000:]
    )
    found = [*also, *escapes(env, probe)]
    assert not found, f"{probe.name} ({probe.klass}: {probe.what}) escaped:\n" + "\n".join(found)


def host_changes(env: Env) -> list[str]:
    """What the dance changed on the host beyond its canaries: the real root (NOOP on /),
    a mount under the test's folder (a read-only one now read-write), the hostname."""
    found = []
    if env.mode == "noop-host" and fingerprint() != env.print_before:
        found.append("the real root changed (/etc, and the entries of /, /root, /var, ...)")
    before = set(env.mounts_before.splitlines())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line not in before and (env.uuid in line or str(env.base) in line):
            found.append(f"a mount of the test's, new or changed, on the host: {line}")
    if os.uname().nodename != env.values["HOSTNAME"]:
        found.append(f"the host's name is now {os.uname().nodename}")
    return found
