"""A NOOP step's sandbox kept for the next one alike (engine/warm.py, engine/lowers.py).

Whether two steps ran in the same kept sandbox is seen from inside: /run is a tmpfs
mounted with the sandbox, and its time is the moment it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from disco.engine.runner import Zygote
from disco.engine.sandbox import Mode, Step, upper_of
from disco.run import run
from test_sandbox import root_only, scratch  # noqa: F401 -- steps' fixture

DEV = "date -r /run +%s%N"
PY = "/usr/bin/python3 -c"


class Steps:
    """NOOP steps of one zygote over `root`, each in a fresh layer; each step's stdout."""

    def __init__(self, zygote: Zygote, root: Path, tmp: Path) -> None:
        self.zygote, self.root, self.tmp, self.n = zygote, root, tmp, 0

    def layer(self) -> Path:
        return self.tmp / "layers" / str(self.n)

    def run(self, script: str, **kw: object) -> tuple[int, str]:
        self.n += 1
        out = self.tmp / f"out{self.n}"
        self.layer().parent.mkdir(exist_ok=True)
        step = Step(("bash", "-c", script), self.root, self.layer(), stdout=out,
                    hide=(str(self.tmp / "layers"),), **kw)  # type: ignore[arg-type]  # fmt: skip
        result = self.zygote.run(step)
        return result.returncode, out.read_text()

    def dev(self) -> str:
        code, out = self.run(DEV)
        assert code == 0
        return out


@pytest.fixture
def steps(scratch: Path, tmp_path: Path) -> Iterator[Steps]:  # noqa: F811
    for d in ("proc", "sys", "dev", "run"):  # else made in each new sandbox's upper
        (scratch / d).mkdir()
    with Zygote(Mode.NOOP, tmp_path / "z") as zygote:
        yield Steps(zygote, scratch, tmp_path)


@root_only
def test_steps_that_write_nothing_share_one_sandbox(steps: Steps) -> None:
    first = steps.dev()
    code, out = steps.run(f"cat /etc/motd /home/user/notes; ls /run; {DEV}")
    assert code == 0 and out == f"hello\nnotes\n{first}"
    assert steps.dev() == first
    assert sorted(os.listdir(upper_of(steps.layer()))) == ["home"]  # as disco made it


WRITES = {
    "a file": "echo x > /etc/new",
    "a file of its own filesystem": "echo x > /home/user/new",
    "an append": "echo more >> /etc/motd",
    "a removal": "rm /data/keep",
    "a directory made and removed": "mkdir /etc/d && rmdir /etc/d",
    "the root's mode": "chmod 700 /",
    "the root's times": "touch -d 2001-01-01 /",
    "an xattr of the root": f'{PY} \'import os; os.setxattr("/", "user.x", b"1")\'',
    "a file in /run": "echo x > /run/x",
    "/run's mode": "chmod 700 /run",
    "a socket in /run": f"{PY} 'import socket; socket.socket(socket.AF_UNIX).bind(\"/run/s\")'",
}
SEEN = (
    "ls /etc/new /home/user/new /run/x /run/s 2>/dev/null; cat /etc/motd /data/keep;"
    " ls /etc | grep -x d; stat -c '%a %Y' /; stat -c %a /run;"
    f" {PY} 'import os; print(os.listxattr(\"/\"))';"
)


@root_only
@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_a_step_never_sees_what_the_step_before_wrote(steps: Steps, write: str) -> None:
    root = steps.root
    _, pristine = steps.run(SEEN)
    root_stat = os.stat(upper_of(steps.layer()))
    first = steps.dev()
    code, _ = steps.run(write)
    assert code == 0
    wrote = steps.layer()
    code, out = steps.run(SEEN + DEV)
    assert code == 0 and out.endswith("\n")
    seen, dev = out.rsplit("\n", 2)[0] + "\n", out.rsplit("\n", 2)[1] + "\n"
    assert seen == pristine and dev != first  # a sandbox of its own
    assert os.stat(upper_of(steps.layer())).st_mode == root_stat.st_mode
    if "/run" not in write:  # what it wrote is its layer's, for disco to read
        up = upper_of(wrote)
        st = os.stat(up)
        assert (
            sorted(p.name for p in up.iterdir()) != ["home"]
            or [p.name for p in (up / "home").iterdir()]
            or (st.st_mode, st.st_mtime_ns) != (root_stat.st_mode, root_stat.st_mtime_ns)
            or "user.x" in os.listxattr(up)
        )
    assert (root / "etc/motd").read_text() == "hello\n" and (root / "data/keep").exists()


def replace(root: Path) -> None:
    (root / "etc/motd.new").write_text("new\n")
    os.rename(root / "etc/motd.new", root / "etc/motd")


CHANGES = {
    "a file replaced": replace,
    "a file made": lambda r: (r / "etc/made").write_text("made\n"),
    "a file removed": lambda r: os.unlink(r / "data/keep"),
    "a directory renamed": lambda r: os.rename(r / "data/dir", r / "data/moved"),
    "a mode changed": lambda r: os.chmod(r / "etc/motd", 0o600),
    "a file of a submount made": lambda r: (r / "home/user/made").write_text("made\n"),
}
LOOK = (
    "cat /etc/motd; cat /etc/made /home/user/made 2>/dev/null; ls /data; stat -c %a /etc/motd;"
    " cat /data/keep 2>/dev/null; "
)


@root_only
@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_change_below_the_sandbox_is_seen_by_the_next_step(steps: Steps, change: object) -> None:
    root = steps.root
    code, before = steps.run(LOOK)  # every name looked up, and cached, once
    first = steps.dev()
    assert steps.dev() == first  # kept while nothing changed
    change(root)  # type: ignore[operator]
    code, out = steps.run(LOOK + DEV)
    seen, dev = out.rsplit("\n", 2)[0] + "\n", out.rsplit("\n", 2)[1] + "\n"
    assert dev != first and seen != before
    fresh = Steps(steps.zygote, root, steps.tmp / "fresh")
    (steps.tmp / "fresh").mkdir()
    with Zygote(Mode.NOOP, steps.tmp / "z2") as other:  # a sandbox built for this state
        fresh.zygote = other
        assert fresh.run(LOOK)[1] == seen


@root_only
def test_a_change_elsewhere_on_the_same_filesystem_keeps_it(steps: Steps, tmp_path: Path) -> None:
    first = steps.dev()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f").write_text("x")
    os.rename(tmp_path / "elsewhere", tmp_path / "moved")
    assert steps.dev() == first


@root_only
def test_a_change_in_a_lower_layer_is_seen(steps: Steps, tmp_path: Path) -> None:
    below = tmp_path / "below"
    upper_of(below).mkdir(parents=True)
    (upper_of(below) / "etc").mkdir()
    look = "cat /etc/from-below 2>/dev/null || echo none; "
    assert steps.run(look, lower_layers=(below,))[1] == "none\n"
    first = steps.run(DEV, lower_layers=(below,))[1]
    assert steps.run(DEV, lower_layers=(below,))[1] == first
    (upper_of(below) / "etc" / "from-below").write_text("folded\n")  # as a fold does
    out = steps.run(look + DEV, lower_layers=(below,))[1]
    assert out.startswith("folded\n") and not out.endswith(first)


@root_only
def test_a_lower_layer_named_by_a_symlink_that_moves_is_seen(steps: Steps, tmp_path: Path) -> None:
    for name, text in (("a", "A"), ("b", "B")):
        (upper_of(tmp_path / name) / "etc").mkdir(parents=True)
        (upper_of(tmp_path / name) / "etc" / "which").write_text(text)
    (tmp_path / "pending").symlink_to("a")  # as disco's layers/pending
    below = (tmp_path / "pending",)
    assert steps.run("cat /etc/which", lower_layers=below)[1] == "A"
    assert steps.run("cat /etc/which", lower_layers=below)[1] == "A"
    (tmp_path / ".pending").symlink_to("b")
    os.replace(tmp_path / ".pending", tmp_path / "pending")
    assert steps.run("cat /etc/which", lower_layers=below)[1] == "B"


@root_only
def test_a_step_alike_but_for_its_plan_gets_its_own(steps: Steps, tmp_path: Path) -> None:
    first = steps.dev()
    code, out = steps.run(f"pwd; {DEV}", cwd="/etc")
    assert code == 0
    assert out.startswith("/etc\n") and out != f"/etc\n{first}"


@root_only
def test_a_template_that_wrote_nothing_leaves_no_layer(steps: Steps, tmp_path: Path) -> None:
    root = steps.root
    layers = tmp_path / "discarded"
    with Zygote(Mode.NOOP, tmp_path / "z3") as zygote:
        for i in range(3):
            (layers / str(i)).mkdir(parents=True)
            step = Step(("true",), root, layers / str(i), hide=(str(layers),))
            assert zygote.run(step, discard=True).returncode == 0
        zygote.run(Step(("true",), root, layers / "x", hide=(str(layers),)))
        names = sorted(os.listdir(layers))
        assert names[0].startswith(".warm-") and names[1:] == ["x"]  # the kept one's dirs
        assert sorted(os.listdir(layers / "x")) == ["upper"]  # as disco made it
    assert os.listdir(layers) == ["x"]  # the zygote's own went with it


@root_only
def test_where_keeping_does_not_pay_it_stops_for_a_while(steps: Steps) -> None:
    first = steps.dev()
    assert steps.dev() == first
    # The first write is the kept one's (which served a step: no miss); then two
    # sandboxes dropped before they served a second step.
    for _ in range(3):
        assert steps.run("echo x > /etc/new")[0] == 0
    devs = [steps.dev() for _ in range(18)]
    assert len(set(devs[:17])) == 17  # built anew for 16 steps, then kept again ...
    assert devs[17] == devs[16]  # ... for the next


@root_only
def test_a_layer_with_writes_in_it_already_is_never_served_nor_moved(
    steps: Steps, tmp_path: Path
) -> None:
    """As a NOOP shell's layer, which every command of the session mounts anew."""
    first = steps.dev()
    assert steps.dev() == first  # a kept sandbox
    session = tmp_path / "session"
    (upper_of(session) / "etc").mkdir(parents=True)
    (upper_of(session) / "etc" / "mine").write_text("mine\n")
    for _ in range(2):
        out = tmp_path / "out"
        step = Step(("cat", "/etc/mine"), steps.root, session, stdout=out,
                    hide=(str(tmp_path),))  # fmt: skip
        assert steps.zygote.run(step).returncode == 0 and out.read_text() == "mine\n"
    steps.zygote.close()
    assert (upper_of(session) / "etc" / "mine").read_text() == "mine\n"


@root_only
def test_lowers_on_one_filesystem_reached_through_other_mounts(tmp_path: Path) -> None:
    """A change in the root is seen, though the layer below the step lies on the same
    filesystem and is reached through a bind mount of another part of it."""
    fs, bound = tmp_path / "fs", tmp_path / "bound"
    fs.mkdir()
    bound.mkdir()
    run(["mount", "-t", "tmpfs", "tmpfs", str(fs)])
    try:
        root = fs / "root"
        for d in ("etc", "proc", "sys", "dev", "run", "usr"):
            (root / d).mkdir(parents=True)
        run(["mount", "--bind", "-o", "ro", "/usr", str(root / "usr")])
        for name in ("bin", "sbin", "lib", "lib64"):
            if Path("/", name).is_symlink():
                (root / name).symlink_to(os.readlink(Path("/", name)))
        (root / "etc" / "motd").write_text("old\n")
        (upper_of(fs / "x" / "layer") / "etc").mkdir(parents=True)
        run(["mount", "--bind", str(fs / "x"), str(bound)])
        with Zygote(Mode.NOOP, tmp_path / "z") as zygote:
            steps = Steps(zygote, root, tmp_path / "s")
            (tmp_path / "s").mkdir()
            below = (bound / "layer",)
            look = f"cat /etc/motd; {DEV}"
            first = steps.run(look, lower_layers=below)[1]
            assert steps.run(look, lower_layers=below)[1] == first  # kept
            (root / "etc" / "motd.new").write_text("new\n")
            os.rename(root / "etc" / "motd.new", root / "etc" / "motd")
            assert steps.run(look, lower_layers=below)[1].startswith("new\n")
    finally:
        for m in (bound, fs / "root" / "usr", fs):
            run(["umount", "-l", str(m)], check=False)
