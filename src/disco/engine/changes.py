"""What a step changed: its overlay layer read against the lower view, as data (DESIGN §7).

A step's writes land in an *upper* directory laid out like the target root. The *lower
view* is a list of directories, newest first: the upper dirs of earlier layers (NOOP
stacks them), then the target root last. Only the upper is walked; the lower view is
looked up path by path the way overlayfs does: the newest layer holding a name wins, a
whiteout (char device 0:0) or a non-directory ends the lookup, and below a directory the
older layers merge in until one of them is opaque (xattr trusted.overlay.opaque=y).
Whiteouts and opaque dirs count in the earlier layers only, never in the target root.

What counts as a change: a path is Modified when its type, content (md5), symlink
target, device numbers, SELinux label, other xattrs (trusted.overlay.* aside), owner,
group or mode differ. Times and sizes alone never do, so a `touch`, or the parent dirs
that overlayfs copies up, leave no record. A whiteout, or a lower entry that an opaque
dir or a change of type hides, is Deleted, and so is everything below it. Children of
an opaque dir are still compared with the lower view (it is what the target had).

Owner and group names come from the etc/passwd and etc/group of the view concerned (the
lower view for `before`, the upper over it for `after`); when the target has no such
file, or the target is "/", the host's user database is asked too; else the number.

change_text.py renders a change as the seed does; lower.py looks the lower view up.
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import functools
import grp
import hashlib
import os
import pwd
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from disco.engine.lower import (
    OVERLAY,
    Dirs,
    child,
    is_opaque,
    is_whiteout,
    listing,
    realpath,
    resolve,
    view,
)
from disco.engine.xattrs import xattrs_text
from disco.errors import DiscoError
from disco.files import open_regular, read_regular
from disco.quoting import quote

# Never reported (nor anything below them). Callers add their state dir.
DEFAULT_EXCLUDE = ("/tmp", "/var/tmp", "/proc", "/sys", "/dev", "/run", "/var/disco")

# Paths whose content is never shown (their metadata is). fnmatch globs on the absolute
# target path, where `*` also matches "/". They apply in order and the last match wins; a
# glob starting with "!" un-marks what it matches. The defaults: shadow files and old
# password hashes (opasswd); host and users' private keys but not their public halves;
# TLS, IPsec, Let's Encrypt and GnuPG private keys, *.key (a public one is merely not
# shown) and Kerberos keytabs; PPP, IPsec, WireGuard, NetworkManager and wpa_supplicant
# secrets; MySQL maintenance and users' client credentials.
DEFAULT_SENSITIVE = tuple(
    """
    /etc/shadow /etc/shadow- /etc/gshadow /etc/gshadow- /etc/security/opasswd
    /etc/ssh/ssh_host_*key */.ssh/id_* !*/.ssh/id_*.pub
    /etc/ssl/private/* /etc/pki/tls/private/* /etc/ipsec.d/private/* /etc/letsencrypt/*privkey*
    */.gnupg/private-keys-v1.d/* *.key *.keytab
    /etc/ppp/*-secrets /etc/ipsec.secrets /etc/wireguard/* /etc/NetworkManager/system-connections/*
    /etc/wpa_supplicant/*.conf /etc/mysql/debian.cnf
    */.my.cnf */.pgpass */.netrc */.git-credentials */.aws/credentials */.docker/config.json
    """.split()
)

_KINDS = {stat.S_IFREG: "regular file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symbolic link",
          stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character special file",
          stat.S_IFBLK: "block special file"}  # fmt: skip
_SELINUX = "security.selinux"


class ChangeKind(enum.Enum):
    CREATED = "Created"
    MODIFIED = "Modified"
    DELETED = "Deleted"


@dataclass(frozen=True)
class Meta:
    """One file's metadata, as the seed prints it."""

    kind: str  # stat(1) %F: "regular file", "regular empty file", "directory", ...
    device: str  # stat %D of the path in the *target* (its nearest existing ancestor)
    mode: str  # stat %f: st_mode in hex, "81a4"
    perms: str  # "root:root 644": names (or numbers), permission bits as stat %a
    selinux: str  # security.selinux, or "?"
    md5: str | None  # regular files only
    target: str | None  # symlinks only
    uid: int
    gid: int
    size: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]  # sorted, without trusted.overlay.* and selinux
    rdev: int = 0  # character and block special files only

    @property
    def type(self) -> int:
        return stat.S_IFMT(int(self.mode, 16))

    @property
    def bits(self) -> int:
        return stat.S_IMODE(int(self.mode, 16))


@dataclass(frozen=True)
class Change:
    path: str  # absolute path in the target
    kind: ChangeKind
    before: Meta | None  # None when created
    after: Meta | None  # None when deleted
    old: Path | None  # the old entry, in the lower view; None when created
    new: Path | None  # the new entry, in the upper; None when deleted
    sensitive: bool


def is_sensitive(path: str, globs: Sequence[str]) -> bool:
    """Whether `path` matches `globs` (last match wins, "!glob" un-marks)."""
    regex, marks = _matcher(tuple(globs))
    found = regex.fullmatch(path)
    return found is not None and marks[found.lastindex or 0]


@functools.lru_cache(maxsize=8)
def _matcher(globs: tuple[str, ...]) -> tuple[re.Pattern[str], dict[int, bool]]:
    """One regex for all `globs`, the last first, each in a group of its own: the first
    alternative that matches the whole path is the last glob that does, and the group
    that closes last is its own (a dance asks for each change it reads)."""
    parts, marks, group = [], {}, 1
    for glob in reversed(globs):
        negate = glob.startswith("!")
        body = fnmatch.translate(glob[1:] if negate else glob).removesuffix("\\Z")
        parts.append(f"({body})")
        marks[group] = not negate
        group += 1 + re.compile(body).groups
    return re.compile("|".join(parts) or "(?!)"), marks


def load_sensitive(etc: Path = Path("/etc/disco")) -> tuple[str, ...]:
    """DEFAULT_SENSITIVE, then the globs of etc/sensitive.d/*.list in name order.

    One glob a line; blank lines and lines starting with "#" are skipped. A glob must be
    absolute or start with "*" (after an optional "!"), or it could never match.
    """
    globs = list(DEFAULT_SENSITIVE)
    for f in sorted((etc / "sensitive.d").glob("*.list")):
        try:
            lines = f.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DiscoError(f"cannot read {f}: {e}", "make it a readable UTF-8 text") from e
        for n, line in enumerate(map(str.strip, lines), 1):
            if not line or line.startswith("#"):
                continue
            if not line.lstrip("!").startswith(("/", "*")):
                hint = 'write an absolute path glob ("/etc/x", "*/.x/*")'
                raise DiscoError(f"{f}:{n}: {line!r} can never match a path", hint)
            globs.append(line)
    return tuple(globs)


def read_changes(
    upper: Path,
    lowers: Sequence[Path],
    *,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    sensitive: Sequence[str] = DEFAULT_SENSITIVE,
) -> list[Change]:
    """What the writes in `upper` change in the view `lowers` (newest first, target root
    last), sorted by path (component by component, so a dir comes before its content).

    Paths in `exclude` and below are never reported: pass DEFAULT_EXCLUDE plus disco's
    state dir. Paths in the changes are real paths (symlinks in `upper`, `lowers`
    resolved). Raises DiscoError if the layer or the target cannot be read.
    """
    if not lowers:
        raise ValueError("the lower view needs at least the target root")
    try:
        real = [realpath(p) for p in (upper, *lowers)]
        reader = _Reader(real[0], real[1:], exclude, sensitive)
        reader.read()
    except OSError as e:
        hint = "the layer and the target must stay readable while disco reads them"
        raise DiscoError(f"cannot read the changes in {upper}: {e}", hint) from e
    return sorted(reader.changes, key=lambda c: c.path.split("/"))


# ---- reading ----
#
# On plain string paths: a dance reads a layer at every step, and pathlib's objects
# cost more than the system calls they wrap.


class _Names:
    """uid and gid to names, from the etc/passwd and etc/group of one view; the host's
    user database is asked too if the target is "/" or has no such file."""

    def __init__(self, view: Dirs, host: bool) -> None:
        self.users = _table(resolve(view, "etc/passwd"))
        self.groups = _table(resolve(view, "etc/group"))
        self.host = host

    def user(self, uid: int) -> str:
        return _name(uid, self.users, self.host, lambda: pwd.getpwuid(uid).pw_name)

    def group(self, gid: int) -> str:
        return _name(gid, self.groups, self.host, lambda: grp.getgrgid(gid).gr_name)

    def perms(self, meta: Meta) -> str:
        return f"{self.user(meta.uid)}:{self.group(meta.gid)} {meta.bits:o}"


def _name(id: int, table: dict[int, str] | None, host: bool, ask: Callable[[], str]) -> str:
    if table is not None and id in table:
        return table[id]
    if table is None or host:
        try:
            return ask()
        except KeyError:
            pass
    return str(id)


def _table(path: str | None) -> dict[int, str] | None:
    """name:x:id:... lines as {id: name}, the first name of an id winning; None unless it
    is a regular file (a symlink a step put there is not followed). Read again only when
    the file is another (each step of a dance asks for the same ones)."""
    if path is None:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _TABLES:
        table: dict[int, str] = {}
        for line in read_regular(path).decode(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit():
                table.setdefault(int(fields[2]), fields[0])
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[key] = table
    return _TABLES[key]


_TABLES: dict[tuple[str, int, int, int, int], dict[int, str]] = {}


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with os.fdopen(open_regular(path), "rb") as f:  # never through a step's symlink
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _xattrs(path: str) -> tuple[str, tuple[tuple[str, bytes], ...]]:
    """The SELinux label (or "?") and the other xattrs, trusted.overlay.* left out."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # ENOTSUP
        return "?", ()
    selinux, rest = "?", []
    for name in sorted(names):
        if name.startswith(OVERLAY):
            continue
        value = os.getxattr(path, name, follow_symlinks=False)
        if name == _SELINUX:
            selinux = value.rstrip(b"\0").decode(errors="replace")
        else:
            rest.append((name, value))
    return selinux, tuple(rest)


class _Reader:
    def __init__(
        self, upper: str, lowers: list[str], exclude: Sequence[str], sensitive: Sequence[str]
    ) -> None:
        self.upper, self.root = upper, lowers[-1]
        self.lower: Dirs = view(lowers)
        self.exclude = tuple("/" + e.strip("/") for e in exclude)
        self.prefixes = tuple(e.rstrip("/") + "/" for e in self.exclude)  # one call a path
        self.sensitive = tuple(sensitive)
        self.host = self.root == "/"
        self._before: _Names | None = None
        self._after: _Names | None = None
        self.devices: dict[str, tuple[str, bool]] = {}
        self.changes: list[Change] = []

    # The owners' names, looked up only for what is reported: most of a layer is the
    # directories overlayfs copied up, which are no change.

    @property
    def names_before(self) -> _Names:
        if self._before is None:
            self._before = _Names(self.lower, self.host)
        return self._before

    @property
    def names_after(self) -> _Names:
        if self._after is None:
            etc = f"{self.upper}/etc" if self.upper != "/" else "/etc"
            own = [f"{etc}/{n}" for n in ("passwd", "group")]
            if not os.path.lexists(etc) or not (
                is_opaque(etc) or any(map(os.path.lexists, own))
            ):  # the layer has no user tables of its own: the same as before
                self._after = self.names_before
            else:
                self._after = _Names([(self.upper, True), *self.lower], self.host)
        return self._after

    def read(self) -> None:
        if not self.excluded("/"):
            before = self.meta(self.root, "/")
            after = self.meta(self.upper, "/")
            if differences(before, after):
                self.add("/", ChangeKind.MODIFIED, before, after, self.root, self.upper)
        self.walk(self.upper, "", self.lower, opaque=False)

    def excluded(self, path: str) -> bool:
        return path in self.exclude or path.startswith(self.prefixes)

    def device(self, rel: str) -> str:
        """stat %D of the target path, or of its nearest existing ancestor."""
        return self._device(rel)[0]

    def _device(self, rel: str) -> tuple[str, bool]:
        """(stat %D, is a directory) of the target path `rel`; below a missing entry or
        a symlink (never followed: it may lead out of the target) its parent's device."""
        if rel not in self.devices:
            dev, in_dir = self._device(os.path.dirname(rel)) if rel else ("", True)
            st = None
            if in_dir:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    st = os.lstat(os.path.join(self.root, rel))
            if st is not None:
                dev, in_dir = f"{st.st_dev:x}", stat.S_ISDIR(st.st_mode)
            self.devices[rel] = (dev, in_dir and st is not None)
        return self.devices[rel]

    def meta(self, p: str, path: str, st: os.stat_result | None = None) -> Meta:
        """The entry's metadata (`st`: its lstat, if the caller has it); its `perms`
        (owner names) are filled in by add()."""
        st = os.lstat(p) if st is None else st
        fmt, bits = stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)
        empty = fmt == stat.S_IFREG and st.st_size == 0
        selinux, xattrs = _xattrs(p)
        return Meta(
            kind="regular empty file" if empty else _KINDS.get(fmt, "weird file"),
            device=self.device(path.lstrip("/")),
            mode=f"{st.st_mode:x}",
            perms=f"{st.st_uid}:{st.st_gid} {bits:o}",
            selinux=selinux,
            md5=_md5(p) if fmt == stat.S_IFREG else None,
            target=os.readlink(p) if fmt == stat.S_IFLNK else None,
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            xattrs=xattrs,
            rdev=st.st_rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0,
        )

    def add(
        self, path: str, kind: ChangeKind, before: Meta | None, after: Meta | None,
        old: str | None, new: str | None,
    ) -> None:  # fmt: skip
        if before is not None:
            before = _with_perms(before, self.names_before.perms(before))
        if after is not None:
            after = _with_perms(after, self.names_after.perms(after))
        hidden = is_sensitive(path, self.sensitive)
        old_path = None if old is None else Path(old)
        new_path = None if new is None else Path(new)
        self.changes.append(Change(path, kind, before, after, old_path, new_path, hidden))

    def walk(self, up: str, rel: str, below: Dirs, opaque: bool) -> None:
        """Compare the upper dir `up` (target path `rel`, "" for the root) with `below`,
        the merged lower dirs of the same path."""
        names = sorted(os.listdir(up))
        if opaque:  # it hides what the lower view had and the upper has not
            for name, (hidden, sub) in listing(below).items():
                if name not in names:
                    self.deleted(f"{rel}/{name}", hidden, sub)
        for name in names:
            path, new = f"{rel}/{name}", f"{up}/{name}"
            if self.excluded(path):
                continue
            st = os.lstat(new)
            old, merged = child(below, name)
            if is_whiteout(st):
                if old is not None:
                    self.deleted(path, old, merged)
                continue
            after = self.meta(new, path, st)
            if old is None:
                self.add(path, ChangeKind.CREATED, None, after, None, new)
            else:
                before = self.meta(old, path)
                if before.type == stat.S_IFDIR and after.type != stat.S_IFDIR:
                    self.deleted_below(path, merged)
                if differences(before, after):
                    self.add(path, ChangeKind.MODIFIED, before, after, old, new)
            if stat.S_ISDIR(st.st_mode):
                self.walk(new, path, merged, is_opaque(new))

    def deleted(self, path: str, old: str, merged: Dirs) -> None:
        if self.excluded(path):
            return
        self.add(path, ChangeKind.DELETED, self.meta(old, path), None, old, None)
        self.deleted_below(path, merged)

    def deleted_below(self, path: str, merged: Dirs) -> None:
        for name, (old, sub) in listing(merged).items():
            self.deleted(f"{path}/{name}", old, sub)


def _with_perms(m: Meta, perms: str) -> Meta:
    """dataclasses.replace(m, perms=perms), at a fifth of its cost (each change read)."""
    return Meta(m.kind, m.device, m.mode, perms, m.selinux, m.md5, m.target, m.uid, m.gid,
                m.size, m.mtime_ns, m.xattrs, m.rdev)  # fmt: skip


def specific(meta: Meta) -> list[tuple[str, str | None]]:
    """The fields that only some types have, in report order."""
    rdev = None
    if meta.type in (stat.S_IFCHR, stat.S_IFBLK):
        rdev = f"{os.major(meta.rdev)}:{os.minor(meta.rdev)}"
    target = None if meta.target is None else quote(meta.target)
    return [("md5", meta.md5), ("target", target), ("rdev", rdev)]


def differences(a: Meta, b: Meta) -> list[tuple[str, str]]:
    """What differs between `a` and `b`, in report order, as (name, "old => new")."""
    out: list[tuple[str, str]] = []
    if a.type != b.type:
        out.append(("type", f"{a.kind} => {b.kind}"))
    else:  # type-specific fields compare within a type only
        for (name, x), (_, y) in zip(specific(a), specific(b)):
            if x != y:
                out.append((name, f"{x} => {y}"))
    if a.selinux != b.selinux:
        out.append(("selinux", f"{a.selinux} => {b.selinux}"))
    if a.xattrs != b.xattrs:
        out.append(("xattrs", f"{xattrs_text(a.xattrs)} => {xattrs_text(b.xattrs)}"))
    if (a.uid, a.gid, a.bits) != (b.uid, b.gid, b.bits):
        out.append(("perms", f"{a.perms} => {b.perms}"))
    if a.mode != b.mode:
        out.append(("mode", f"{a.mode} => {b.mode}"))
    return out
