"""A step's changes grouped by package (DESIGN §17): one line per package that the step
installed, upgraded or removed, instead of a record per file.

The packages are those whose dpkg file list (/var/lib/dpkg/info/P.list) the step made,
changed or removed; their versions come from /var/lib/dpkg/status before and after.
A change whose path a package lists (before or after the step: an upgrade removes what
the old version shipped and the new one does not), or that is the package's own dpkg bookkeeping
(/var/lib/dpkg/info/P.*), is counted in the package's line. Configuration files (the
package's conffiles, and everything under /etc) keep their full records and diffs, and
so do files with xattrs (a capability that a postinst set with setcap) and every change
no package claims (what the maintainer scripts did: users,
alternatives, links). The full record of every file stays in the report (--json).
Files are read as disco reads a layer: never through a step's symlink.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from disco.engine.changes import Change, ChangeKind
from disco.files import read_regular

INFO = "/var/lib/dpkg/info/"
STATUS = "/var/lib/dpkg/status"
_INFO_FILE = re.compile(r"^/var/lib/dpkg/info/([a-z0-9][a-z0-9+.-]*)(?::[a-z0-9-]+)?\.[a-z0-9_]+$")
_MAX = 64 << 20  # bytes of a list or status file read


@dataclass
class Package:
    name: str
    before: str | None  # its version before the step; None: not installed
    after: str | None  # after it
    counts: dict[ChangeKind, int] = field(default_factory=lambda: {kind: 0 for kind in ChangeKind})

    def line(self) -> str:
        """The report line after "info: "."""
        if self.before is None:
            what, version = "Installed", self.after or "?"
        elif self.after is None:
            what, version = "Removed", self.before
        elif self.before != self.after:
            what, version = "Upgraded", f"{self.before} => {self.after}"
        else:
            what, version = "Reinstalled", self.after
        c = self.counts
        return (
            f"Package: {self.name} : {what} : version=[{version}] added=[{c[ChangeKind.CREATED]}]"
            f" changed=[{c[ChangeKind.MODIFIED]}] removed=[{c[ChangeKind.DELETED]}]"
        )


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return read_regular(path, _MAX).decode(errors="replace")
    except OSError:
        return ""


def _versions(text: str) -> dict[str, str]:
    """Package name -> version of each installed package of a dpkg status file."""
    versions = {}
    for stanza in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[:1] != " "
        )
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            versions[fields["Package"]] = fields.get("Version", "?")
    return versions


def group(changes: list[Change]) -> tuple[list[Package], dict[str, str]]:
    """The packages the step installed, upgraded or removed, in name order, and each
    folded change's path -> its package (conffiles and /etc are never folded)."""
    by_path = {c.path: c for c in changes}
    lists: dict[str, Change] = {}
    for c in changes:
        m = _INFO_FILE.match(c.path)
        if m is not None and c.path.endswith(".list"):
            lists[m.group(1)] = c
    names = sorted(lists)
    if not names:
        return [], {}
    status = by_path.get(STATUS)
    before = _versions(_read(status.old)) if status is not None else {}
    after = _versions(_read(status.new)) if status is not None else {}
    owner: dict[str, str] = {}
    keep: set[str] = set()
    for name, listing in lists.items():
        # The old list too: a file that an upgrade no longer ships is the package's.
        for path in (_read(listing.new) + "\n" + _read(listing.old)).splitlines():
            owner.setdefault(path, name)
        entry = by_path.get(f"{INFO}{name}.conffiles")
        if entry is not None:
            keep.update(line.split()[0] for line in _read(entry.new or entry.old).splitlines()
                        if line.strip())  # fmt: skip
    packages = {n: Package(n, before.get(n), after.get(n)) for n in names}
    folded: dict[str, str] = {}
    for change in changes:
        info = _INFO_FILE.match(change.path)
        owned = owner.get(change.path)
        if info is not None and info.group(1) in packages:
            owned = info.group(1)
        if owned is None or change.path in keep or change.path.startswith("/etc/"):
            continue
        if change.after is not None and change.after.xattrs:
            continue  # a file capability or an ACL that a maintainer script set: said
        folded[change.path] = owned
        packages[owned].counts[change.kind] += 1
    return [packages[n] for n in names], folded
