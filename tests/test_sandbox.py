"""The step sandbox: layers, namespaces, results (DESIGN §7). Most tests need root."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from disco.engine.mounts import Submount, read_mounts, submounts
from disco.engine.runner import Zygote, run_step
from disco.engine.sandbox import (
    Bind,
    Mode,
    Step,
    StepResult,
    base_ops,
    describe,
    pid1_ops,
    plan,
    upper_of,
)
from disco.errors import CommandError, DiscoError
from disco.run import run, start, wait_exit

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, namespaces)")
MOUNTINFO = Path("/proc/self/mountinfo")


# ---- pure: no root needed ----

MOUNTINFO_SAMPLE = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 254:1 / /home rw,relatime - ext4 /dev/vdb rw
41 27 254:2 / /srv/my\\040data rw,relatime - xfs /dev/vdc rw
42 27 7:0 / /snap/core/1 ro,relatime - squashfs /dev/loop0 ro
43 40 0:40 / /home/old rw - ext4 /dev/vdd rw
44 27 0:41 / /home rw - ext4 /dev/vde rw
45 27 0:42 / /var/disco/txn rw - tmpfs tmpfs rw
46 27 0:43 / /dev/shm rw - tmpfs tmpfs rw
"""


def test_read_mounts_unescapes_paths() -> None:
    mounts = read_mounts(MOUNTINFO_SAMPLE)
    assert mounts[3].mountpoint == "/srv/my data"
    assert (mounts[1].fstype, mounts[1].readonly, mounts[4].readonly) == ("ext4", False, True)


def test_submounts_overlays_real_filesystems_only() -> None:
    subs = submounts("/", read_mounts(MOUNTINFO_SAMPLE), skip=["/var/disco"])
    # /proc is pseudo, /dev/shm lies under /dev, /var/disco is skipped, and the first /home
    # (with /home/old on it) is hidden by the second /home mounted over it.
    assert subs == [
        Submount("home", False),
        Submount("srv/my data", False),
        Submount("snap/core/1", True),
    ]
    assert submounts("/home", read_mounts(MOUNTINFO_SAMPLE)) == []


def test_plan_describes_each_mount(tmp_path: Path) -> None:
    step = Step(("true",), root=Path("/"), layer=tmp_path / "L", hostname="node1")
    z = tmp_path / "z"
    built = base_ops(Mode.NOOP, z)
    ops = plan(step, [Submount("home", False)], z)
    lines = [op.describe() for op in [*built, *ops]]
    assert lines[0] == "mount --make-rprivate /"
    assert f"mount -t sysfs -o ro,nosuid,nodev,noexec sysfs {z}/api/sys" in lines
    # The layer's own paths are relative to it: one plan for every step.
    assert (
        "mount -t overlay -o nodev,lowerdir=/home,upperdir=upper/home,"
        "workdir=work/1,redirect_dir=off,index=on,metacopy=off,xino=off overlay work/m1"
    ) in lines
    assert "mount --move work/m1 work/mnt/home" in lines
    assert f"mkdir -p work/mnt/sys && mount --rbind {z}/api/sys work/mnt/sys" in lines
    assert lines[-1] == "cd work/mnt && pivot_root . . && umount -l . && cd /"
    assert f"mkdir -p work/mnt/proc && mount --rbind {z}/api/proc work/mnt/proc" in lines
    script = describe(step, built, ops, pid1_ops(z))
    assert script.startswith("unshare --mount --uts --ipc --net bash -ec")
    assert "hostname node1" in script and "ip link set lo up" in script
    assert f"cd {tmp_path}/L\n" in script
    # The step's own pid namespace, its /proc, then the user namespace that locks it all.
    assert "exec unshare --pid --fork --mount bash -ec" in script
    assert f"mount -t proc -o nosuid,nodev,noexec proc {z}/api/proc" in script
    assert "unshare --cgroup --user --map-root-user --mount setsid env -i" in script


def test_plan_live_keeps_host_name_and_api_filesystems(tmp_path: Path) -> None:
    step = Step(("true",), Path("/"), tmp_path / "L", mode=Mode.LIVE)
    built, ops = base_ops(Mode.LIVE, tmp_path / "z"), plan(step, [], tmp_path / "z")
    lines = [op.describe() for op in ops]
    assert "mkdir -p work/mnt/proc && mount --rbind /proc work/mnt/proc" in lines
    script = describe(step, built, ops)
    assert not [x for x in script.split("\n") if x.startswith(("hostname", "setpriv", "ip "))]


# ---- real sandboxes ----


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A small root: /usr bound read-only from the host, /home a tmpfs of its own."""
    root = tmp_path / "root"
    for d in ("usr", "etc", "home", "data/dir", "tmp"):
        (root / d).mkdir(parents=True)
    (root / "etc/motd").write_text("hello\n")
    (root / "data/keep").write_text("keep\n")
    (root / "data/dir/a").write_text("a\n")
    binds = ["usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64"):
        host = Path("/", name)
        if host.is_symlink():
            (root / name).symlink_to(os.readlink(host))
        elif host.is_dir():
            (root / name).mkdir()
            binds.append(name)
    mounted: list[Path] = []
    try:
        for name in binds:
            run(["mount", "--bind", f"/{name}", str(root / name)])
            mounted.append(root / name)
            run(["mount", "-o", "remount,bind,ro", str(root / name)])
        run(["mount", "-t", "tmpfs", "tmpfs", str(root / "home")])
        mounted.append(root / "home")
        (root / "home/user").mkdir()
        (root / "home/user/notes").write_text("notes\n")
        yield root
    finally:
        for m in reversed(mounted):
            run(["umount", "-l", str(m)], check=False)


def sh(root: Path, layer: Path, script: str, **kw: object) -> StepResult:
    step = Step(("bash", "-ec", script), root=root, layer=layer, **kw)  # type: ignore[arg-type]
    return run_step(step)


@root_only
def test_write_lands_in_the_upper_layer_only(scratch: Path, tmp_path: Path) -> None:
    layer = tmp_path / "layers/1"
    script = "echo new > /etc/new; echo more >> /etc/motd; echo hi > /home/user/hi; test -w /usr"
    result = sh(scratch, layer, script, mode=Mode.LIVE)
    up = upper_of(layer)
    assert result.returncode == 1  # /usr is a read-only mount: bound, not overlaid
    assert (up / "etc/new").read_text() == "new\n"
    assert (up / "etc/motd").read_text() == "hello\nmore\n"
    assert (up / "home/user/hi").read_text() == "hi\n"  # /home has its own overlay
    assert not (scratch / "etc/new").exists() and not (scratch / "home/user/hi").exists()
    assert (scratch / "etc/motd").read_text() == "hello\n"
    assert sorted(os.listdir(layer)) == ["upper"]  # work/ is gone after the step


@root_only
def test_deletions_make_whiteouts_and_opaque_dirs(scratch: Path, tmp_path: Path) -> None:
    layer = tmp_path / "layers/1"
    sh(scratch, layer, "rm /data/keep /home/user/notes; rm -r /data/dir; mkdir /data/dir")
    up = upper_of(layer)
    for p in (up / "data/keep", up / "home/user/notes"):
        st = p.lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(up / "data/dir", "trusted.overlay.opaque") == b"y"
    assert (scratch / "data/keep").exists() and (scratch / "home/user/notes").exists()


@root_only
def test_stacked_layers_see_earlier_steps(scratch: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "layers/1", tmp_path / "layers/2"
    sh(scratch, one, "echo from-1 > /etc/one; echo from-1 > /home/user/one")
    out = tmp_path / "out"
    with out.open("w") as f:
        script = "cat /etc/one /home/user/one; rm /etc/one; echo from-2 > /etc/two"
        r = sh(scratch, two, script, lower_layers=(one,), stdout=f.fileno())
    assert r.returncode == 0 and out.read_text() == "from-1\nfrom-1\n"
    assert stat.S_ISCHR((upper_of(two) / "etc/one").lstat().st_mode)
    assert (upper_of(one) / "etc/one").read_text() == "from-1\n"  # earlier layer untouched
    assert not (upper_of(one) / "etc/two").exists()


@root_only
def test_noop_on_the_real_root(tmp_path: Path) -> None:
    probe = f"/etc/disco-sandbox-test-{os.getpid()}"
    out = tmp_path / "out"
    script = (
        f"hostname; echo x > {probe}; ps -e --no-headers | wc -l; cat /proc/1/comm;"
        " ls /sys/class/net; grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1;"
        " readlink /proc/self/ns/user; touch /sys/x 2>/dev/null || echo sys-ro;"
        f" ls {tmp_path} | wc -l"
    )
    with out.open("w") as f:
        r = sh(Path("/"), tmp_path / "layer", script, hostname="node1.example",
               hide=(str(tmp_path),), stdout=f.fileno())  # fmt: skip
    lines = out.read_text().split()
    assert r.returncode == 0
    assert lines[:2] == ["node1.example", "4"]  # the step's init, bash, ps, wc: nothing else
    assert lines[2] == "init"
    assert lines[3:5] == ["lo", "ro"]
    # Root in a user namespace of its own: its capabilities hold over the sandbox only.
    assert lines[5] != os.readlink("/proc/self/ns/user")
    assert lines[6:] == ["sys-ro", "0"]  # disco's state (here tmp_path) is hidden
    assert not os.path.exists(probe)
    assert (upper_of(tmp_path / "layer") / probe.lstrip("/")).read_text() == "x\n"
    assert os.uname().nodename != "node1.example"


@root_only
def test_noop_steps_can_share_one_loopback_network(tmp_path: Path) -> None:
    ours = os.readlink("/proc/self/ns/net")
    script = "ls /sys/class/net; cat /sys/class/net/lo/flags; readlink /proc/self/ns/net"
    with Zygote() as zygote:
        for i in range(2):
            step = Step(("bash", "-ec", script), Path("/"), tmp_path / str(i),
                        stdout=tmp_path / f"out{i}", hide=(str(tmp_path),))  # fmt: skip
            assert zygote.run(step).returncode == 0
    assert os.readlink("/proc/self/ns/net") == ours
    lines = (tmp_path / "out0").read_text().split() + (tmp_path / "out1").read_text().split()
    assert lines[:2] == ["lo", "0x9"] and lines[:3] == lines[3:]  # up; the same namespace
    assert lines[2] != ours


@root_only
def test_a_noop_step_is_root_over_its_own_namespaces_only(tmp_path: Path) -> None:
    script = (
        "cat /proc/self/uid_map; readlink /proc/self/ns/user;"
        " mount -o remount,rw /sys 2>/dev/null && echo remounted || echo locked;"
        " mount -t proc proc /mnt 2>/dev/null && echo fresh-proc || echo no-proc;"
        " mount -t tmpfs tmpfs /mnt && echo own-mount; cat /proc/1/comm"
    )
    with Zygote(Mode.NOOP) as zygote:
        for i in range(2):
            step = Step(("bash", "-ec", script), Path("/"), tmp_path / str(i),
                        stdout=tmp_path / f"out{i}", hide=(str(tmp_path),))  # fmt: skip
            assert zygote.run(step).returncode == 0
    for i in range(2):
        lines = (tmp_path / f"out{i}").read_text().splitlines()
        assert lines[0].split() == ["0", "0", "4294967295"]  # every id is the host's
        assert lines[1] != os.readlink("/proc/self/ns/user")
        assert lines[2:] == ["locked", "no-proc", "own-mount", "init"]


@root_only
def test_a_noop_step_is_answered_once_what_it_left_running_is_gone(tmp_path: Path) -> None:
    script = "while :; do echo x >> /tmp/disco-straggler; done >/dev/null 2>&1 & sleep 0.1"
    with Zygote() as zygote:
        step = Step(("bash", "-ec", script), Path("/"), tmp_path / "l", hide=(str(tmp_path),))
        r = zygote.run(step)
        written = upper_of(tmp_path / "l") / "tmp/disco-straggler"
        size = written.stat().st_size
        time.sleep(0.2)  # the loop, were it alive, would write thousands of lines
        assert size > 0 and written.stat().st_size == size
    assert r.returncode == 0 and r.usage.utime + r.usage.stime > 0.05  # the loop's, reaped
    assert not os.path.exists("/tmp/disco-straggler")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "tmpfs").mkdir()
    run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "tmpfs")])
    try:
        yield tmp_path / "tmpfs"
    finally:
        run(["umount", "-l", str(tmp_path / "tmpfs")], check=False)


@root_only
def test_noop_stacks_on_the_real_root_only_from_another_filesystem(
    tmp_path: Path, tmpfs: Path
) -> None:
    one, two, hide = tmpfs / "1", tmpfs / "2", (str(tmp_path),)
    sh(Path("/"), one, "echo 1 > /etc/disco-stack-test", hide=hide)
    r = sh(Path("/"), two, "grep -q 1 /etc/disco-stack-test", lower_layers=(one,), hide=hide)
    assert r.returncode == 0 and not os.path.exists("/etc/disco-stack-test")
    shutil.copytree(one, tmp_path / "on-root-fs")  # a lower layer inside the lower "/"
    with pytest.raises(DiscoError, match="same filesystem"):
        sh(Path("/"), tmp_path / "3", "true", lower_layers=(tmp_path / "on-root-fs",))


@root_only
def test_exit_status_and_usage_of_the_whole_tree(scratch: Path, tmp_path: Path) -> None:
    assert sh(scratch, tmp_path / "a", "exit 3").returncode == 3
    assert sh(scratch, tmp_path / "b", "kill -KILL $$", mode=Mode.LIVE).returncode == -9
    assert sh(scratch, tmp_path / "c", "kill -TERM $$").returncode == -15
    busy = "bash -c 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done'"  # a grandchild
    r = sh(scratch, tmp_path / "d", busy, mode=Mode.LIVE)
    assert r.usage.utime + r.usage.stime > 0.05 and r.wall >= r.usage.utime / 2
    assert r.usage.minflt > 0 and r.usage.maxrss > 0


@root_only
def test_no_mount_outlives_a_step(scratch: Path, tmp_path: Path) -> None:
    before = MOUNTINFO.read_text()
    for i, mode in enumerate(Mode):
        assert sh(scratch, tmp_path / f"ok{i}", "true", mode=mode).returncode == 0
        assert sh(scratch, tmp_path / f"fail{i}", "exit 1", mode=mode).returncode == 1
        with pytest.raises(DiscoError, match="chdir|No such file") as e:
            sh(scratch, tmp_path / f"bad{i}", "true", mode=mode, cwd="/nowhere")
        assert "unshare --mount" in e.value.hint and "pivot_root . ." in e.value.hint
        with pytest.raises(CommandError, match="cannot run no-such-program"):
            run_step(Step(("no-such-program",), scratch, tmp_path / f"nf{i}", mode=mode))
        assert MOUNTINFO.read_text() == before


@root_only
def test_live_step_leaves_no_process_behind(scratch: Path, tmp_path: Path) -> None:
    r = sh(scratch, tmp_path / "l", "sleep 60 >/dev/null 2>&1 & echo", mode=Mode.LIVE)
    assert r.returncode == 0 and len(r.stray_pids) == 1
    with pytest.raises(OSError):  # gone, or a zombie that has left every namespace
        os.stat(f"/proc/{r.stray_pids[0]}/ns/mnt")
    for pid in filter(str.isdigit, os.listdir("/proc")):  # no overlay of the step survives
        try:
            assert str(tmp_path / "l") not in Path(f"/proc/{pid}/mountinfo").read_text()
        except OSError:
            pass


@root_only
@pytest.mark.parametrize("mode", list(Mode))
def test_an_interrupted_step_leaves_nothing_behind(
    scratch: Path, tmp_path: Path, mode: Mode
) -> None:
    def interrupt(_n: int, _f: object) -> None:
        raise KeyboardInterrupt

    before = MOUNTINFO.read_text()
    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            sh(scratch, tmp_path / "l", "sleep 1234 & sleep 1235; wait", mode=mode)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert MOUNTINFO.read_text() == before
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            assert b"sleep\x00123" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            pass


@root_only
def test_live_hostname_and_binds(scratch: Path, tmp_path: Path) -> None:
    params = tmp_path / "params"
    params.mkdir()
    (params / "value").write_text("42\n")
    out = tmp_path / "out"
    with out.open("w") as f:
        script = "hostname; cat /data/p/value; echo $SYSTEMD_IGNORE_CHROOT; touch /data/p/x || :"
        r = sh(scratch, tmp_path / "l", script,
               mode=Mode.LIVE, hostname="other-node", stdout=f.fileno(), stderr=f.fileno(),
               hide=("/data",), binds=(Bind(params, "/data/p"),))  # fmt: skip
    assert r.returncode == 0
    assert out.read_text().splitlines()[:3] == ["other-node", "42", "1"]
    assert "Read-only file system" in out.read_text()
    assert os.uname().nodename != "other-node" and not (params / "x").exists()


@root_only
@pytest.mark.parametrize("mode", list(Mode))
def test_a_step_runs_with_the_usual_scheduling_not_the_zygotes(
    scratch: Path, tmp_path: Path, mode: Mode
) -> None:
    out = tmp_path / "out"
    with Zygote(mode) as zygote:
        step = Step(("bash", "-c", "chrt -p $$"), scratch, tmp_path / "l", mode=mode, stdout=out)
        assert zygote.run(step).returncode == 0
        ours = Path(f"/proc/{zygote.proc.pid}/sched").read_text()
    assert "SCHED_OTHER" in out.read_text()
    assert "policy                                       :                    3" in ours  # BATCH


@root_only
def test_a_zygote_that_cannot_set_up_says_why_and_is_gone(tmp_path: Path) -> None:
    scratch = tmp_path / "z"
    scratch.mkdir()
    (scratch / "api").write_text("a file where the zygote makes a directory\n")
    before = {p for p in os.listdir("/proc") if p.isdigit()}
    with pytest.raises(DiscoError, match="cannot start the sandbox helper"):
        Zygote(Mode.NOOP, scratch)
    time.sleep(0.2)
    left = {p for p in os.listdir("/proc") if p.isdigit()} - before
    for pid in left:  # no zygote of ours is left waiting for a request
        try:
            assert "import zygote" not in Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            pass


def test_wait_exit_is_woken_by_the_exit_and_gives_up_at_its_timeout() -> None:
    quick = start(["sh", "-c", "exit 3"])
    assert wait_exit(quick, 5.0)
    assert quick.returncode == 3  # reaped, its status kept
    assert wait_exit(quick, 0.0)  # and again, once reaped
    slow = start(["sleep", "30"])
    try:
        began = time.monotonic()
        assert not wait_exit(slow, 0.2)
        assert slow.returncode is None and time.monotonic() - began < 5
    finally:
        slow.kill()
        slow.wait()
