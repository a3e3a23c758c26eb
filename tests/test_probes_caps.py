"""Hostile probes, capabilities over the host (issue 21; probes.py says how they work).

A NOOP step (and a live one on a scratch root) is root inside namespaces of its own: its
capabilities must hold over its sandbox only. Each probe tries one power over the host's
kernel, mounts, devices or filesystems, in one dance per mode; kernel settings are only
checked with access(W_OK), devices only read.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from probes import (
    MODES,
    Dances,
    Env,
    Probe,
    assert_held,
    dance_of,
    host_changes,
    host_may,
    pairs,
    py,
    root_only,
    x86_64,
)
from probes_host import (
    binfmt_found,
    cgroups_found,
    files_found,
    keys_found,
    mounts_found,
    under_state,
)

pytestmark = [root_only, x86_64]

PROC_KNOBS = ("sys/kernel/core_pattern", "sys/vm/drop_caches", "sys/kernel/panic",
              "sys/kernel/sysrq", "sys/fs/file-max", "sysrq-trigger")  # fmt: skip
SYS_KNOBS = ("power/state", "kernel/mm/transparent_hugepage/enabled", "kernel/mm/ksm/run",
             "kernel/uevent_helper", "block/@DEVNAME@/queue/scheduler")  # fmt: skip
WRITABLE = """
def writable(top, rels):
    return [r for r in rels if os.path.exists(f"{top}/{r}") and os.access(f"{top}/{r}", os.W_OK)]
"""
SECTOR = """
def read_sector(node):
    try:
        fd = os.open(node, os.O_RDONLY)
    except OSError:
        return False
    try:
        return len(os.read(fd, 512)) == 512
    except OSError:
        return False
    finally:
        os.close(fd)
"""


def ro_still_ro(env: Env) -> list[str]:
    lines = mounts_found(str(env.host.ro))
    sb = [line.split(" - ")[1].split()[2].split(",") for line in lines]
    found = [f"the host's read-only {env.host.ro} is now {o[0]}" for o in sb if o[0] != "ro"]
    return found + files_found(f"remount-ro-submount-{env.uuid}", str(env.host.ro))


def in_usr_sbin(env: Env) -> list[str]:
    return files_found(f"remount-real-bins-{env.uuid}", "/usr/sbin", "/usr/bin")


# fmt: off
PROBES = [
    Probe("remount-ro-submount", "caps: read-only host filesystem",
          "remount a read-only filesystem of the host read-write (as kernel scripts do with"
          " a read-only /boot) and write on it: only the sandbox's view may change",
          r"""
# What kernel and boot-loader scripts do on systems with a read-only /boot:
if mount -o remount,rw @RO@ 2>/dev/null; then escaped "mount -o remount,rw @RO@ worked"; fi
if mount -o remount,bind,rw @RO@ 2>/dev/null; then escaped "remounted the bind @RO@ rw"; fi
if touch "@RO@/$P-@UUID@" 2>/dev/null; then escaped "wrote on the host's read-only @RO@"; fi
""", host=ro_still_ro),
    Probe("remount-real-bins", "caps: read-only binds",
          "remount the read-only binds of the real binaries (/var/disco/real/*, a scratch"
          " root's /usr) read-write and drop a file into the host's /usr/sbin",
          py(r"""
for point, opts, fstype, source in mounts():
    if "ro" not in opts or not (point == "/usr" or point.startswith("/var/disco/real/")):
        continue
    if remount_rw(point):
        escaped("remounted", point, "read-write")
        sbin = point + "/sbin" if point == "/usr" else point
        if sbin.endswith("/usr/sbin") and create(f"{sbin}/{NAME}-{UUID}"):
            escaped("wrote a file into", sbin)
"""), host=in_usr_sbin),
    Probe("remount-view", "caps: read-only binds",
          "remount disco's read-only view (/var/disco: parameters, modules) read-write and"
          " write into it, where disco's state and the next steps read",
          py(r"""
for point, opts, fstype, source in mounts():
    if not (point == "/var/disco" or point.startswith("/var/disco/")) or "ro" not in opts:
        continue
    if point.startswith("/var/disco/real"):
        continue
    if remount_rw(point):
        escaped("remounted", point, "read-write")
        if create(f"{point}/{NAME}-{UUID}"):
            escaped("wrote into disco's view at", point)
"""), host=lambda env: under_state(env.host, "remount-view")),
    Probe("unhide-state", "caps: locked mounts",
          "unmount what hides disco's state from the step, and read disco's state",
          py(r"""
for point, opts, fstype, source in reversed(mounts()):
    if point == "@STATE@" or point.startswith("@STATE@/"):
        if umount(point):
            escaped("unmounted", point)
if sees_secret():
    escaped("read disco's state")
""")),
    Probe("fresh-proc", "caps: proc",
          "mount a fresh proc and look for kernel settings writable through it"
          " (access(W_OK) only, never written)",
          py(WRITABLE + r"""
d = fresh_dir()
if mount("proc", d, "proc", 2 | 4 | 8):
    for knob in writable(d, KNOBS):
        escaped("writable through a fresh proc:", knob)
    umount(d)
""".replace("KNOBS", repr(PROC_KNOBS)))),
    Probe("proc-sys-writable", "caps: proc",
          "look for writable kernel settings in the step's /proc, also after remounting"
          " /proc/sys read-write",
          py(WRITABLE + r"""
for knob in writable("/proc", KNOBS):
    escaped("writable:", knob)
for point, opts, fstype, source in mounts():
    if point in ("/proc/sys", "/proc/sysrq-trigger") and "ro" in opts and remount_rw(point):
        escaped("remounted", point, "read-write")
if os.stat("/proc").st_dev != @PROC_DEV@:  # never the host's superblock, even to "rw"
    if os.system("mount -o remount,rw /proc/sys 2>/dev/null") == 0:
        escaped("remounted the superblock of /proc/sys read-write")
for knob in writable("/proc", KNOBS):
    escaped("writable after a remount:", knob)
""".replace("KNOBS", repr(PROC_KNOBS)))),
    Probe("fresh-sysfs", "caps: sysfs",
          "mount a fresh sysfs and look for writable host settings in it (access only)",
          py(WRITABLE + r"""
d = fresh_dir()
if mount("sysfs", d, "sysfs", 2 | 4 | 8):
    if os.stat(d).st_dev != @SYS_DEV@ and os.system(f"mount -o remount,rw {d} 2>/dev/null") == 0:
        escaped("remounted a fresh sysfs read-write")
    for knob in writable(d, KNOBS):
        escaped("writable through a fresh sysfs:", knob)
    umount(d)
""".replace("KNOBS", repr(SYS_KNOBS)))),
    Probe("sys-writable", "caps: sysfs",
          "look for writable host settings in the step's /sys, also after remounting it"
          " read-write (access only)",
          py(WRITABLE + r"""
for knob in writable("/sys", KNOBS):
    escaped("writable:", knob)
for point, opts, fstype, source in mounts():
    if point == "/sys" and "ro" in opts and remount_rw(point):
        escaped("remounted /sys read-write")
if os.stat("/sys").st_dev != @SYS_DEV@:  # never the host's superblock, even to "rw"
    if os.system("mount -o remount,rw /sys 2>/dev/null") == 0:
        escaped("remounted the superblock of /sys read-write")
for knob in writable("/sys", KNOBS):
    escaped("writable after a remount:", knob)
""".replace("KNOBS", repr(SYS_KNOBS)))),
    Probe("devtmpfs-mount", "caps: devices",
          "mount devtmpfs, the kernel's one /dev, and read the first sector of the host's"
          " disk from it",
          py(SECTOR + r"""
d = fresh_dir()
if mount("devtmpfs", d, "devtmpfs", 2 | 8):
    escaped("mounted the kernel's devtmpfs")
    if "@DEVNAME@" and read_sector(f"{d}/@DEVNAME@"):
        escaped("read the host's disk @DEVNAME@")
    umount(d)
""")),
    Probe("tracefs-mount", "caps: kernel interfaces",
          "mount tracefs and debugfs (the kernel's tracing: host-wide)",
          py(r"""
for fstype in ("tracefs", "debugfs"):
    d = fresh_dir("-" + fstype)
    if mount(fstype, d, fstype, 2 | 4 | 8):
        escaped("mounted", fstype)
        umount(d)
""")),
    Probe("cgroup-mkdir", "caps: cgroups",
          "make a canary cgroup, in the /sys/fs/cgroup it sees and in fresh cgroup2 and"
          " cgroup v1 (pids) mounts: no cgroup of a step's may be left on the host",
          py(r"""
tops = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids"]
d2 = fresh_dir("-v2")
if mount("none", d2, "cgroup2", 2 | 4 | 8):
    tops.append(d2)
d1 = fresh_dir("-v1")
if mount("none", d1, "cgroup", 2 | 4 | 8, "pids"):
    tops.append(d1)
for i, top in enumerate(tops):
    try:
        os.mkdir(f"{top}/{NAME}-{UUID}-{i}")
        print("made a cgroup directory in", top)
    except OSError:
        pass
for d in (d1, d2):
    umount(d)
"""), host=lambda env: cgroups_found(f"cgroup-mkdir-{env.uuid}")),
    Probe("binfmt-register", "caps: binfmt_misc",
          "register a binfmt_misc entry (a magic no file has, an interpreter that does not"
          " exist): the host's binfmt_misc must not get it",
          py(r"""
d = "/proc/sys/fs/binfmt_misc"
if not os.path.exists(d + "/register"):
    d = fresh_dir()
    mount("binfmt_misc", d, "binfmt_misc", 2 | 4 | 8)
rule = f":{NAME}-{UUID}:M::@MAGIC@::/nonexistent/{NAME}-{UUID}:"
try:
    with open(d + "/register", "w") as f:
        f.write(rule)
    print("registered a binfmt_misc entry in", d)
except OSError:
    pass
"""), host=lambda env: binfmt_found(env.host, f"binfmt-register-{env.uuid}")),
    Probe("keyring-canary", "caps: keyrings",
          "add a canary key to the session (@s) and user (@u) keyrings: the host's keyrings"
          " must not get it, and the step must not share disco's session keyring",
          py(r"""
ses, err = call(250, 0, -3, 0)  # what the step inherits (no create)
if ses == @HOST_SES@:
    escaped("shares the host's session keyring", ses)
for ring, tag in ((-5, "us"), (-4, "u"), (-3, "s")):  # @us, @u, @s
    kid, err = call(248, b"user", f"{NAME}-{UUID}-{tag}".encode(), b"canary", 6, ring)
    if kid > 0:
        call(250, 5, kid, 0x3F3F3F3F)  # anyone may remove it (the test does)
        call(250, 15, kid, 300)  # and it expires by itself
"""), host=lambda env: keys_found(env.host, *(f"keyring-canary-{env.uuid}-{tag}"
                                           for tag in ("us", "u", "s")))),
    Probe("bpf-map", "caps: bpf",
          "create a BPF map of a kind that needs CAP_BPF over the host (an LPM trie)",
          py(r"""
attr = ctypes.create_string_buffer(struct.pack("<5I", 11, 8, 4, 1, 1) + bytes(108), 128)
fd, err = call(321, 0, attr, 128)
if fd >= 0:
    escaped("created an LPM-trie BPF map")
""")),
    Probe("perf-system-wide", "caps: perf",
          "open a system-wide perf event (every process of the host, cpu 0)",
          py(r"""
attr = bytearray(128)
struct.pack_into("<IIQ", attr, 0, 1, 128, 0)  # PERF_TYPE_SOFTWARE, cpu-clock
fd, err = call(298, ctypes.create_string_buffer(bytes(attr), 128), -1, 0, -1, 0)
if fd >= 0:
    escaped("opened a system-wide perf event")
""")),
    Probe("fanotify-mark", "caps: fanotify",
          "put a fanotify filesystem or mount mark on a host filesystem the step sees"
          " (it would watch every open on the host and get writable fds of host files)",
          py(r"""
fd, err = call(300, 0, os.O_RDONLY)
if fd < 0:
    fd, err = call(300, 0x200, os.O_RDONLY)  # FAN_REPORT_FID: allowed unprivileged
host = {@ROOT_DEV@, @RO_DEV@}
paths = ["/", "/usr", "/var/disco/modules", "/var/disco/real/usr/sbin", "@RO@"]
for point, opts, fstype, source in mounts():
    paths.append(point)
for path in dict.fromkeys(paths):
    try:
        on_host = os.stat(path).st_dev in host
    except OSError:
        continue
    for how, flag in (("filesystem", 0x100), ("mount", 0x10)):
        if fd >= 0 and on_host and call(301, fd, 1 | flag, ctypes.c_uint64(0x20), -100,
                                          os.fsencode(path))[0] == 0:
            escaped("put a fanotify", how, "mark on the host's", path)
""")),
    Probe("open-by-handle", "caps: open_by_handle_at",
          "open disco's hidden state and a host directory by file handle, from every mount"
          " it sees, and create a canary through the directory",
          py(r"""
handles = {"secret": bytes.fromhex("@HANDLE_SECRET@"), "dir": bytes.fromhex("@HANDLE_DIR@")}
for point, opts, fstype, source in [("/", [], "", "")] + mounts():
    try:
        mfd = os.open(point, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        continue
    for what, h in handles.items():
        if not h:
            continue
        flags = os.O_RDONLY | (os.O_DIRECTORY if what == "dir" else 0)
        fd, err = call(304, mfd, ctypes.create_string_buffer(h, len(h)), flags)
        if fd < 0:
            continue
        if what == "secret" and os.read(fd, 4096) == SECRET:
            escaped("read disco's hidden state by handle, through", point)
        if what == "dir":
            try:
                os.close(os.open(f"{NAME}-{UUID}", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
                escaped("created a file in a host directory by handle, through", point)
            except OSError:
                pass
        os.close(fd)
    os.close(mfd)
""")),
    Probe("mknod-block", "caps: devices",
          "make a device node of the host's disk where the step may write (/tmp, /var/tmp,"
          " /run, /dev, /dev/shm) and read its first sector: no filesystem of the step's"
          " may hold a usable one",
          py(SECTOR + r"""
for d in ("/tmp", "/var/tmp", "/run", "/dev", "/dev/shm"):
    node = f"{d}/{NAME}-{UUID}"
    try:
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(@DEV_MAJOR@, @DEV_MINOR@))
    except OSError:
        continue
    try:
        if not os.statvfs(d).f_flag & 4:  # ST_NODEV
            escaped("made a node of the host's disk where devices work:", d)
        if read_sector(node):
            escaped("read the host's disk through a node made in", d)
    finally:
        os.unlink(node)
"""), host=lambda env: files_found(f"mknod-block-{env.uuid}", "/dev", "/dev/shm", "/run")),
    Probe("dev-nodev", "caps: devices",
          "/dev must be nodev: make a null device in it and open it",
          py(r"""
for point, opts, fstype, source in mounts():
    if point == "/dev" and "nodev" not in opts:
        escaped("/dev is mounted without nodev:", ",".join(opts))
node = f"/dev/{NAME}-{UUID}"
try:
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    try:
        os.close(os.open(node, os.O_WRONLY))
        escaped("opened a device node made in /dev")
    except OSError:
        pass
    os.unlink(node)
except OSError:
    pass
"""), host=lambda env: files_found(f"dev-nodev-{env.uuid}", "/dev")),
    Probe("dev-only-basics", "caps: devices",
          "/dev holds no device but null, zero, full, random, urandom and the step's own"
          " pts (no tty, no disk, no kmsg, no mem)",
          py(r"""
ok = {"null", "zero", "full", "random", "urandom", "ptmx"}
for name in sorted(os.listdir("/dev")):
    st = os.lstat(f"/dev/{name}")
    if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and name not in ok:
        escaped("/dev has", name)
""")),
    Probe("dev-tty", "caps: terminal",
          "/dev/tty must be absent, and no terminal openable through it",
          r"""
[ -e /dev/tty ] && escaped "/dev/tty is there"
# Read-only: `<>` would create a plain file where there is none.
if (exec 3</dev/tty) 2>/dev/null; then escaped "/dev/tty opens"; fi
"""),
    Probe("host-block-device", "caps: devices",
          "find the host's disk at its usual path in /dev and read its first sector",
          py(SECTOR + r"""
for node in ("/dev/@DEVNAME@", "/dev/block/@DEV_MAJOR@:@DEV_MINOR@"):
    if os.path.exists(node) and stat.S_ISBLK(os.stat(node).st_mode):
        escaped("the host's disk is at", node)
        if read_sector(node):
            escaped("read the host's disk at", node)
""")),
    Probe("oom-immune", "caps: resources",
          "make itself immune to the OOM killer (oom_score_adj -1000 needs CAP_SYS_RESOURCE"
          " over the host)",
          py(r"""
try:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("-1000")
    escaped("set its oom_score_adj to -1000")
except OSError:
    pass
"""), testable=host_may("sys_resource")),
    Probe("rt-sched", "caps: scheduling",
          "take a real-time scheduling class (CAP_SYS_NICE over the host), and give it back",
          py(r"""
import resource
if resource.getrlimit(resource.RLIMIT_RTPRIO)[0] == 0:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        escaped("took SCHED_FIFO")
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pass
""")),
    Probe("adjtimex", "caps: clock",
          "adjust the host's clock with an out-of-range tick: EINVAL (allowed, refused as"
          " invalid) means CAP_SYS_TIME over the host; nothing is ever set",
          py(r"""
buf = ctypes.create_string_buffer(512)
struct.pack_into("<I", buf, 0, 0x4000)  # ADJ_TICK
struct.pack_into("<q", buf, 88, 1)  # tick = 1: out of range, refused either way
libc.adjtimex.argtypes = [ctypes.c_void_p]
if libc.adjtimex(buf) < 0 and ctypes.get_errno() == errno.EINVAL:
    escaped("may adjust the host's clock")
""")),
    Probe("syslog-read", "caps: kernel log",
          "ask the host's kernel log for its size (dmesg_restrict: CAP_SYSLOG over the host)",
          py(r"""
if "@DMESG_RESTRICT@" == "1" and libc.klogctl(10, None, 0) >= 0:
    escaped("reached the host's kernel log")
""")),
    Probe("chroot-breakout", "caps: root",
          "break out of a chroot of its own (chdir .. from an fd above it) and look for the"
          " host: disco's state, the test's canary directory",
          py(r"""
inner = fresh_dir()
top = os.open("/", os.O_RDONLY)
os.chroot(inner)
os.fchdir(top)
for _ in range(64):
    os.chdir("..")
os.chroot(".")
if sees_secret():
    escaped("reached disco's state out of the sandbox")
if os.path.isdir(CANARY):
    create(f"{CANARY}/{NAME}-{UUID}")
""")),
]
# fmt: on


@pytest.fixture(scope="module")
def dances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dances]:
    """One dance of every probe above per mode."""
    with Dances(tmp_path_factory, "caps", dance_of(PROBES)) as dances:
        yield dances


@pytest.mark.probe
@pytest.mark.parametrize(("mode", "probe"), pairs(PROBES))
def test_a_step_holds_no_power_over_the_host(dances: Dances, mode: str, probe: Probe) -> None:
    assert_held(dances(mode), probe)


@pytest.mark.probe
@pytest.mark.parametrize("mode", MODES)
def test_the_host_is_as_it_was_after_the_dance(dances: Dances, mode: str) -> None:
    changes = host_changes(dances(mode))
    assert not changes, changes
