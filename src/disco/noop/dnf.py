"""Packages in NOOP (DESIGN §17): the host side of `dnf install` in a sandbox.

As for apt (packages.py): a NOOP step has no network, so its interceptor asks the asker
to fetch (`disco-fetch`, the command `dnf ...`). Here, outside the sandbox:

- the question is checked word by word: `dnf [-y|-q|--setopt=install_weak_deps=...|...]
  install NAME...`, nothing else (no path, no URL, no other --setopt);
- the repositories used are those of the root's own configuration (ROOT/etc/yum.repos.d,
  ROOT/etc/dnf/dnf.conf) whose every baseurl the step's view configures too; one with a
  mirrorlist or a metalink (URLs disco cannot check beforehand) is left out;
- the host's dnf (its plugins off) resolves and downloads with `--installroot` over a
  copy-on-write view of the root (an overlay per filesystem, upper layers in disco's
  work directory): it reads the root's rpmdb and configuration, and whatever it writes
  (its cache, logs, history, the rpmdb's -shm) lands in the view, never in the root.
  librepo checks each file against the repository's checksums, as a live dnf does;
- what dnf left in the view's /var/cache/dnf (the repositories' metadata and the
  packages) is copied, regular files and directories only, into disco's cache
  (STATE/cache/debs/dnf/KEY, shown read-only to the step at /var/disco/debs/dnf/KEY).
  The next fetch of the same install starts from it (put in the view's cache first), so
  metadata still fresh and packages already there are not downloaded again.
  The step copies it into its own /var/cache/dnf and runs the real `dnf -C install`.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from disco.engine.mounts import Mount, read_mounts, submounts, under
from disco.errors import CommandError
from disco.run import run

DNF = "/usr/bin/dnf"
TIMEOUT = 600.0
CACHE = "var/cache/dnf"  # dnf's cachedir in the root, as root runs it
_KEPT = frozenset("--best --nobest --allowerasing --skip-broken --nogpgcheck".split())
_DROPPED = frozenset("-y --assumeyes -q --quiet -v --verbose --refresh --color=never".split())
_SETOPTS = re.compile(r"^--setopt=(install_weak_deps|best|tsflags)=([A-Za-z0-9,]+)$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+:~^-]*$")
_REPO_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")


class Refused(Exception):
    """Not a fetch disco makes (the caller turns it into packages.Refused)."""


def host_command(argv: Sequence[str]) -> list[str]:
    """The dnf arguments the host runs (before --downloadonly) for the step's `dnf ...`."""
    if not argv or argv[0] != "dnf":
        raise Refused(f"'{argv[0] if argv else ''}' is not dnf")
    options: list[str] = []
    names: list[str] = []
    verb = None
    for arg in argv[1:]:
        if arg in _DROPPED or re.match(r"^-[yq]+$", arg):
            continue
        if arg in _KEPT or _SETOPTS.match(arg):
            options.append(arg)
        elif arg.startswith("-"):
            raise Refused(f"disco does not fetch with the option {arg}")
        elif verb is None:
            if arg != "install":
                raise Refused(f"'{arg}' is not a verb disco fetches for")
            verb = arg
        elif _NAME.match(arg):
            names.append(arg)
        else:
            raise Refused(f"'{arg}' is not a package name")
    if verb is None:
        raise Refused("no install verb")
    if not names:
        raise Refused("no package named")
    return [*options, "install", *names]


def _configs(root: Path) -> list[Path]:
    """The root's files that define repositories, as its dnf reads them."""
    repos = root / "etc" / "yum.repos.d"
    files = sorted(repos.glob("*.repo")) if repos.is_dir() else []
    conf = root / "etc" / "dnf" / "dnf.conf"
    return [conf, *files] if conf.is_file() else files


def repositories(root: Path) -> dict[str, tuple[bool, list[str]]]:
    """Each repository of the root: (enabled with baseurls alone, its baseurls)."""
    found: dict[str, tuple[bool, list[str]]] = {}
    for path in _configs(root):
        parser = configparser.RawConfigParser(strict=False, interpolation=None)
        try:
            parser.read_string(path.read_text(errors="replace"), str(path))
        except configparser.Error as e:
            raise Refused(f"cannot read {path}: {e}") from e
        for section in parser.sections():
            if section == "main":
                continue
            repo = parser[section]
            urls = re.split(r"[\s,]+", repo.get("baseurl", "").strip())
            urls = [u for u in urls if u]
            on = repo.get("enabled", "1").strip().lower() in ("1", "true", "yes", "on")
            direct = not repo.get("mirrorlist", "").strip() and not repo.get("metalink", "").strip()
            found[section] = (on and direct and bool(urls), urls)
    return found


def _dbpath(root: Path) -> str:
    """Where the root's rpmdb is, for the host's rpm, whose macros are not the root's: as
    the root's /etc/rpm/macros* say, else its rpm's own macros (Debian's rpm puts it in
    root's home, ~/.rpmdb), else where one is found."""
    files = [*sorted((root / "etc" / "rpm").glob("macros*")), root / "usr/lib/rpm/macros"]
    for path in files:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                m = re.match(r"^%_dbpath\s+(/[A-Za-z0-9_./-]+)\s*$", line)
                if m:
                    return m.group(1)
                if re.match(r"^%_dbpath\s.*~/\.rpmdb", line):
                    return "/root/.rpmdb"
    if (root / "usr" / "lib" / "sysimage" / "rpm").is_dir():
        return "/usr/lib/sysimage/rpm"
    return "/var/lib/rpm"


@contextlib.contextmanager
def _view(
    root: Path, work: Path, skip: Sequence[str]
) -> Iterator[tuple[Path, list[tuple[str, Path]]]]:
    """A copy-on-write view of `root` (an overlay on it and on each filesystem below it
    but those under `skip`: disco's state, its layers among them) and its upper layers
    (path in the root, upper directory), unmounted afterwards."""
    top = os.path.realpath(root)
    view = work / "root"
    uppers: list[tuple[str, Path]] = []
    mounted: list[str] = []
    try:
        subs = [""] + [s.path for s in submounts(top, read_mounts(), skip)]
        for i, rel in enumerate(subs):
            upper, lower_work = work / f"up{i}", work / f"wk{i}"
            upper.mkdir(parents=True)
            lower_work.mkdir()
            target = view / rel if rel else view
            target.mkdir(parents=True, exist_ok=True)
            lower = os.path.join(top, rel) if rel else top
            if any(c in f"{lower}{upper}{lower_work}" for c in ",:\\"):
                raise Refused("a path disco cannot give overlayfs (',', ':' or '\\' in it)")
            data = f"lowerdir={lower},upperdir={upper},workdir={lower_work}"
            try:
                Mount(str(target), "overlay", "overlay", 0, data).do()
            except OSError as e:
                raise Refused(f"cannot make a view of {lower} for dnf: {e.strerror}") from e
            mounted.append(str(target))
            uppers.append((rel, upper))
        yield view, uppers
    finally:
        for point in reversed(mounted):
            with contextlib.suppress(OSError, CommandError):
                run(["umount", "-l", point], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def _copy_tree(src: Path, dst: Path) -> list[str]:
    """Directories and regular files of `src` into `dst` (whiteouts and anything else
    left out, no symlink followed); the files' paths below `dst`."""
    copied: list[str] = []
    for top, dirs, files in os.walk(src):
        rel = os.path.relpath(top, src)
        (dst / rel).mkdir(parents=True, exist_ok=True, mode=0o755)
        for name in files:
            path = os.path.join(top, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                shutil.copy2(path, dst / rel / name, follow_symlinks=False)
                copied.append(os.path.normpath(os.path.join(rel, name)))
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
    return copied


def fetch(root: Path, cache: Path, inside: set[str], argv: Sequence[str]) -> tuple[str, int]:
    """Resolve and download `argv` (the step's `dnf ...`) for `root` into a tree of
    disco's cache; its name under `cache`/dnf, and the number of files in it."""
    args = host_command(argv)
    if not os.access(DNF, os.X_OK):
        raise Refused(f"the host has no {DNF} to fetch with")
    repos = repositories(root)
    usable = [r for r, (ok, urls) in repos.items()
              if ok and all(u in inside for u in urls) and _REPO_ID.match(r)]  # fmt: skip
    if not usable:
        raise Refused("the node has no package source that disco can reach")
    # Those alone, whatever else dnf would find (another reposdir, a repo it adds).
    only = ["--disablerepo=*", *(f"--enablerepo={r}" for r in usable)]
    key = hashlib.sha256("\0".join([os.path.realpath(root), *args]).encode()).hexdigest()[:24]
    (cache / "dnf").mkdir(parents=True, exist_ok=True, mode=0o755)
    work_top = cache.parent / "dnf-work"
    work_top.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=work_top) as tmp:
        work = Path(tmp)
        home = work / "home"
        home.mkdir()
        # The host's rpm macros (Debian's put the rpmdb in ~): the root's rpmdb instead.
        (home / ".rpmmacros").write_text(f"%_dbpath {_dbpath(root)}\n")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(home)}
        state = os.path.realpath(cache.parent.parent)
        final = cache / "dnf" / key
        with _view(root, work / "view", [state]) as (view, uppers):
            if final.is_dir():  # what the last fetch of the same got: not fetched again
                _copy_tree(final, view / CACHE)
            argv_host = [DNF, f"--installroot={view}", "--noplugins", "-y", "-q",
                         "--downloadonly", *only, *args]  # fmt: skip
            try:
                run(argv_host, env=env, timeout=TIMEOUT)
            except CommandError as e:
                last = [line for line in e.stderr.strip().splitlines() if line.strip()]
                raise Refused(f"dnf cannot fetch it: {last[-1] if last else e}") from e
            rel, upper = max(((r, u) for r, u in uppers if not r or under(CACHE, r)),
                             key=lambda ru: len(ru[0]))  # fmt: skip
            made = upper / os.path.relpath(CACHE, rel or ".")
            tree = work / "tree"
            files = _copy_tree(made, tree) if made.is_dir() else []
        old = cache / "dnf" / f".{key}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.rename(final, old)
        os.rename(tree, final)
        shutil.rmtree(old, ignore_errors=True)
    return key, len(files)
