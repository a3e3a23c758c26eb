"""Nothing a step plants steers disco's own code (DESIGN §7, issue 21): the change reader,
the report's diffs, the hard-link relinker, delivery, fold and the template writer meet
symlinks, FIFOs and whiteouts where a step could have put them, and neither follow them
out of the layer nor hang on them. Each "host" here is a folder of the test's own; each
FIFO is the test's own, and every wait on one is bounded."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from disco.dance.dance import template_names
from disco.engine.change_text import content_diff
from disco.engine.links import relink
from disco.engine.stack import fold
from disco.engine.staging import Source, stage
from disco.errors import DiscoError
from disco.files import OffPath, open_dir, open_regular, opened_dir, read_regular
from disco.noop.view import View
from test_changes import Tree, opaque


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A folder standing for the host outside the layer: what a planted symlink points
    to. Tests assert it is left as it was."""
    where = tmp_path / "host"
    (where / "sub").mkdir(parents=True)
    (where / "secret").write_text("precious\n")
    return where


@pytest.fixture
def t(tmp_path: Path) -> Tree:
    """A target root, a step's upper and earlier layers, as test_changes builds them."""
    return Tree(tmp_path / "tree")


def listing(top: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[str(path.relative_to(top))] = (st.st_mode, data)
    return out


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO of the test's own that nobody writes: opening or reading it as a file would
    hang. Its reader, if any, is let go after the test."""
    path = tmp_path / "never-written"
    os.mkfifo(path)
    yield path
    _has_reader(path)  # a writer that comes and goes lets a stuck reader go


def _has_reader(path: Path) -> bool:
    """Whether a reader holds the FIFO open (its open, if it waits, then completes)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def bounded(target: object, *args: object, seconds: float = 20) -> object:
    """Call target(*args) in a thread; fail (instead of hanging) if it does not return."""
    result: list[object] = []
    error: list[BaseException] = []

    def call() -> None:
        try:
            result.append(target(*args))  # type: ignore[operator]
        except BaseException as e:  # noqa: BLE001 -- handed to the test
            error.append(e)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{target} hung on a planted path"
    if error:
        raise error[0]
    return result[0]


# ---- the basics: walking from a directory descriptor ----


def test_open_dir_walks_a_path_and_refuses_a_symlink_on_the_way(tmp_path: Path, host: Path) -> None:
    (tmp_path / "layer/etc").mkdir(parents=True)
    (tmp_path / "layer/etc/link").symlink_to(host)
    (tmp_path / "layer/etc/file").write_text("x")
    with opened_dir(tmp_path / "layer", ["etc"]) as fd:
        assert sorted(os.listdir(fd)) == ["file", "link"]
        with pytest.raises(OffPath) as e:
            open_dir(fd, ["link", "sub"])
        assert (e.value.names, e.value.symlink) == (("link",), True)
        with pytest.raises(OffPath) as e:
            open_dir(fd, ["file"])
        assert (e.value.names, e.value.symlink) == (("file",), False)
        with pytest.raises(FileNotFoundError):
            open_dir(fd, ["missing"])
        with pytest.raises(ValueError):
            open_dir(fd, [".."])


def test_open_regular_opens_a_regular_file_and_nothing_else(
    tmp_path: Path, host: Path, fifo: Path
) -> None:
    (tmp_path / "to-secret").symlink_to(host / "secret")
    (tmp_path / "to-fifo").symlink_to(fifo)
    (tmp_path / "file").write_text("mine\n")
    assert read_regular(tmp_path / "file") == b"mine\n"
    for planted in ("to-secret", "to-fifo", "never-written"):
        with pytest.raises(OSError):
            bounded(open_regular, tmp_path / planted)
    assert not _has_reader(fifo)  # never opened, so no writer of the host's was woken


# ---- the change reader and the report's diffs ----


def test_a_planted_symlink_as_etc_passwd_is_no_user_table(t: Tree, host: Path) -> None:
    """The owner names of a layer's files come from its own etc/passwd only if that is a
    regular file: a step's symlink there is never followed (into a file hidden from the
    step, or one that hangs a reader such as /proc/kmsg)."""
    (host / "passwd").write_text("planted:x:4242:4242::/:/bin/sh\n")
    (host / "group").write_text("planted:x:4242:\n")
    for name in ("passwd", "group"):
        t.dir("etc")
        (t.upper / "etc" / name).symlink_to(host / name)
    t.write("etc/new", "x\n", owner=4242)
    before = listing(host)
    changes = t.changes()
    new = next(c for c in changes if c.path == "/etc/new")
    assert new.after is not None and new.after.perms == "4242:4242 644"
    assert listing(host) == before


def test_a_created_files_device_is_never_read_through_a_symlink_of_the_target(t: Tree) -> None:
    """Live, an earlier step's symlink is part of the target (/etc/x -> /proc/self); a
    step that made /etc/x a directory is reported with the target's device, without a
    stat of where the old symlink led."""
    (t.root / "etc/x").symlink_to("/proc/self")
    opaque(t.dir("etc/x"))
    t.write("etc/x/status", "mine\n")
    by_path = {c.path: c for c in t.changes()}
    created = by_path["/etc/x/status"]
    assert created.after is not None and created.after.device == t.dev


def test_a_diff_reads_only_the_regular_file_it_read_before(t: Tree, host: Path, fifo: Path) -> None:
    """A side of a change that became a symlink after the layer was read (a step's
    process still at work) is not read through: not the host's secret, not a FIFO."""
    t.write("etc/motd", "changed\n")
    t.write("etc/made", "new\n")
    changes = {c.path: c for c in t.changes()}
    assert content_diff(changes["/etc/motd"]) == "1c1\n< hello\n---\n> changed"
    for path in ("/etc/motd", "/etc/made"):
        for planted in (host / "secret", fifo):
            target = t.upper / path.lstrip("/")
            target.unlink()
            target.symlink_to(planted)
            with pytest.raises(OSError):
                bounded(content_diff, changes[path])
    assert not _has_reader(fifo)


# ---- the hard-link relinker ----


def hard_linked_root(base: Path) -> tuple[Path, Path]:
    """A target whose /e/g is also /d/deep/f, and a step's layer that copied /e/g up."""
    root, upper = base / "root", base / "upper"
    (root / "d/deep").mkdir(parents=True)
    (root / "e").mkdir()
    (root / "e/g").write_text("v1\n")
    os.link(root / "e/g", root / "d/deep/f")
    (upper / "e").mkdir(parents=True)
    (upper / "e/g").write_text("v2\n")
    return root, upper


def copied(upper: Path) -> set[tuple[int, int]]:
    st = (upper / "e/g").lstat()
    return {(st.st_dev, st.st_ino)}


def test_the_relinker_gives_a_copied_up_file_its_other_names(tmp_path: Path) -> None:
    root, upper = hard_linked_root(tmp_path)
    assert relink(upper, [root], copied(upper)) == ["/d/deep/f"]
    assert (upper / "d/deep/f").samefile(upper / "e/g")


@pytest.mark.parametrize("planted", ["symlink", "whiteout", "file", "opaque"])
def test_the_relinker_never_links_where_the_step_hid_the_name(
    tmp_path: Path, host: Path, planted: str
) -> None:
    """A step that made /d a symlink (to a folder of the host), deleted or replaced /d,
    or emptied it: the other name /d/deep/f is gone from its view, and nothing is made
    on the way, least of all through its symlink."""
    root, upper = hard_linked_root(tmp_path)
    if planted == "symlink":
        (upper / "d").symlink_to(host)
    elif planted == "whiteout":
        os.mknod(upper / "d", stat.S_IFCHR, os.makedev(0, 0))
    elif planted == "file":
        (upper / "d").write_text("a file now\n")
    else:
        (upper / "d").mkdir()
        opaque(upper / "d")
    before = listing(host)
    assert relink(upper, [root], copied(upper)) == []
    assert listing(host) == before
    assert sorted(p.name for p in upper.rglob("*")) == ["d", "e", "g"]


# ---- fold ----


def test_fold_never_follows_a_symlink_of_the_target(tmp_path: Path, host: Path) -> None:
    """The target has /x -> a folder of the host, a NOOP step made /x a directory with a
    file f, the next one deleted it. overlayfs never merges through a symlink, so the
    deletion has nothing beneath to hide: folded, it is applied, not kept as a whiteout
    because the host's folder happens to hold an f."""
    root, below, top = tmp_path / "root", tmp_path / "below", tmp_path / "top"
    root.mkdir()
    (root / "x").symlink_to(host)
    (host / "f").write_text("the host's\n")
    (below / "x").mkdir(parents=True)
    (below / "x/f").write_text("made by a step\n")
    (top / "x").mkdir(parents=True)
    os.mknod(top / "x/f", stat.S_IFCHR, os.makedev(0, 0))
    before = listing(host)
    fold(top, below, root)
    assert os.listdir(below / "x") == []
    assert listing(host) == before


def test_fold_never_sets_metadata_through_a_symlink(tmp_path: Path, host: Path) -> None:
    (tmp_path / "top").mkdir()
    (tmp_path / "top").chmod(0o700)
    (tmp_path / "below").symlink_to(host)
    mode = stat.S_IMODE(host.stat().st_mode)
    with pytest.raises(OSError):
        fold(tmp_path / "top", tmp_path / "below", None)
    assert stat.S_IMODE(host.stat().st_mode) == mode


# ---- delivery ----


def test_delivery_never_writes_through_a_symlink_it_delivered(tmp_path: Path, host: Path) -> None:
    """files/ delivers /etc/x as a symlink to a folder of the host; the templates' output
    then has /etc/x/y. Staged without a sandbox, y must not land in the host's folder."""
    root, upper = tmp_path / "root", tmp_path / "upper"
    (root / "etc").mkdir(parents=True)
    files, outputs = tmp_path / "files", tmp_path / "outputs"
    (files / "etc").mkdir(parents=True)
    (files / "etc/x").symlink_to(host)
    (outputs / "etc/x").mkdir(parents=True)
    (outputs / "etc/x/y").write_text("from a template\n")
    upper.mkdir()
    before = listing(host)
    sources = [Source(files, "m/files"), Source(outputs, "m/templates", keep_owner=False)]
    with pytest.raises(DiscoError, match="/etc/x is a symbolic link delivered by this module"):
        stage(sources, upper, [root])
    assert listing(host) == before


def test_delivery_follows_a_symlink_of_the_target_only_inside_the_layer(
    tmp_path: Path, host: Path
) -> None:
    """The target's /srv -> ../host (which leads to a folder of the host, seen from the
    host) is followed as cp in the target would: to /host of the target, made in the
    layer."""
    root, upper, files = tmp_path / "root", tmp_path / "upper", tmp_path / "files"
    root.mkdir()
    (root / "srv").symlink_to("../host")
    (files / "srv").mkdir(parents=True)
    (files / "srv/y").write_text("delivered\n")
    upper.mkdir()
    before = listing(host)
    stage([Source(files, "m/files")], upper, [root])
    assert (upper / "host/y").read_text() == "delivered\n"
    assert listing(host) == before


# ---- the template writer ----


def templates_of(base: Path) -> Path:
    """A module's templates/: etc/app/app.conf, its directory mode 0750, the file 0640."""
    templates = base / "templates"
    (templates / "etc/app").mkdir(parents=True)
    (templates / "etc/app").chmod(0o750)
    (templates / "etc/app/app.conf").write_text("echo hello\n")
    (templates / "etc/app/app.conf").chmod(0o640)
    return templates


def test_a_template_output_is_a_fresh_file_in_directories_with_the_templates_modes(
    tmp_path: Path,
) -> None:
    view, templates = View(tmp_path / "view"), templates_of(tmp_path)
    view.path.mkdir()
    out, fd = view.output("m", templates, "etc/app/app.conf")
    os.close(fd)
    assert out == view.out("m") / "tree/etc/app/app.conf"
    assert out.is_file() and not out.is_symlink() and out.read_bytes() == b""
    assert stat.S_IMODE((out.parent).stat().st_mode) == 0o750


@pytest.mark.parametrize("where", ["out/m", "out/m/tree/etc", "out/m/tree/etc/app/app.conf"])
def test_a_template_output_never_goes_through_a_symlink_in_the_view(
    tmp_path: Path, host: Path, where: str
) -> None:
    """A symlink in the view's output tree (which nothing but disco writes) is never
    followed: on the way it is an error, as the output's own name it is replaced."""
    view, templates = View(tmp_path / "view"), templates_of(tmp_path)
    (view.path / where).parent.mkdir(parents=True)
    (view.path / where).symlink_to(host / "secret" if where.endswith(".conf") else host)
    before = listing(host)
    if where.endswith(".conf"):
        out, fd = view.output("m", templates, "etc/app/app.conf")
        os.close(fd)
        assert out.is_file() and not out.is_symlink()
    else:
        with pytest.raises(DiscoError, match=f"{where} in the view is not a directory"):
            view.output("m", templates, "etc/app/app.conf")
    assert listing(host) == before


def test_template_names_never_walk_into_a_symlinked_directory(tmp_path: Path, host: Path) -> None:
    templates = templates_of(tmp_path)
    (templates / "elsewhere").symlink_to(host)
    (templates / "etc/motd").symlink_to("app/app.conf")
    assert template_names(templates) == ["elsewhere", "etc/app/app.conf", "etc/motd"]
