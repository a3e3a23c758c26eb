"""One line per package (issue 25, DESIGN §17): a step's changes grouped by the packages
whose dpkg file lists it changed; conffiles, /etc and files with xattrs keep their records."""

from __future__ import annotations

from pathlib import Path

from disco.dance.package_lines import group
from disco.engine.changes import Change, ChangeKind, Meta

STATUS = """Package: {name}
Status: install ok installed
Version: {version}

Package: base
Status: install ok installed
Version: 1
"""


def meta(xattrs: tuple[tuple[str, bytes], ...] = ()) -> Meta:
    return Meta("regular file", "2c", "81a4", "root:root 644", "?", "0" * 32, None, 0, 0, 1, 0,
                xattrs)  # fmt: skip


def change(path: str, kind: ChangeKind, old: Path | None = None, new: Path | None = None,
           xattrs: tuple[tuple[str, bytes], ...] = ()) -> Change:  # fmt: skip
    before = None if kind is ChangeKind.CREATED else meta()
    after = None if kind is ChangeKind.DELETED else meta(xattrs)
    return Change(path, kind, before, after, old, new, False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_an_install_an_upgrade_and_a_removal_each_say_one_line(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    stanza = "\nPackage: {}\nStatus: install ok installed\nVersion: {}\n"
    status_old = write(old / "status", STATUS.format(name="tool", version="1.0")
                       + stanza.format("gone", "3"))  # fmt: skip
    status_new = write(new / "status", STATUS.format(name="tool", version="2.0")
                       + stanza.format("fresh", "0.1"))  # fmt: skip
    info = "/var/lib/dpkg/info/"
    tool_list = "/usr/bin/tool\n/etc/tool.conf\n/usr/share/doc/tool/x\n/var/lib/tool/state\n"
    changes = [
        change("/var/lib/dpkg/status", ChangeKind.MODIFIED, status_old, status_new),
        change(f"{info}tool.list", ChangeKind.MODIFIED, old / "t", write(new / "t", tool_list)),
        change(f"{info}tool.conffiles", ChangeKind.CREATED, None,
               write(new / "tool.conffiles", "/var/lib/tool/state\n")),
        change("/usr/bin/tool", ChangeKind.MODIFIED, old / "x", new / "x"),
        change("/usr/share/doc/tool/x", ChangeKind.CREATED, None, new / "x"),
        change("/etc/tool.conf", ChangeKind.MODIFIED, old / "x", new / "x"),
        change("/var/lib/tool/state", ChangeKind.MODIFIED, old / "x", new / "x"),
        change(f"{info}fresh.list", ChangeKind.CREATED, None, write(new / "f", "/usr/bin/fresh\n")),
        change(f"{info}fresh.md5sums", ChangeKind.CREATED, None, new / "x"),
        change("/usr/bin/fresh", ChangeKind.CREATED, None, new / "x",
               xattrs=(("security.capability", b"x"),)),
        change(f"{info}gone.list", ChangeKind.DELETED, write(old / "g", "/usr/bin/gone\n")),
        change("/usr/bin/gone", ChangeKind.DELETED, old / "x"),
        change("/etc/alternatives/tool", ChangeKind.CREATED, None, new / "x"),
    ]  # fmt: skip
    packages, folded = group(changes)
    assert [p.line() for p in packages] == [
        "Package: fresh : Installed : version=[0.1] added=[2] changed=[0] removed=[0]",
        "Package: gone : Removed : version=[3] added=[0] changed=[0] removed=[2]",
        "Package: tool : Upgraded : version=[1.0 => 2.0] added=[2] changed=[2] removed=[0]",
    ]
    # Said in full: configuration (/etc, a conffile), a file capability, what no package
    # lists (a maintainer script's alternative), dpkg's status.
    for path in ("/etc/tool.conf", "/var/lib/tool/state", "/usr/bin/fresh",
                 "/etc/alternatives/tool", "/var/lib/dpkg/status"):  # fmt: skip
        assert path not in folded, path
    assert folded["/usr/share/doc/tool/x"] == "tool"
    assert folded["/var/lib/dpkg/info/fresh.md5sums"] == "fresh"


def test_a_step_that_touches_no_dpkg_list_says_no_package(tmp_path: Path) -> None:
    changes = [change("/usr/bin/x", ChangeKind.CREATED, None, tmp_path / "x")]
    assert group(changes) == ([], {})


def test_an_upgrade_counts_what_the_new_version_no_longer_ships_as_removed(
    tmp_path: Path,
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    info = "/var/lib/dpkg/info/"
    changes = [
        change("/var/lib/dpkg/status", ChangeKind.MODIFIED,
               write(old / "status", STATUS.format(name="tool", version="1.0")),
               write(new / "status", STATUS.format(name="tool", version="2.0"))),
        change(f"{info}tool.list", ChangeKind.MODIFIED,
               write(old / "t", "/usr/share/tool/kept\n/usr/share/tool/dropped\n"),
               write(new / "t", "/usr/share/tool/kept\n/usr/share/tool/new\n")),
        change("/usr/share/tool/kept", ChangeKind.MODIFIED, old / "t", new / "t"),
        change("/usr/share/tool/dropped", ChangeKind.DELETED, old / "t"),
        change("/usr/share/tool/new", ChangeKind.CREATED, None, new / "t"),
    ]  # fmt: skip
    packages, folded = group(changes)
    assert [p.line() for p in packages] == [
        "Package: tool : Upgraded : version=[1.0 => 2.0] added=[1] changed=[2] removed=[1]"
    ]
    assert folded["/usr/share/tool/dropped"] == "tool"
