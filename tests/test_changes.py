"""The change report (DESIGN §7): upper dirs built by hand as overlayfs leaves them, and one
real layer. Whiteouts and trusted.* xattrs need root."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disco.engine.change_text import content_diff, header
from disco.engine.changes import (
    DEFAULT_EXCLUDE,
    DEFAULT_SENSITIVE,
    Change,
    ChangeKind,
    Meta,
    _with_perms,
    is_sensitive,
    load_sensitive,
    read_changes,
)
from disco.engine.runner import run_step
from disco.engine.sandbox import Step, upper_of
from disco.errors import DiscoError
from disco.run import run

ROOT = os.geteuid() == 0
PASSWD = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n"
GROUP = "root:x:0:\nalice:x:1000:\n"
STUFF = "HOST=localhost.localdomain\nKEY_VALUE=LOLTHISKEYMEANSNOTHING\n"
SHADOW_ROOT = "root:$6$57kBYzwRrygFb5op$vghIbLjxmkzTznSbN4kA5fdxFsd1ye7:15517:0:99999:7:::\n"
SHADOW_REST = "bin:*:15240:0:99999:7:::\ndaemon:*:15240:0:99999:7:::\n"


def md5(data: str | bytes) -> str:
    return hashlib.md5(data.encode() if isinstance(data, str) else data).hexdigest()


def put(path: Path, data: str | bytes = "", mode: int = 0o644, owner: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chown(path, owner, owner)
    os.chmod(path, mode)
    return path


class Tree:
    """A target root, the upper dir of a step, and earlier layers: built the way overlayfs
    writes them (copy-ups keep owner, mode and content, and carry trusted.overlay.*)."""

    def __init__(self, base: Path) -> None:
        self.base, self.root, self.upper = base, base / "root", base / "upper"
        put(self.root / "etc/passwd", PASSWD)
        put(self.root / "etc/group", GROUP)
        put(self.root / "etc/motd", "hello\n")
        put(self.root / "data/keep", "keep\n")
        put(self.root / "data/dir/a", "a\n")
        put(self.root / "data/dir/sub/b", "b\n")
        self.upper.mkdir()
        os.setxattr(self.upper, "trusted.overlay.uuid", b"\x01" * 16)
        self.lowers: list[Path] = [self.root]

    def dir(self, rel: str) -> Path:
        """The upper dir at `rel`, its missing parts copied up from the lower view."""
        up = self.upper
        for part in Path(rel).parts:
            up = up / part
            if up.exists():
                continue
            up.mkdir()
            rel_up = up.relative_to(self.upper)
            lower = next((p / rel_up for p in self.lowers if (p / rel_up).is_dir()), None)
            if lower is not None:
                st = lower.stat()
                os.chown(up, st.st_uid, st.st_gid)
                os.chmod(up, stat.S_IMODE(st.st_mode))
                os.setxattr(up, "trusted.overlay.impure", b"y")
                os.setxattr(up, "trusted.overlay.origin", b"\0handle")
        return up

    def copy_up(self, rel: str, *, touch: bool = False) -> Path:
        lower = next(p / rel for p in self.lowers if os.path.lexists(p / rel))
        up = self.dir(str(Path(rel).parent)) / Path(rel).name
        shutil.copy2(lower, up, follow_symlinks=False)
        st = lower.lstat()
        os.chown(up, st.st_uid, st.st_gid, follow_symlinks=False)
        os.setxattr(up, "trusted.overlay.origin", b"\0handle", follow_symlinks=False)
        if touch:
            os.utime(up, ns=(st.st_atime_ns + 10**9, st.st_mtime_ns + 10**9))
        return up

    def write(self, rel: str, data: str | bytes = "", mode: int = 0o644, owner: int = 0) -> Path:
        return put(self.dir(str(Path(rel).parent)) / Path(rel).name, data, mode, owner)

    def whiteout(self, rel: str, layer: Path | None = None) -> None:
        """A whiteout at `rel` in the upper, or in the earlier `layer`."""
        path = layer / rel if layer else self.dir(str(Path(rel).parent)) / Path(rel).name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))

    def changes(self, **kw: Sequence[str]) -> list[Change]:
        return read_changes(self.upper, self.lowers, **kw)

    @property
    def dev(self) -> str:
        return f"{self.root.lstat().st_dev:x}"


@pytest.fixture
def t(tmp_path: Path) -> Tree:
    if not ROOT:
        pytest.skip("needs root (whiteouts, trusted.* xattrs, chown)")
    return Tree(tmp_path)


def opaque(path: Path) -> Path:
    os.setxattr(path, "trusted.overlay.opaque", b"y")
    return path


def summary(changes: Sequence[Change]) -> list[tuple[str, str]]:
    return [(c.path, c.kind.value) for c in changes]


# ---- the seed's cases, exactly ----


def test_created_file_as_in_the_seed(t: Tree) -> None:
    t.write("etc/othermodule/stuff.cfg", STUFF)
    directory, created = t.changes()
    assert header(created) == (
        "File: file: /etc/othermodule/stuff.cfg : Created : type=[regular file]"
        f" device=[{t.dev}] mode=[81a4] selinux=[?] md5=[77b20e4840b1be13a577e152edc6b443]"
        " perms=[root:root 644]"
    )
    assert content_diff(created) == (
        "0a1,2\n> HOST=localhost.localdomain\n> KEY_VALUE=LOLTHISKEYMEANSNOTHING"
    )
    assert content_diff(created, "unified") == (
        "--- a/etc/othermodule/stuff.cfg\n+++ b/etc/othermodule/stuff.cfg\n@@ -0,0 +1,2 @@\n"
        "+HOST=localhost.localdomain\n+KEY_VALUE=LOLTHISKEYMEANSNOTHING"
    )
    assert header(directory) == (
        "File: directory: /etc/othermodule : Created : type=[directory]"
        f" device=[{t.dev}] mode=[41ed] selinux=[?] perms=[root:root 755]"
    )
    assert content_diff(directory) == ""
    assert (created.before, created.old, created.new) == (None, None, t.upper / created.path[1:])


def test_created_empty_file_as_in_the_seed(t: Tree) -> None:
    t.write("data/myhotbash")
    [c] = t.changes()
    assert header(c) == (
        f"File: file: /data/myhotbash : Created : type=[regular empty file] device=[{t.dev}]"
        " mode=[81a4] selinux=[?] md5=[d41d8cd98f00b204e9800998ecf8427e] perms=[root:root 644]"
    )
    assert content_diff(c) == ""


def test_shadow_as_in_the_seed_content_hidden(t: Tree) -> None:
    put(t.root / "etc/shadow", SHADOW_ROOT + SHADOW_REST, mode=0)
    t.write("etc/shadow", SHADOW_REST, mode=0o644)
    [c] = t.changes()
    assert header(c) == (
        f"File: file: /etc/shadow : Modified : md5=[{md5(SHADOW_ROOT + SHADOW_REST)} =>"
        f" {md5(SHADOW_REST)}] perms=[root:root 0 => root:root 644] mode=[8000 => 81a4]"
    )
    assert c.sensitive and content_diff(c) == "(content hidden: sensitive)"
    [c] = t.changes(sensitive=())
    assert not c.sensitive and content_diff(c) == "1d0\n< " + SHADOW_ROOT.rstrip("\n")


def test_deleted_file_as_in_the_seed(t: Tree) -> None:
    t.whiteout("etc/passwd")
    [c] = t.changes()
    assert header(c) == "File: file: /etc/passwd : Deleted"
    assert (c.before and c.before.perms, c.old, c.new) == (
        "root:root 644",
        t.root / "etc/passwd",
        None,
    )
    assert content_diff(c) == "1,2d0\n< " + PASSWD.rstrip("\n").replace("\n", "\n< ")


# ---- modified, or not ----


def test_appended_content(t: Tree) -> None:
    with t.copy_up("etc/motd", touch=True).open("a") as f:
        f.write("more\n")
    [c] = t.changes()
    old, new = md5("hello\n"), md5("hello\nmore\n")
    assert header(c) == f"File: file: /etc/motd : Modified : md5=[{old} => {new}]"
    assert content_diff(c) == "1a2\n> more"
    assert content_diff(c, "unified") == (
        "--- a/etc/motd\n+++ b/etc/motd\n@@ -1 +1,2 @@\n hello\n+more"
    )
    assert (c.old, c.new) == (t.root / "etc/motd", t.upper / "etc/motd")


def test_owner_or_mode_only(t: Tree) -> None:
    os.chown(t.copy_up("etc/motd"), 1000, 1000)
    [c] = t.changes()
    assert (
        header(c) == "File: file: /etc/motd : Modified : perms=[root:root 644 => alice:alice 644]"
    )
    assert content_diff(c) == ""
    os.chmod(t.upper / "etc/motd", 0o4755)
    os.chown(t.copy_up("data/keep"), 4242, 4242)  # not in the target's passwd: numbers
    keep, motd = t.changes()
    assert header(motd) == (
        "File: file: /etc/motd : Modified : perms=[root:root 644 => alice:alice 4755]"
        " mode=[81a4 => 89ed]"
    )
    assert header(keep).endswith("perms=[root:root 644 => 4242:4242 644]")


def test_touch_and_copied_up_parents_are_no_change(t: Tree) -> None:
    t.copy_up("etc/motd", touch=True)
    t.copy_up("data/dir/sub/b")
    os.utime(t.upper / "data/dir", ns=(1, 1))  # a dir's mtime changes when it is written in
    assert t.changes() == []


def test_the_root_itself(t: Tree) -> None:
    os.chmod(t.upper, 0o700)
    [c] = t.changes()
    assert header(c) == (
        "File: directory: / : Modified : perms=[root:root 755 => root:root 700] mode=[41ed => 41c0]"
    )


def test_xattr_change(t: Tree) -> None:
    os.setxattr(t.copy_up("etc/motd"), "user.note", b"x")
    [c] = t.changes()
    assert header(c) == "File: file: /etc/motd : Modified : xattrs=[none => user.note=x]"
    assert c.after and c.after.xattrs == (("user.note", b"x"),)


# ---- deleted, opaque, replaced ----


def test_deleted_dir_and_everything_below(t: Tree) -> None:
    t.whiteout("data/dir")
    changes = t.changes()
    assert summary(changes) == [
        ("/data/dir", "Deleted"),
        ("/data/dir/a", "Deleted"),
        ("/data/dir/sub", "Deleted"),
        ("/data/dir/sub/b", "Deleted"),
    ]
    assert [header(c) for c in changes[:2]] == [
        "File: directory: /data/dir : Deleted",
        "File: file: /data/dir/a : Deleted",
    ]
    assert content_diff(changes[0]) == "" and content_diff(changes[1]) == "1d0\n< a"


def test_opaque_dir_hides_what_the_upper_lacks(t: Tree) -> None:
    opaque(t.dir("data/dir"))  # rm -r /data/dir; mkdir /data/dir; echo a > ...; ...
    t.write("data/dir/a", "a\n")
    t.write("data/dir/new", "new\n")
    assert summary(t.changes()) == [
        ("/data/dir/new", "Created"),
        ("/data/dir/sub", "Deleted"),
        ("/data/dir/sub/b", "Deleted"),
    ]


def test_dir_replaced_by_a_file_and_back(t: Tree) -> None:
    t.write("data/dir", "x\n")
    opaque(t.dir("data/keep"))
    t.write("data/keep/f", "f\n")
    changes = t.changes()
    assert summary(changes) == [
        ("/data/dir", "Modified"),
        ("/data/dir/a", "Deleted"),
        ("/data/dir/sub", "Deleted"),
        ("/data/dir/sub/b", "Deleted"),
        ("/data/keep", "Modified"),
        ("/data/keep/f", "Created"),
    ]
    assert header(changes[0]) == (
        "File: file: /data/dir : Modified : type=[directory => regular file]"
        " perms=[root:root 755 => root:root 644] mode=[41ed => 81a4]"
    )
    assert content_diff(changes[0]) == "0a1\n> x"
    assert header(changes[4]).startswith(
        "File: directory: /data/keep : Modified : type=[regular file => directory]"
    )
    assert content_diff(changes[4]) == "1d0\n< keep"


# ---- other types ----


def test_symlink_created_and_retargeted(t: Tree) -> None:
    (t.root / "etc/alt").symlink_to("motd")
    (t.dir("etc") / "link").symlink_to("/etc/motd")
    (t.upper / "etc/alt").symlink_to("passwd")
    alt, link = t.changes()
    assert header(link) == (
        f"File: symlink: /etc/link : Created : type=[symbolic link] device=[{t.dev}]"
        " mode=[a1ff] selinux=[?] target=[/etc/motd] perms=[root:root 777]"
    )
    assert header(alt) == "File: symlink: /etc/alt : Modified : target=[motd => passwd]"
    assert content_diff(alt) == content_diff(link) == ""


def test_special_files(t: Tree) -> None:
    os.mkfifo(t.dir("etc") / "fifo", 0o600)
    os.mknod(t.upper / "etc/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    fifo, null = t.changes()
    assert header(fifo) == (
        f"File: special: /etc/fifo : Created : type=[fifo] device=[{t.dev}] mode=[1180]"
        " selinux=[?] perms=[root:root 600]"
    )
    assert header(null).startswith("File: special: /etc/null : Created : type=[character")
    assert "rdev=[1:3]" in header(null) and content_diff(null) == ""


def test_binary_files(t: Tree) -> None:
    put(t.root / "data/tool", b"\x7fELF\0\1")
    t.write("data/tool", b"\x7fELF\0\2")
    t.write("data/new.bin", b"text" * 3000 + b"\0")  # the NUL lies past the first 8 KiB
    tool, new = sorted(t.changes(), key=lambda c: c.path, reverse=True)
    assert content_diff(tool) == "Binary files differ"
    assert content_diff(new).startswith("0a1\n> text")


# ---- the lower view: stacked layers, exclusions, sensitive paths ----


def test_stacked_lowers(t: Tree) -> None:
    one = t.base / "one"  # an earlier layer's upper
    t.lowers.insert(0, one)
    t.whiteout("etc/motd", one)  # deleted by the earlier step: hides the root's file
    put(one / "etc/one", "from-1\n")
    (one / "data/dir").mkdir(parents=True)
    opaque(one / "data/dir")
    put(one / "data/keep/x", "a dir over the root's file\n")
    t.write("etc/motd", "new\n")
    t.write("etc/one", "from-2\n")
    t.write("data/dir/a", "a\n")
    t.whiteout("data/keep")
    changes = t.changes()
    assert summary(changes) == [
        ("/data/dir/a", "Created"),  # the earlier layer's opaque dir hid the root's
        ("/data/keep", "Deleted"),
        ("/data/keep/x", "Deleted"),
        ("/etc/motd", "Created"),
        ("/etc/one", "Modified"),
    ]
    assert changes[-1].old == one / "etc/one"
    assert content_diff(changes[-1]) == "1c1\n< from-1\n---\n> from-2"


def test_excluded_paths_are_never_reported(t: Tree) -> None:
    for rel in ("tmp/x", "var/tmp/y", "var/disco/z", "var/lib/w", "srv/state/s"):
        put(t.root / rel)
    for rel in ("tmp/x", "var/tmp/y", "var/disco/z", "run/r", "dev/null", "srv/state/s"):
        t.write(rel, "changed\n")
    exclude = (*DEFAULT_EXCLUDE, "/srv/state/")
    assert t.changes(exclude=exclude) == []
    shutil.rmtree(t.upper / "var")
    t.whiteout("var")
    assert summary(t.changes(exclude=exclude)) == [
        ("/var", "Deleted"),
        ("/var/lib", "Deleted"),
        ("/var/lib/w", "Deleted"),
    ]


SECRETS = """
    /etc/shadow /etc/gshadow- /etc/ssh/ssh_host_ed25519_key /root/.ssh/id_rsa
    /home/u/.ssh/id_ed25519 /etc/ssl/private/a.pem /etc/letsencrypt/live/x/privkey.pem
""".split()
NOT_SECRETS = """
    /etc/passwd /etc/ssh/ssh_host_ed25519_key.pub /root/.ssh/id_rsa.pub /etc/ssh/sshd_config
    /etc/shadow.d/x.conf /etc/ssl/certs/ca.pem
""".split()


def test_sensitive_globs() -> None:
    for path in SECRETS:
        assert is_sensitive(path, DEFAULT_SENSITIVE), path
    for path in NOT_SECRETS:
        assert not is_sensitive(path, DEFAULT_SENSITIVE), path


@settings(max_examples=300, deadline=None)
@given(
    globs=st.lists(st.text("/ab*?.[]!", min_size=1, max_size=6), max_size=5),
    path=st.text("/ab.x", min_size=1, max_size=8),
)
def test_sensitive_globs_the_last_match_wins(globs: list[str], path: str) -> None:
    """One regex for all globs says what the globs say one after the other."""
    hit = False
    for glob in globs:
        negate = glob.startswith("!")
        if fnmatch.fnmatchcase(path, glob[1:] if negate else glob):
            hit = not negate
    assert is_sensitive(path, globs) == hit


def test_a_changes_owner_names_replace_only_its_perms() -> None:
    """_with_perms is dataclasses.replace(perms=) for every field Meta has."""
    meta = Meta(*(f"v{i}" for i in range(len(dataclasses.fields(Meta)))))  # type: ignore[arg-type]
    assert _with_perms(meta, "root:root 644") == dataclasses.replace(meta, perms="root:root 644")


def test_load_sensitive(tmp_path: Path) -> None:
    assert load_sensitive(tmp_path) == DEFAULT_SENSITIVE
    put(
        tmp_path / "sensitive.d/b.list", "# app secrets\n\n  /srv/app/*.env\n!/srv/app/public.env\n"
    )
    put(tmp_path / "sensitive.d/a.list", "*/token\n")
    put(tmp_path / "sensitive.d/c.txt", "/not/read\n")
    globs = load_sensitive(tmp_path)
    assert globs == (*DEFAULT_SENSITIVE, "*/token", "/srv/app/*.env", "!/srv/app/public.env")
    assert is_sensitive("/srv/app/db.env", globs) and not is_sensitive("/srv/app/public.env", globs)
    put(tmp_path / "sensitive.d/d.list", "token\n")
    with pytest.raises(DiscoError, match=r"d.list:1: 'token' can never match"):
        load_sensitive(tmp_path)


def test_bad_diff_style(t: Tree) -> None:
    t.write("etc/new", "x\n")
    with pytest.raises(ValueError, match="style"):
        content_diff(t.changes()[0], "context")


# ---- a real layer ----


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A small target root: /usr bound read-only from the host (as in test_sandbox)."""
    if not ROOT:
        pytest.skip("needs root (mounts, namespaces)")
    root = tmp_path / "root"
    binds = ["usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64"):
        host = Path("/", name)
        if host.is_symlink():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(os.readlink(host))
        elif host.is_dir():
            binds.append(name)
    put(root / "etc/motd", "hello\n")
    put(root / "data/keep", "keep\n")
    put(root / "data/gone", "gone\n")
    mounted: list[Path] = []
    try:
        for name in binds:
            (root / name).mkdir()
            run(["mount", "--bind", "-o", "ro", f"/{name}", str(root / name)])
            mounted.append(root / name)
        yield root
    finally:
        for m in reversed(mounted):
            run(["umount", "-l", str(m)], check=False)


def test_a_real_layer(scratch: Path, tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    script = "touch /etc/motd; echo x >> /data/keep; rm /data/gone"
    assert run_step(Step(("bash", "-ec", script), root=scratch, layer=layer)).returncode == 0
    upper = upper_of(layer)
    assert (upper / "etc/motd").exists()  # touch copied it up, and the sandbox made /proc...
    changes = read_changes(upper, [scratch])
    assert summary(changes) == [("/data/gone", "Deleted"), ("/data/keep", "Modified")]
    old, new = md5("keep\n"), md5("keep\nx\n")
    assert header(changes[1]) == f"File: file: /data/keep : Modified : md5=[{old} => {new}]"
    assert content_diff(changes[1]) == "1a2\n> x"
    assert changes[1].kind is ChangeKind.MODIFIED


# ---- odd names: one record per line, quoted as `ls --quoting-style=escape` ----


ODD_NAMES = [
    "new\nline",
    "tab\there",
    "a : b",
    "sp ace",
    "back\\slash",
    "caf\u00e9",
    "\udcff\udcfe",
]


def test_odd_file_names_are_quoted_as_ls_quotes_them(t: Tree) -> None:
    for i, name in enumerate(ODD_NAMES):
        t.write(f"data/{name}", f"{i}\n")
    listing = run(
        ["ls", "--quoting-style=escape", str(t.upper / "data")], env={"LC_ALL": "C.UTF-8"}
    )
    expected = sorted(os.fsdecode(listing.stdout).splitlines())
    files = [c for c in t.changes() if c.path.startswith("/data/") and c.path != "/data/dir"]
    lines = [header(c) for c in files]
    assert all("\n" not in line and "\t" not in line for line in lines), lines
    names = sorted(line.split(" : ")[0].removeprefix("File: file: /data/") for line in lines)
    assert names == expected
    assert "File: file: /data/a\\ :\\ b : Created : " in "\n".join(lines)
