"""The host's side of the hostile probes (probes.py): what a probe tries to reach (canary
processes, listeners, a read-only filesystem with a socket, a FIFO and a lock, disco's
hidden state, IPC objects of the host's), the facts a probe needs baked into its script,
and the checks and clean-up of every canary a probe could leave, by the token of its
environment. Everything here is the test's own; nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import socket
import stat
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conftest import scratch_skeleton

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
KEYCTL_GET_KEYRING_ID, KEYCTL_SEARCH, KEYCTL_INVALIDATE = 0, 10, 21
KEY_SPEC_SESSION, KEY_SPEC_USER = -3, -4
IPC_CREAT, IPC_RMID = 0o1000, 0
NAME_TO_HANDLE_AT = 303  # x86_64
PYTHON = "/usr/bin/python3"  # the root's own, as the probes run it
# A canary process: its command line holds a secret, its name (comm) another.
CANARY_CODE = (
    "import ctypes, sys, time; ctypes.CDLL(None).prctl(15, sys.argv[3].encode(), 0, 0, 0);"
    " time.sleep(3600)"
)
NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")


def keyctl(*args: int | bytes) -> int:
    return int(libc.syscall(ctypes.c_long(250), *args))


@dataclass
class Host:
    uuid: str
    base: Path
    canary: Path  # where a probe's host canary files land when it gets out
    state: Path  # the dance's state dir: hidden from a step (noop-host), or outside its root
    ro: Path  # the read-only tmpfs, on the host
    secret: str
    comm_secret: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    listeners: dict[str, socket.socket] = field(default_factory=dict)
    fifo: int = -1
    lock: int = -1
    binfmt: Path | None = None  # the host's binfmt_misc, held mounted (unmounted, it forgets)
    messages: dict[str, list[str]] = field(default_factory=dict)  # by listener
    ipc: dict[str, tuple[str, int]] = field(default_factory=dict)  # name: (kind, key)
    values: dict[str, str] = field(default_factory=dict)

    def token(self, what: str) -> str:
        return f"disco-probe-{self.uuid}-{what}"

    def heard(self, listener: str, probe: str) -> list[str]:
        """What connections to one of our listeners sent that names `probe`."""
        sock, got = self.listeners[listener], self.messages.setdefault(listener, [])
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                break
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    got.append(conn.recv(256).decode(errors="replace"))
        return [f"the host's {listener} listener got {m!r}" for m in got if m.startswith(probe)]

    def fifo_got(self) -> str:
        try:
            return os.read(self.fifo, 65536).decode(errors="replace")
        except BlockingIOError:
            return ""


def spawn_canary(token: str, comm: str) -> subprocess.Popen[bytes]:
    secret = token.replace("disco-probe", "secret")
    return subprocess.Popen([PYTHON, "-c", CANARY_CODE, token, f"--secret={secret}", comm],
                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def _handle(path: Path) -> str:
    """name_to_handle_at(path) as hex, for open_by_handle_at in a probe."""
    buf = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("<I", buf, 0, 128)
    mount_id = ctypes.c_int()
    r = libc.syscall(NAME_TO_HANDLE_AT, -100, os.fsencode(path), buf, ctypes.byref(mount_id), 0)
    if r != 0:
        return ""
    (size,) = struct.unpack_from("<I", buf.raw, 0)
    return buf.raw[: 8 + size].hex()


def _dev_of_root() -> tuple[int, int, str]:
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    name = ""
    with contextlib.suppress(OSError):
        for line in Path(f"/sys/dev/block/{major}:{minor}/uevent").read_text().splitlines():
            if line.startswith("DEVNAME="):
                name = line.split("=", 1)[1]
    return major, minor, name


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _keys(uuid: str) -> tuple[int, int]:
    """SysV keys of the probes' own objects and of the host's (from the token)."""
    base = int(uuid[:6], 16) << 4 | 0x1000000
    return base, base + 1


@contextlib.contextmanager
def start_host(base: Path, ro: Path) -> Iterator[Host]:
    """Everything a probe dance reaches for on the host, with `ro` a read-only tmpfs of
    ours holding a listening socket, a FIFO with a reader, and a file we hold locked."""
    uuid = secrets.token_hex(6)
    canary, state = base / "canary", base / f"state-{uuid}"
    canary.mkdir(parents=True)
    state.mkdir()
    host = Host(uuid, base, canary, state, ro, secrets.token_hex(16), f"dsec{secrets.token_hex(5)}")
    try:
        (state / f"probe-secret-{uuid}").write_text(host.secret)
        os.mkfifo(base / "fifo", 0o600)  # a FIFO nobody writes: opened for reading, it hangs
        ro.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "disco-probe-ro",
                        str(ro)], check=True)  # fmt: skip
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(ro / "sock"))
        host.listeners["ro"] = sock
        os.mkfifo(ro / "fifo", 0o666)
        host.fifo = os.open(ro / "fifo", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        (ro / "lock").write_text("locked by the test\n")
        host.lock = os.open(ro / "lock", os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(host.lock, fcntl.LOCK_EX)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        # binfmt_misc drops its entries when its last mount goes (a step's, at its end):
        # held mounted here, an entry a step registered in the host's is still there after.
        (base / "binfmt").mkdir()
        if _run("mount", "-t", "binfmt_misc", "none", str(base / "binfmt")).returncode == 0:
            host.binfmt = base / "binfmt"
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        host.listeners["tcp"] = tcp
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        abstract.bind("\0" + host.token("abstract"))
        host.listeners["abstract"] = abstract
        for s in host.listeners.values():
            s.listen(64)
            s.setblocking(False)
        for what in ("canary", "victim"):
            host.procs[what] = spawn_canary(host.token(what), host.comm_secret)
        step_shm, host_shm = _keys(uuid)
        host.ipc = {"shm": ("shm", step_shm), "shm-host": ("shm", host_shm),
                    "msg": ("msg", step_shm), "msg-host": ("msg", host_shm)}  # fmt: skip
        if (
            libc.shmget(host_shm, 4096, IPC_CREAT | 0o600) < 0
            or libc.msgget(host_shm, IPC_CREAT | 0o600) < 0
        ):
            raise OSError(ctypes.get_errno(), "cannot make the host's SysV canaries")
        Path(f"/dev/shm/{host.token('host')}").write_text("the host's\n")
        libc.mq_open.restype = ctypes.c_int
        mq = libc.mq_open(f"/{host.token('host')}".encode(), os.O_CREAT | os.O_RDWR, 0o600, None)
        if mq >= 0:
            libc.mq_close(mq)
        host.values = _values(host, tcp.getsockname()[1])
        yield host
    finally:
        cleanup_host(host)


def _values(host: Host, port: int) -> dict[str, str]:
    major, minor, devname = _dev_of_root()
    ses = keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION, 0)
    run = os.stat("/run")
    values = {
        "UUID": host.uuid, "TOKEN": host.state.name, "CANARY": str(host.canary),
        "STATE": str(host.state), "SECRET_FILE": str(host.state / f"probe-secret-{host.uuid}"),
        "SECRET": host.secret, "HOST_SES": str(ses), "PORT": str(port),
        "ABSTRACT": host.token("abstract"), "DEV_MAJOR": str(major), "DEV_MINOR": str(minor),
        "DEVNAME": devname, "ROOT_DEV": str(os.stat("/").st_dev),
        "RO_DEV": str(os.stat(host.ro).st_dev), "RUN_ID": f"{run.st_dev} {run.st_ino}",
        "DEV_DEV": str(os.stat("/dev").st_dev), "SHM_DEV": str(os.stat("/dev/shm").st_dev),
        "PROC_DEV": str(os.stat("/proc").st_dev), "SYS_DEV": str(os.stat("/sys").st_dev),
        "HANDLE_SECRET": _handle(host.state / f"probe-secret-{host.uuid}"),
        "HANDLE_DIR": _handle(host.canary), "HOSTNAME": os.uname().nodename,
        "FIFO": str(host.base / "fifo"),
        "SHM_KEY": str(host.ipc["shm"][1]), "SHM_KEY_HOST": str(host.ipc["shm-host"][1]),
        "MAGIC": "".join(f"\\\\x{b:02x}" for b in secrets.token_bytes(16)),
        "DMESG_RESTRICT": Path("/proc/sys/kernel/dmesg_restrict").read_text().strip(),
    }  # fmt: skip
    for what in ("canary", "victim"):
        values[f"{what.upper()}_PID"] = str(host.procs[what].pid)
        values[f"{what.upper()}_TOKEN"] = host.token(what)
    for ns in NAMESPACES:
        values[f"NS_{ns.upper()}"] = os.readlink(f"/proc/self/ns/{ns}")
    return values


@contextlib.contextmanager
def make_scratch_root(root: Path) -> Iterator[Path]:
    """A small machine for a probe dance (as conftest.scratch_root): the host's /usr bound
    read-only, its own /etc, /var, /root, /tmp, /srv; two hard-linked files under /srv/hl."""
    scratch_skeleton(root, ("srv/hl/x", "srv/hl/y/z"))
    (root / "srv/hl/x/a").write_text("one file, two names\n")
    os.link(root / "srv/hl/x/a", root / "srv/hl/y/z/b")
    try:
        subprocess.run(["mount", "--bind", "/usr", str(root / "usr")], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root / "usr")], check=True)
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "usr")], check=False)


# -- what got out, as the host sees it --------------------------------------------------------


def alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def files_found(needle: str, *dirs: str) -> list[str]:
    """Entries of `dirs` (not below) whose name holds `needle`."""
    found = []
    for d in dirs:
        with contextlib.suppress(OSError):
            found += [os.path.join(d, n) for n in os.listdir(d) if needle in n]
    return found


def under_state(host: Host, prefix: str) -> list[str]:
    """Names starting with `prefix` anywhere in disco's state (the view's sources)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(host.state):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith(prefix)]
    return found


def mounts_found(needle: str) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line for line in text.splitlines() if needle in line]


def keys_found(host: Host, *descriptions: str) -> list[str]:
    """Keys of `descriptions` that the host's keyrings reach (the test's session keyring,
    root's user keyring)."""
    found = []
    for desc in descriptions:
        for ring in (KEY_SPEC_SESSION, KEY_SPEC_USER):
            kid = keyctl(KEYCTL_SEARCH, ring, b"user", desc.encode(), 0)
            if kid > 0:
                found.append(f"key {desc} ({kid}) in keyring {ring}")
    return found


def cgroups_found(needle: str) -> list[str]:
    found = []
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(dirpath, n) for n in dirnames if needle in n]
    return found


def binfmt_found(host: Host, needle: str) -> list[str]:
    """Entries of the host's binfmt_misc holding `needle`."""
    if host.binfmt is None:
        return []
    return [f"binfmt_misc entry {n}" for n in os.listdir(host.binfmt) if needle in n]


def ipc_found(kind: str, key: int) -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[0]) == key:
                return [f"SysV {kind} key {key:#x} (id {fields[1]})"]
    return []


def mq_found(name: str) -> list[str]:
    libc.mq_open.restype = ctypes.c_int
    fd = libc.mq_open(f"/{name}".encode(), os.O_RDONLY, 0, None)
    if fd < 0:
        return []
    libc.mq_close(fd)
    return [f"POSIX message queue /{name}"]


# -- clean-up -----------------------------------------------------------------------------


def _remove(path: str) -> None:
    """Remove a canary: a file, or a directory of files, never across a mount."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            return
        for dirpath, _, filenames in os.walk(path, topdown=False):
            if os.lstat(dirpath).st_dev != st.st_dev:
                continue
            for n in filenames:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, n))
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def cleanup_host(host: Host) -> None:
    """Undo everything of `host` and every canary of its token, whatever the probes did."""
    uuid = host.uuid
    for proc in host.procs.values():
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    host.procs.clear()
    for sock in host.listeners.values():
        sock.close()
    host.listeners.clear()
    for fd in (host.fifo, host.lock):
        if fd >= 0:
            os.close(fd)
    host.fifo = host.lock = -1
    for line in reversed(mounts_found(uuid) + mounts_found(str(host.ro))):
        _run("umount", "-l", line.split()[4])
    for fields in (line.split() for line in Path("/proc/keys").read_text().splitlines()):
        if uuid in " ".join(fields[8:]):
            keyctl(KEYCTL_INVALIDATE, int(fields[0], 16))
    for path in sorted(cgroups_found(uuid), key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(path)
    if host.binfmt is not None:
        for name in os.listdir(host.binfmt):
            if uuid in name:
                with contextlib.suppress(OSError):
                    (host.binfmt / name).write_text("-1")
        _run("umount", str(host.binfmt))
        host.binfmt = None
    for kind, key in host.ipc.values():
        for line in ipc_found(kind, key):
            ident = int(line.rsplit("id ", 1)[1].rstrip(")"))
            (libc.shmctl if kind == "shm" else libc.msgctl)(ident, IPC_RMID, None)
    for name in (host.token("host"), f"posix-mq-{uuid}"):
        libc.mq_unlink(f"/{name}".encode())
    dirs = ("/usr/sbin", "/usr/bin", "/dev", "/dev/shm", "/tmp", "/var/tmp", "/run")
    for path in files_found(uuid, *dirs):
        _remove(path)
