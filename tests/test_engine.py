"""The engine of issue 8 (DESIGN §12): delivery staged into a layer without a sandbox,
diffs of created and deleted files without a program, steps forked by the zygote with
metrics of their own, and roots with every kind of submount. Live dances target scratch
roots only."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Run
from disco.engine.change_text import _one_sided
from test_dance_steps import NODE, dance, make_server, record_of, records

# ---- diffs of a whole file added or removed: what GNU diff prints, without diff ----


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.sampled_from([b"a", b"b\n", b"\n", b"\r\n", b" x ", b"\xff", b"caf\xc3\xa9"]), max_size=8
    ).map(b"".join),  # fmt: skip
    added=st.booleans(),
    style=st.sampled_from(["normal", "unified"]),
)
def test_a_created_or_deleted_files_diff_is_gnu_diffs(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, added: bool, style: str
) -> None:
    f = tmp_path_factory.mktemp("d") / "f"
    f.write_bytes(data)
    a, b = ("/dev/null", str(f)) if added else (str(f), "/dev/null")
    labels = ["-u", "--label", "a/etc/x", "--label", "b/etc/x"] if style == "unified" else []
    out = subprocess.run(["diff", "--text", *labels, a, b], capture_output=True).stdout
    text = out.decode(errors="replace")
    assert _one_sided(io.BytesIO(data), added, "/etc/x", style) == text.removesuffix("\n")


# ---- delivery ----


def test_files_arrive_with_owners_empty_dirs_and_links(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"m": {"files/srv/app/conf": "v1\n"}})
    files = server / "modules/m/files"
    (files / "srv/app/empty").mkdir()
    os.chown(files / "srv/app/conf", 1234, 4321)
    os.link(files / "srv/app/conf", files / "srv/app/conf.link")
    (files / "srv/app/cache").symlink_to("/var/cache/app")
    noop = dance(cmd, server, scratch_root)
    assert noop.returncode == 0, noop.stderr
    assert not (scratch_root / "srv/app").exists()
    head, _ = record_of(noop, "/srv/app/empty")
    assert "Created" in head and "type=[directory]" in head
    assert "perms=[1234:4321 644]" in record_of(noop, "/srv/app/conf")[0]
    live = dance(cmd, server, scratch_root, noop=False)
    assert live.returncode == 0, live.stderr
    assert sorted(records(live)) == sorted(records(noop))
    conf = scratch_root / "srv/app/conf"
    assert (conf.stat().st_uid, conf.stat().st_gid) == (1234, 4321)
    assert (scratch_root / "srv/app/empty").is_dir()
    assert os.readlink(scratch_root / "srv/app/cache") == "/var/cache/app"
    again = dance(cmd, server, scratch_root, noop=False)
    assert again.returncode == 0 and records(again) == [], again.stdout


def test_a_symlinked_directory_of_the_target_is_followed_as_cp_would(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    (scratch_root / "srv/real").mkdir()
    (scratch_root / "opt").symlink_to("srv/real")  # as /lib -> usr/lib
    server = make_server(tmp_path / "srv", {"m": {"files/opt/tool/x.conf": "x\n"}})
    for noop in (True, False):
        result = dance(cmd, server, scratch_root, noop=noop)
        assert result.returncode == 0, result.stderr
        assert "Created" in record_of(result, "/srv/real/tool/x.conf")[0]
    assert (scratch_root / "opt").is_symlink()
    assert (scratch_root / "srv/real/tool/x.conf").read_text() == "x\n"


def test_a_file_where_the_target_has_a_directory_fails_the_module(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    (scratch_root / "srv/taken").mkdir()
    server = make_server(tmp_path / "srv", {"m": {"files/srv/taken": "x\n"}})
    for noop in (True, False):
        result = dance(cmd, server, scratch_root, noop=noop)
        assert result.returncode == 1
        assert "error: m: delivery of files and templates: cannot deliver m/files/taken" in (
            result.stdout + result.stderr
        ).replace("/srv/taken", "/taken")
        assert "/srv/taken is a directory in the target" in result.stdout + result.stderr
    assert (scratch_root / "srv/taken").is_dir()


# ---- files/ staged while the module's first template runs ----


@pytest.mark.parametrize("noop", [True, False], ids=["noop", "live"])
def test_files_staged_during_a_template_lie_on_what_the_step_before_wrote(
    cmd: Run, tmp_path: Path, scratch_root: Path, noop: bool
) -> None:
    """files/ is staged while the template runs, over the previous module's script
    layer (NOOP: stacked, not yet folded): a directory that script made keeps its mode."""
    server = make_server(tmp_path / "srv", {
        "a": {"scripts/10-a.sh": "mkdir -m 700 /srv/d\n"},
        "b": {"requires": "a\n", "templates/srv/b.conf": "echo b\n", "files/srv/d/x": "x\n"},
    })  # fmt: skip
    result = dance(cmd, server, scratch_root, noop=noop)
    assert result.returncode == 0, result.stdout + result.stderr
    # One record of /srv/d, a's: b's staging kept the mode a gave it.
    assert "perms=[root:root 700]" in record_of(result, "/srv/d")[0]
    assert "Created" in record_of(result, "/srv/d/x")[0]
    if not noop:
        assert (scratch_root / "srv/d").stat().st_mode & 0o777 == 0o700
        assert (scratch_root / "srv/d/x").read_text() == "x\n"


@pytest.mark.parametrize("template", ["echo ok\n", "exit 3\n"], ids=["ok", "fails"])
def test_a_files_error_found_during_a_template_is_said_after_it(
    cmd: Run, tmp_path: Path, scratch_root: Path, template: str
) -> None:
    """The template runs (and its failure is said) before files/'s problem is: as if
    files/ were staged after it."""
    (scratch_root / "srv/taken").mkdir()
    server = make_server(tmp_path / "srv", {
        "m": {"templates/srv/t.conf": template, "files/srv/taken": "x\n",
              "scripts/10-s.sh": "touch /srv/ran\n"},
    })  # fmt: skip
    for noop in (True, False):
        result = dance(cmd, server, scratch_root, noop=noop)
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        if template == "exit 3\n":
            assert len(errors) == 1 and "template srv/t.conf exited with status 3" in errors[0]
        else:
            assert len(errors) == 1 and "delivery of files and templates" in errors[0], errors
        assert records(result) == []
    assert (scratch_root / "srv/taken").is_dir()
    assert not (scratch_root / "srv/t.conf").exists()
    assert not (scratch_root / "srv/ran").exists()


# ---- NOOP: a step's changes read while the next template runs ----


def test_a_template_sees_the_step_before_and_the_report_keeps_dance_order(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    """The script's layer is stacked, not yet folded, while the next module's template
    runs and the script's changes are reported: the template sees what the script wrote,
    and every line still comes in dance order."""
    server = make_server(tmp_path / "srv", {
        "a": {"scripts/10-a.sh": "echo from-a > /srv/a.out\necho a-said\n"},
        "b": {"requires": "a\n", "templates/srv/b.conf": "echo \"b sees $(cat /srv/a.out)\"\n",
              "scripts/10-b.sh": "echo b-said\necho x > /srv/b.out\n"},
    })  # fmt: skip
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 0, result.stdout + result.stderr
    _, diff = record_of(result, "/srv/b.conf")
    assert diff[:2] == ["0a1", "> b sees from-a"]
    lines = result.stdout.splitlines()

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    order = ["Processing a", "a-said", "/srv/a.out : Created", "Processing b",
             "/srv/b.conf : Created", "b-said", "/srv/b.out : Created"]  # fmt: skip
    assert [at(t) for t in order] == sorted(at(t) for t in order), result.stdout
    assert not (scratch_root / "srv/a.out").exists()


def test_a_steps_changes_are_read_while_the_next_modules_template_runs(
    cmd: Run, tmp_path: Path, scratch_root: Path, state: Path
) -> None:
    """NOOP: the `diff` of a module's last step (2000 files to read) lies within the next
    module's template step, not before it (the report's start offsets say when)."""
    many = "mkdir /srv/many; for i in $(seq 2000); do : > /srv/many/$i; done\n"
    server = make_server(tmp_path / "srv", {
        "a": {"scripts/10-a.sh": many},
        "b": {"requires": "a\n", "templates/srv/b.conf": "sleep 1; echo b\n"},
    })  # fmt: skip
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((state / "reports" / "last.json").read_text())
    [diff] = [r for r in report["records"] if r["step"] == "diff" and r["item"] == "10-a.sh"]
    [template] = [r for r in report["records"] if r["step"] == "template"]
    assert diff["wall"] > 0.05  # the reading takes long enough to tell where it lies
    assert template["start"] - 0.05 <= diff["start"], (diff, template)
    assert diff["start"] + diff["wall"] <= template["start"] + template["wall"], (diff, template)


def test_a_module_with_no_step_is_said_in_dance_order(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    """A module that runs no step says its name once the module before has said all."""
    server = make_server(tmp_path / "srv", {
        "a": {"scripts/10-a.sh": "echo a > /srv/a.out\n"},
        "b": {"requires": "a\n"},
        "c": {"requires": "b\n", "templates/srv/c.conf": "echo c\n"},
    })  # fmt: skip
    for noop in (True, False):
        result = dance(cmd, server, scratch_root, noop=noop)
        assert result.returncode == 0, result.stdout + result.stderr
        said = [line.split(" : ")[0] for line in result.stdout.splitlines()
                if line.startswith(("info: Processing", "info: File:"))]  # fmt: skip
        assert said == ["info: Processing a", "info: File: file: /srv/a.out",
                        "info: Processing b", "info: Processing c",
                        "info: File: file: /srv/c.conf"], result.stdout  # fmt: skip


def test_live_on_another_root_templates_and_scripts_share_one_sandbox_helper(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    """Sandboxed as NOOP's are, a live dance's scripts on another root run in the steps'
    pid namespace of its templates' zygote: one zygote started, not two."""
    server = make_server(tmp_path / "srv", {
        "m": {"templates/srv/t.ns": "readlink /proc/self/ns/pid\n",
              "scripts/10-s.sh": "readlink /proc/self/ns/pid > /srv/s.ns\n"},
    })  # fmt: skip
    result = dance(cmd, server, scratch_root, noop=False)
    assert result.returncode == 0, result.stdout + result.stderr
    template, script = ((scratch_root / "srv" / n).read_text() for n in ("t.ns", "s.ns"))
    assert template == script != os.readlink("/proc/self/ns/pid") + "\n"


# ---- steps: metrics of their own ----


def test_a_steps_memory_is_its_own_not_discos(cmd: Run, tmp_path: Path, state: Path) -> None:
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": "true\n"}})
    result = cmd("disco", "dance", "--server", str(server), "--node", NODE, "--noop")
    assert result.returncode == 0, result.stderr
    report = json.loads((state / "reports" / "last.json").read_text())
    (step,) = [r for r in report["records"] if r["step"] == "exec"]
    # disco itself is ~30 MB; a fork of it reported >= 17 MB. bash alone is ~3 MB.
    assert 0 < step["usage"]["maxrss"] < 12 * 1024


# ---- roots with submounts of every kind ----


@pytest.fixture
def mounted_root(scratch_root: Path, tmp_path: Path) -> Iterator[Path]:
    """The scratch root with /srv/ovl an overlayfs, /srv/tmp a tmpfs, /srv/bind a bind
    mount and /srv/ro a read-only bind."""
    lower, up, work = tmp_path / "ovl-lower", tmp_path / "ovl-up", tmp_path / "ovl-work"
    for src in (lower, up, work, tmp_path / "bind-src", tmp_path / "ro-src"):
        src.mkdir()
    (lower / "old").write_text("old\n")
    (tmp_path / "ro-src/readme").write_text("ro\n")
    kinds = ("ovl", "tmp", "bind", "ro")
    for kind in kinds:
        (scratch_root / "srv" / kind).mkdir()
    mounts = [
        ["-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={up},workdir={work}"],
        ["-t", "tmpfs", "tmpfs"],
        ["--bind", str(tmp_path / "bind-src")],
        ["--bind", "-o", "ro", str(tmp_path / "ro-src")],
    ]
    done: list[Path] = []
    try:
        for kind, args in zip(kinds, mounts):
            subprocess.run(["mount", *args, str(scratch_root / "srv" / kind)], check=True)
            done.append(scratch_root / "srv" / kind)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(scratch_root / "srv/ro")], check=True)
        yield scratch_root
    finally:
        for point in reversed(done):
            subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_root_with_overlay_tmpfs_bind_and_readonly_submounts_dances(
    cmd: Run, tmp_path: Path, mounted_root: Path
) -> None:
    script = (
        "for d in ovl tmp bind; do echo new > /srv/$d/new; done\n"
        "echo more >> /srv/ovl/old\n"
        "if echo x > /srv/ro/x 2>/dev/null; then exit 9; fi\n"
        "cat /srv/ro/readme\n"
    )
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-w.sh": script}})
    want = ["/srv/bind/new", "/srv/ovl/new", "/srv/ovl/old", "/srv/tmp/new"]
    for noop in (True, False):
        result = dance(cmd, server, mounted_root, noop=noop)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ro" in result.stdout.splitlines()
        changed = sorted(line.split(" : ")[0].rsplit(": ", 1)[1] for line in records(result))
        assert changed == want, result.stdout
        if noop:
            assert not (mounted_root / "srv/ovl/new").exists()
    assert (mounted_root / "srv/ovl/old").read_text() == "old\nmore\n"
    assert all((mounted_root / p.lstrip("/")).exists() for p in want)


# ---- time limits ----


@pytest.mark.parametrize("noop", [True, False])
def test_a_step_past_its_time_limit_is_killed_with_its_tree_and_fails(
    cmd: Run, tmp_path: Path, scratch_root: Path, noop: bool
) -> None:
    marker = f"disco-test-sleeper-{os.getpid()}-{noop}"  # what ps shows for our sleeps
    script = (
        f"echo partial > /srv/partial\n(exec -a {marker} sleep 300) &\nexec -a {marker} sleep 300\n"
    )
    server = make_server(tmp_path / "srv", {
        "slow": {"scripts/10-hang.sh": script},
        "after": {"requires": "slow\n", "scripts/10-x.sh": "echo x > /srv/after\n"},
    })  # fmt: skip
    result = dance(cmd, server, scratch_root, "--timeout", "1", noop=noop)
    assert result.returncode == 1
    err = result.stdout + result.stderr
    assert "error: slow: script 10-hang.sh ran longer than its limit of 1 s" in err
    assert "warning: Skipping after: requires slow" in err
    assert not (scratch_root / "srv/partial").exists()  # nothing committed
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert marker not in ps  # the whole tree is gone


def test_a_bad_time_limit_is_an_error(cmd: Run, tmp_path: Path, scratch_root: Path) -> None:
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": "true\n"}})
    result = dance(cmd, server, scratch_root, "--timeout", "soon")
    assert result.returncode == 2  # a usage error, as every bad flag
    assert "argument --timeout: 'soon' is not a number of seconds" in result.stderr
    cmd("disco-param", "set", "disco/client/timeout/step", input="-3\n")
    result = dance(cmd, server, scratch_root)
    assert "error: disco/client/timeout/step is '-3', not a number of seconds" in result.stderr


@pytest.mark.parametrize("how", ["mounted", "bound"])
def test_a_root_whose_usr_is_an_overlay_dances_with_its_interceptors(
    cmd: Run, tmp_path: Path, how: str
) -> None:
    """As container images and live systems are built: /usr an overlayfs, mounted there
    directly or made elsewhere and bind-mounted there."""
    root = tmp_path / "root"
    for d in ("usr", "etc", "tmp", "srv", "var/tmp"):
        (root / d).mkdir(parents=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        if Path("/", name).is_symlink():
            (root / name).symlink_to(os.readlink(Path("/", name)))
    up, work, made = tmp_path / "up", tmp_path / "work", tmp_path / "made"
    for each in (up, work, made):
        each.mkdir()
    target = root / "usr" if how == "mounted" else made
    opts = f"lowerdir=/usr,upperdir={up},workdir={work}"
    done: list[Path] = []
    try:
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(target)], check=True)
        done.append(target)
        if how == "bound":
            subprocess.run(["mount", "--bind", str(made), str(root / "usr")], check=True)
            done.append(root / "usr")
        script = "service postgresql stop\necho v > /usr/local/new\n"
        server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": script}})
        noop = dance(cmd, server, root)
        assert noop.returncode == 0, noop.stdout + noop.stderr
        assert "warning: Would execute : service postgresql stop" in noop.stderr
        assert "Created" in record_of(noop, "/usr/local/new")[0]
        assert not (root / "usr/local/new").exists()
        script = "echo v > /usr/local/new\n"
        server = make_server(tmp_path / "srv2", {"m": {"scripts/10-x.sh": script}})
        live = dance(cmd, server, root, noop=False)
        assert live.returncode == 0, live.stdout + live.stderr
        assert (root / "usr/local/new").read_text() == "v\n"
    finally:
        for point in reversed(done):
            subprocess.run(["umount", "-l", str(point)], check=False)
    assert not Path("/usr/local/new").exists()


# ---- hard links of the target ----


def test_a_change_through_one_name_of_a_hard_linked_file_changes_every_name(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    (scratch_root / "srv/conf").mkdir()
    (scratch_root / "srv/a").write_text("v1\n")
    os.link(scratch_root / "srv/a", scratch_root / "srv/conf/b")
    (scratch_root / "srv/c").write_text("v1\n")
    os.link(scratch_root / "srv/c", scratch_root / "srv/d")
    # Through the inode (both names change), and anew by rename (sed -i: only that name).
    script = "echo v2 >> /srv/a\ncat /srv/conf/b\nsed -i s/v1/v3/ /srv/c\n"
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": script}})
    want = ["/srv/a", "/srv/c", "/srv/conf/b"]
    noop = dance(cmd, server, scratch_root)
    assert noop.returncode == 0, noop.stderr
    assert sorted(r.split(" : ")[0].rsplit(": ", 1)[1] for r in records(noop)) == want
    live = dance(cmd, server, scratch_root, noop=False)
    assert live.returncode == 0, live.stderr
    assert sorted(records(live)) == sorted(records(noop))
    a, b = scratch_root / "srv/a", scratch_root / "srv/conf/b"
    assert a.read_text() == b.read_text() == "v1\nv2\n"
    assert a.stat().st_ino == b.stat().st_ino  # still one file
    assert (scratch_root / "srv/d").read_text() == "v1\n"  # sed -i made /srv/c anew
