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

`header()` and `content_diff()` render a change as the seed does. Neither ends with a
newline: print each with print(). Output of diff is decoded as UTF-8 with U+FFFD for
bytes that are not.
"""

from __future__ import annotations

import enum
import fnmatch
import grp
import hashlib
import os
import pwd
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from disco.errors import CommandError, DiscoError
from disco.quoting import quote
from disco.run import run

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
_WORDS = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink"}
_OVERLAY, _SELINUX = "trusted.overlay.", "security.selinux"
_PROBE = 8192  # a NUL byte in this many first bytes makes a file binary
# One directory of the lower view and the older layers merged below it, newest first;
# the bool says it is an overlay layer (whiteouts and opaque dirs count), not the root.
_Dirs = list[tuple[str, bool]]


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
    hit = False
    for glob in globs:
        negate = glob.startswith("!")
        if fnmatch.fnmatchcase(path, glob[1:] if negate else glob):
            hit = not negate
    return hit


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
        real = [_realpath(p) for p in (upper, *lowers)]
        reader = _Reader(real[0], real[1:], exclude, sensitive)
        reader.read()
    except OSError as e:
        hint = "the layer and the target must stay readable while disco reads them"
        raise DiscoError(f"cannot read the changes in {upper}: {e}", hint) from e
    return sorted(reader.changes, key=lambda c: c.path.split("/"))


def header(change: Change) -> str:
    """The report line after "info: ", e.g. "File: file: /etc/passwd : Deleted"."""
    meta = change.after or change.before
    assert meta is not None
    # quote(): a newline, tab or " : " in a name would split or corrupt the record.
    path = quote(change.path)
    head = f"File: {_WORDS.get(meta.type, 'special')}: {path} : {change.kind.value}"
    if change.kind is ChangeKind.DELETED:
        return head
    if change.kind is ChangeKind.CREATED:
        fields = [("type", meta.kind), ("device", meta.device), ("mode", meta.mode)]
        fields.append(("selinux", meta.selinux))
        fields += [(name, value) for name, value in _specific(meta) if value is not None]
        fields.append(("perms", meta.perms))
    else:
        assert change.before is not None and change.after is not None
        fields = _differences(change.before, change.after)
    return head + " : " + " ".join(f"{name}=[{value}]" for name, value in fields)


def content_diff(change: Change, style: str = "normal") -> str:
    """The change of a regular file's content in GNU diff's "normal" or "unified" format.

    "" when no content diff applies (dirs, symlinks, specials, same content, an empty
    file created), "Binary files differ" if either side has a NUL byte in its first 8 KiB,
    "(content hidden: sensitive)" for a sensitive path. A side that is not a regular file
    (the path created, deleted, or of another type) reads as empty (/dev/null). Unified
    diffs are labelled a/PATH and b/PATH. Diff's final newline is dropped. The files are
    read now: render a change before it is committed.
    """
    if style not in ("normal", "unified"):
        raise ValueError(f"unknown diff style {style!r}")
    old = change.old if change.before and change.before.type == stat.S_IFREG else None
    new = change.new if change.after and change.after.type == stat.S_IFREG else None
    if (old is None and new is None) or (
        change.before and change.after and change.before.md5 == change.after.md5
    ):
        return ""
    if change.sensitive:
        return "(content hidden: sensitive)"
    if any(p is not None and b"\0" in _head(p) for p in (old, new)):
        return "Binary files differ"
    if old is None or new is None:  # all lines added or all removed: no need for diff
        one = new if old is None else old
        assert one is not None
        return _one_sided(one.read_bytes(), old is None, change.path, style)
    argv = ["diff", "--text"]
    if style == "unified":
        argv += ["-u", "--label", f"a{change.path}", "--label", f"b{change.path}"]
    argv += [str(old), str(new)]
    result = run(argv, check=False)
    if result.returncode > 1:  # 1 only says that the files differ
        raise CommandError(argv, result.returncode, result.stderr.decode(errors="replace"))
    text = result.stdout.decode(errors="replace")
    return text[:-1] if text.endswith("\n") else text


def _one_sided(data: bytes, added: bool, path: str, style: str) -> str:
    """What GNU diff prints for a file against /dev/null (added) or the reverse."""
    if not data:
        return ""
    lines = data.split(b"\n")
    last_newline = lines[-1] == b""
    if last_newline:
        lines.pop()
    n = len(lines)
    span = "1" if n == 1 else f"1,{n}"
    if style == "unified":
        sign = "+" if added else "-"
        count = "" if n == 1 else f",{n}"
        hunk = f"@@ -0,0 +1{count} @@" if added else f"@@ -1{count} +0,0 @@"
        head = [f"--- a{path}".encode(), f"+++ b{path}".encode(), hunk.encode()]
    else:
        sign = "> " if added else "< "
        head = [(f"0a{span}" if added else f"{span}d0").encode()]
    body = [sign.encode() + line for line in lines]
    if not last_newline:
        body.append(b"\\ No newline at end of file")
    return b"\n".join(head + body).decode(errors="replace")


# ---- rendering ----


def _specific(meta: Meta) -> list[tuple[str, str | None]]:
    """The fields that only some types have, in report order."""
    rdev = None
    if meta.type in (stat.S_IFCHR, stat.S_IFBLK):
        rdev = f"{os.major(meta.rdev)}:{os.minor(meta.rdev)}"
    target = None if meta.target is None else quote(meta.target)
    return [("md5", meta.md5), ("target", target), ("rdev", rdev)]


def _differences(a: Meta, b: Meta) -> list[tuple[str, str]]:
    """What differs between `a` and `b`, in report order, as (name, "old => new")."""
    out: list[tuple[str, str]] = []
    if a.type != b.type:
        out.append(("type", f"{a.kind} => {b.kind}"))
    else:  # type-specific fields compare within a type only
        for (name, x), (_, y) in zip(_specific(a), _specific(b)):
            if x != y:
                out.append((name, f"{x} => {y}"))
    if a.selinux != b.selinux:
        out.append(("selinux", f"{a.selinux} => {b.selinux}"))
    if a.xattrs != b.xattrs:
        out.append(("xattrs", "changed"))
    if (a.uid, a.gid, a.bits) != (b.uid, b.gid, b.bits):
        out.append(("perms", f"{a.perms} => {b.perms}"))
    if a.mode != b.mode:
        out.append(("mode", f"{a.mode} => {b.mode}"))
    return out


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(_PROBE)


# ---- reading ----
#
# On plain string paths: a dance reads a layer at every step, and pathlib's objects
# cost more than the system calls they wrap.


def _realpath(path: Path | str) -> str:
    """os.path.realpath, directories remembered: a dance asks at every step for a new
    layer in the same few dirs, and realpath would lstat each of their components."""
    path = os.path.normpath(os.fspath(path))
    head, name = os.path.split(path)
    if not name or name == ".." or not os.path.isabs(path):
        return os.path.realpath(path)
    if head not in _REAL_DIRS:
        if len(_REAL_DIRS) > 256:
            _REAL_DIRS.clear()
        _REAL_DIRS[head] = _realpath(head)
    full = os.path.join(_REAL_DIRS[head], name)
    return os.path.realpath(full) if os.path.islink(full) else full


_REAL_DIRS: dict[str, str] = {}


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, _OVERLAY + "opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _child(dirs: _Dirs, name: str) -> tuple[str | None, _Dirs]:
    """Look `name` up below `dirs` as overlayfs does: the entry seen there (or None) and,
    if it is a directory, the merged dirs of it."""
    found: str | None = None
    merged: _Dirs = []
    for d, layer in dirs:
        p = f"{d}/{name}" if d != "/" else f"/{name}"
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if layer and _is_whiteout(st):
            break
        if found is None:
            found = p
        if not stat.S_ISDIR(st.st_mode):  # a non-dir is the entry, or ends the merge
            break
        merged.append((p, layer))
        if layer and _is_opaque(p):
            break
    return found, merged


def _listing(dirs: _Dirs) -> dict[str, tuple[str, _Dirs]]:
    """The entries of a merged directory, by name."""
    names = dict.fromkeys(n for d, _ in dirs for n in sorted(os.listdir(d)))
    out = {}
    for name in names:
        found, merged = _child(dirs, name)
        if found is not None:
            out[name] = (found, merged)
    return out


def _resolve(dirs: _Dirs, rel: str) -> str | None:
    """The entry at `rel` in the view `dirs`, or None."""
    found: str | None = None
    for name in rel.split("/"):  # a non-dir leaves no dirs to look in: None below it
        found, dirs = _child(dirs, name)
    return found


def _view(lowers: Sequence[Path | str]) -> _Dirs:
    """Upper dirs of layers, newest first, then the target root: as _Dirs."""
    last = len(lowers) - 1
    return [(os.fspath(p).rstrip("/") or "/", i < last) for i, p in enumerate(lowers)]


class LowerView:
    """A lower view whose directories, once looked up, are remembered: for many lookups
    in the same few directories while the view does not change (a delivery's)."""

    def __init__(self, lowers: Sequence[Path | str]) -> None:
        self.dirs: dict[str, _Dirs] = {"": _view(lowers)}

    def _dirs(self, rel: str) -> _Dirs:
        if rel not in self.dirs:
            head, name = os.path.split(rel)
            self.dirs[rel] = _child(self._dirs(head), name)[1]
        return self.dirs[rel]

    def lookup(self, rel: str) -> str | None:
        """The entry at `rel` (not ""), or None."""
        head, name = os.path.split(rel)
        return _child(self._dirs(head), name)[0]

    @property
    def root(self) -> str:
        return self.dirs[""][-1][0]


def lookup(lowers: Sequence[Path], rel: str) -> Path | None:
    """The entry at `rel` ("" for the top) in the view `lowers` (upper dirs of layers,
    newest first, then the target root), as overlayfs shows it; None if there is none."""
    dirs = _view(lowers)
    if not rel:
        return Path(dirs[-1][0])
    found = _resolve(dirs, rel)
    return None if found is None else Path(found)


class _Names:
    """uid and gid to names, from the etc/passwd and etc/group of one view; the host's
    user database is asked too if the target is "/" or has no such file."""

    def __init__(self, view: _Dirs, host: bool) -> None:
        self.users = _table(_resolve(view, "etc/passwd"))
        self.groups = _table(_resolve(view, "etc/group"))
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
    """name:x:id:... lines as {id: name}, the first name of an id winning. Read again
    only when the file is another (each step of a dance asks for the same ones)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _TABLES:
        table: dict[int, str] = {}
        with open(path, errors="replace") as f:
            for line in f.read().splitlines():
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
    with open(path, "rb") as f:
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
        if name.startswith(_OVERLAY):
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
        self.lower: _Dirs = _view(lowers)
        self.exclude = tuple("/" + e.strip("/") for e in exclude)
        self.sensitive = tuple(sensitive)
        self.host = self.root == "/"
        self._before: _Names | None = None
        self._after: _Names | None = None
        self.devices: dict[str, str] = {}
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
                _is_opaque(etc) or any(map(os.path.lexists, own))
            ):  # the layer has no user tables of its own: the same as before
                self._after = self.names_before
            else:
                self._after = _Names([(self.upper, True), *self.lower], self.host)
        return self._after

    def read(self) -> None:
        if not self.excluded("/"):
            before = self.meta(self.root, "/")
            after = self.meta(self.upper, "/")
            if _differences(before, after):
                self.add("/", ChangeKind.MODIFIED, before, after, self.root, self.upper)
        self.walk(self.upper, "", self.lower, opaque=False)

    def excluded(self, path: str) -> bool:
        return any(path == e or path.startswith(e.rstrip("/") + "/") for e in self.exclude)

    def device(self, rel: str) -> str:
        """stat %D of the target path, or of its nearest existing ancestor."""
        if rel not in self.devices:
            try:
                self.devices[rel] = f"{os.lstat(os.path.join(self.root, rel)).st_dev:x}"
            except (FileNotFoundError, NotADirectoryError):
                self.devices[rel] = self.device(os.path.dirname(rel))
        return self.devices[rel]

    def meta(self, p: str, path: str) -> Meta:
        """The entry's metadata; its `perms` (owner names) are filled in by add()."""
        st = os.lstat(p)
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
            before = replace(before, perms=self.names_before.perms(before))
        if after is not None:
            after = replace(after, perms=self.names_after.perms(after))
        hidden = is_sensitive(path, self.sensitive)
        old_path = None if old is None else Path(old)
        new_path = None if new is None else Path(new)
        self.changes.append(Change(path, kind, before, after, old_path, new_path, hidden))

    def walk(self, up: str, rel: str, below: _Dirs, opaque: bool) -> None:
        """Compare the upper dir `up` (target path `rel`, "" for the root) with `below`,
        the merged lower dirs of the same path."""
        names = sorted(os.listdir(up))
        if opaque:  # it hides what the lower view had and the upper has not
            for name, (hidden, sub) in _listing(below).items():
                if name not in names:
                    self.deleted(f"{rel}/{name}", hidden, sub)
        for name in names:
            path, new = f"{rel}/{name}", f"{up}/{name}"
            if self.excluded(path):
                continue
            st = os.lstat(new)
            old, merged = _child(below, name)
            if _is_whiteout(st):
                if old is not None:
                    self.deleted(path, old, merged)
                continue
            after = self.meta(new, path)
            if old is None:
                self.add(path, ChangeKind.CREATED, None, after, None, new)
            else:
                before = self.meta(old, path)
                if before.type == stat.S_IFDIR and after.type != stat.S_IFDIR:
                    self.deleted_below(path, merged)
                if _differences(before, after):
                    self.add(path, ChangeKind.MODIFIED, before, after, old, new)
            if stat.S_ISDIR(st.st_mode):
                self.walk(new, path, merged, _is_opaque(new))

    def deleted(self, path: str, old: str, merged: _Dirs) -> None:
        if self.excluded(path):
            return
        self.add(path, ChangeKind.DELETED, self.meta(old, path), None, old, None)
        self.deleted_below(path, merged)

    def deleted_below(self, path: str, merged: _Dirs) -> None:
        for name, (old, sub) in _listing(merged).items():
            self.deleted(f"{path}/{name}", old, sub)
