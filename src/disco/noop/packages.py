"""Packages in NOOP (DESIGN §17): the host side of `apt-get install` in a sandbox.

A NOOP step has no network. When it runs `apt-get install X` (or `apt install`,
`apt-get upgrade` ...), its interceptor asks the asker to fetch what the install needs
(`disco-fetch`), then copies the fetched files into apt's archives in its own overlay
and runs the real apt-get there, which finds every .deb it needs and so never reaches
for the network. Here, outside the sandbox:

- the question is checked word by word: the command, the verb, a few known options and
  package names, nothing else (no -o: a step's options never steer the host's apt);
- what to fetch is asked of apt itself, `apt-get --print-uris` over the target root's
  sources, lists and dpkg status (the root as disco found it, never a step's layer);
- each URI must lie under a source that both the root's apt configuration and the
  step's own view of it (the question carries `apt-get indextargets` from inside) name;
- each file comes with the repository's SHA256 (from the root's package lists, which
  apt verified against the signed Release), and `apt-helper download-file URI FILE
  SHA256:...` fetches it, verified, into disco's cache; a file already there is checked
  against the same hash before it is used (hashed again only if its stat changed since);
- apt's answer to the same request on the same inputs is reused (fetch_memo.py).

The cache (STATE/cache/debs) is disco's own: a step sees it read-only at
/var/disco/debs and never writes there. Files are opened by name in a directory disco
opened (O_NOFOLLOW), never through a path a step could plant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from disco.errors import CommandError
from disco.files import open_dir
from disco.noop import dnf
from disco.noop.fetch_memo import Verified, note, recall, signature
from disco.run import run

QUESTION = "disco-fetch"
TIMEOUT = 600.0  # seconds the fetch of one install may take
APT_GET = "/usr/bin/apt-get"
APT_CACHE = "/usr/bin/apt-cache"
APT_HELPER = "/usr/lib/apt/apt-helper"
_VERBS = {
    "apt-get": {"install": "install", "reinstall": "install", "upgrade": "upgrade",
                "dist-upgrade": "dist-upgrade", "full-upgrade": "dist-upgrade"},
    "apt": {"install": "install", "reinstall": "install", "upgrade": "upgrade",
            "full-upgrade": "dist-upgrade", "dist-upgrade": "dist-upgrade"},
}  # fmt: skip
# Options that only say what to install (kept) or how apt talks (dropped on the host).
_KEPT = frozenset(
    "--no-install-recommends --install-recommends --no-install-suggests --install-suggests"
    " --reinstall --only-upgrade --allow-downgrades --with-new-pkgs --without-new-pkgs"
    " --ignore-missing -m --fix-missing --fix-broken -f".split()
)
_DROPPED = frozenset(
    "-y --yes --assume-yes -q -qq --quiet -V --verbose-versions --no-remove"
    " --allow-unauthenticated --allow-change-held-packages --allow-remove-essential"
    " --auto-remove --autoremove --purge --show-progress --no-show-upgraded --show-upgraded"
    " -u --trivial-only --no-download --force-yes".split()
)
_TARGET = frozenset("-t --target-release --default-release".split())
# -o settings that say how dpkg and apt behave, never what apt fetches: the real apt-get
# in the sandbox gets them (a conffile's fate: --force-confold ...), the host's does not.
_SETTINGS = {
    "dpkg::options::": re.compile(r"^--force-(confold|confnew|confdef|confmiss|confask)$"),
    "dpkg::use-pty": re.compile(r"^(0|1|true|false|yes|no)$", re.I),
    "dpkg::progress-fancy": re.compile(r"^(0|1|true|false|yes|no)$", re.I),
    "dpkg::lock::timeout": re.compile(r"^[0-9]+$"),
    "apt::get::assume-yes": re.compile(r"^(0|1|true|false|yes|no)$", re.I),
    "apt::color": re.compile(r"^(0|1|true|false|yes|no)$", re.I),
    "quiet": re.compile(r"^[0-9]$"),
}
_OPTION = frozenset("-o --option".split())
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.:~=/-]*$")
_URI = re.compile(r"^'([^' ]+)' (\S+) (\d+) (\S+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.~_%-]*\.deb$")


class Refused(Exception):
    """Not a fetch disco makes: said in the warning, and the step's command is not run."""


@dataclass(frozen=True)
class Fetcher:
    """What the asker needs to fetch for a dance: the target root, disco's cache, and
    where it notes each fetch for the dance's records."""

    root: Path
    cache: Path
    log: Path


def host_command(argv: Sequence[str]) -> list[str]:
    """The apt-get arguments (after the verb's own) that the host runs for the step's
    `apt-get ...`/`apt ...`, or Refused."""
    if not argv or argv[0] not in _VERBS:
        raise Refused(f"'{argv[0] if argv else ''}' is not a command disco fetches for")
    command, args = argv[0], list(argv[1:])
    options: list[str] = []
    verb: str | None = None
    names: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--" and verb is not None:  # the rest are package names
            bad = [a for a in args[i:] if not _PACKAGE.match(a) or a.endswith(".deb")]
            if bad:
                raise Refused(f"'{bad[0]}' is not a package name")
            names += args[i:]
            break
        if verb is None and arg in _VERBS[command]:
            verb = _VERBS[command][arg]
            if arg == "reinstall":
                options.append("--reinstall")
            elif command == "apt" and arg == "upgrade":
                options.append("--with-new-pkgs")  # what apt's upgrade does
        elif arg in _KEPT:
            options.append(arg)
        elif arg in _DROPPED or re.match(r"^-[yqV]+$", arg):
            continue
        elif arg in _OPTION or arg.startswith(("-o", "--option=")):
            if arg in _OPTION:
                setting, i = (args[i] if i < len(args) else ""), i + 1
            else:
                setting = arg[len("--option=") :] if arg.startswith("--") else arg[2:]
            _setting(setting)
        elif arg in _TARGET or arg.startswith(("--target-release=", "--default-release=")):
            value = arg.partition("=")[2] if "=" in arg else (args[i] if i < len(args) else "")
            i += 0 if "=" in arg else 1
            if not re.match(r"^[A-Za-z0-9.~+-]+$", value):
                raise Refused(f"cannot use the release {value!r}")
            options += ["-t", value]
        elif arg.startswith("-"):
            raise Refused(f"disco does not fetch with the option {arg}")
        elif verb is None:
            raise Refused(f"'{arg}' is not a verb disco fetches for")
        elif _PACKAGE.match(arg) and not arg.endswith(".deb"):
            names.append(arg)
        else:
            raise Refused(f"'{arg}' is not a package name")
    if verb is None:
        raise Refused("no install or upgrade verb")
    if verb == "install" and not names:
        raise Refused("no package named")
    return [*options, verb, *names]


def _setting(setting: str) -> None:
    """Refused unless `-o KEY=VALUE` only says how apt and dpkg behave (_SETTINGS)."""
    key, _, value = setting.partition("=")
    check = _SETTINGS.get(key.lower())
    if check is None or not check.match(value):
        raise Refused(f"disco does not fetch with the setting -o {setting}")


def _apt(root: Path, fetcher: Fetcher) -> list[str]:
    """apt's options that read the target root's sources, lists and dpkg status, and
    write nothing there: its binary caches go to disco's own (STATE/cache/apt), no lock
    is taken (a NOOP reads the node, never locks it)."""
    r = os.path.realpath(root).rstrip("/")
    caches = fetcher.cache.parent / "apt"
    caches.mkdir(parents=True, exist_ok=True, mode=0o755)
    # Its binary caches kept there even where the root's apt.conf turns them off (as
    # Debian's container images do): apt checks them against the lists before use.
    return [f"-oDir={r}/", f"-oDir::State::status={r}/var/lib/dpkg/status",
            f"-oDir::Cache={caches}/", f"-oDir::Cache::archives={r}/var/cache/apt/archives/",
            f"-oDir::Cache::pkgcache={caches}/pkgcache.bin",
            f"-oDir::Cache::srcpkgcache={caches}/srcpkgcache.bin",
            "-oAPT::Sandbox::User=root", "-oDebug::NoLocking=1"]  # fmt: skip


def _env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def sources(fetcher: Fetcher) -> set[str]:
    """The base URIs of the root's configured package sources, as apt reads them."""
    out = run([APT_GET, *_apt(fetcher.root, fetcher), "indextargets", "--format", "$(REPO_URI)"],
              env=_env(), check=False, timeout=60).stdout  # fmt: skip
    return {line.strip() for line in out.decode(errors="replace").splitlines() if line.strip()}


@dataclass(frozen=True)
class Wanted:
    uri: str
    name: str  # the file name in the cache and in apt's archives
    size: int
    sha256: str


def wanted(fetcher: Fetcher, args: list[str]) -> list[Wanted]:
    """The files `apt-get ARGS` would download for the root, with the repository's
    SHA256 of each (from the root's lists: apt-cache show)."""
    apt = _apt(fetcher.root, fetcher)
    result = run([APT_GET, *apt, "--print-uris", "-qq", "-y", *args],
                 env=_env(), check=False, timeout=120)  # fmt: skip
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        raise Refused(f"apt-get cannot plan it: {err[-1] if err else result.returncode}")
    found: list[tuple[str, str, int]] = []
    for line in result.stdout.decode(errors="replace").splitlines():
        m = _URI.match(line.strip())
        if m is None:
            continue
        if not _NAME.match(m.group(2)):
            raise Refused(f"apt named a file disco will not write: {m.group(2)!r}")
        found.append((m.group(1), m.group(2), int(m.group(3))))
    if not found:
        return []
    names = [_version_of(name) for _, name, _ in found]
    shown = run([APT_CACHE, *apt, "show", "--no-all-versions", *names],
                env=_env(), check=False, timeout=120).stdout  # fmt: skip
    hashes: dict[str, str] = {}
    for stanza in shown.decode(errors="replace").split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if "Filename" in fields and "SHA256" in fields:
            hashes[fields["Filename"].rsplit("/", 1)[-1]] = fields["SHA256"].strip()
    out = []
    for uri, name, size in found:
        digest = hashes.get(unquote(uri.rsplit("/", 1)[-1]))
        if digest is None or not re.match(r"^[0-9a-f]{64}$", digest):
            raise Refused(f"no SHA256 of {name} in the root's package lists")
        out.append(Wanted(uri, name, size, digest))
    return out


def _version_of(name: str) -> str:
    """PACKAGE=VERSION:ARCH for apt-cache, from apt's file name NAME_VERSION_ARCH.deb."""
    package, version, arch = name[: -len(".deb")].split("_", 2)
    version = version.replace("%3a", ":")
    return f"{package}:{arch}={version}" if arch != "all" else f"{package}={version}"


def _sha256(d: int, name: str) -> str | None:
    """The SHA256 of the regular file `name` in the directory `d`, or None."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=d)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached(d: int, name: str, sha256: str, verified: Verified) -> bool:
    """Whether the cache holds `name` with `sha256`: hashed unless verified unchanged."""
    try:
        st = os.stat(name, dir_fd=d, follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if verified.knows(name, st, sha256):
        return True
    if _sha256(d, name) != sha256:
        return False
    verified.add(name, st, sha256)
    return True


def download(fetcher: Fetcher, files: list[Wanted]) -> tuple[int, int]:
    """Each file into the cache, verified: (files fetched, bytes fetched)."""
    fetcher.cache.mkdir(parents=True, exist_ok=True, mode=0o755)
    d = open_dir(fetcher.cache)
    verified = Verified(fetcher.cache.parent / "apt" / "verified.json")
    fetched = size = 0
    try:
        for want in files:
            if _cached(d, want.name, want.sha256, verified):
                continue
            partial = f".{want.name}.partial"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial, dir_fd=d)
            # apt-helper takes a path (its methods are processes of their own): the
            # cache is disco's, never shown writable to a step. What it wrote is read
            # back from our descriptor of the directory.
            into = str(fetcher.cache / partial)
            try:
                argv = [APT_HELPER, "-oAPT::Sandbox::User=root", "download-file", want.uri]
                argv += [into, f"SHA256:{want.sha256}"]
                run(argv, env=_env(), timeout=TIMEOUT)
            except CommandError as e:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partial, dir_fd=d)
                last = e.stderr.strip().splitlines()
                raise Refused(f"cannot fetch {want.uri}: {last[-1] if last else e}") from e
            if _sha256(d, partial) != want.sha256:
                os.unlink(partial, dir_fd=d)
                raise Refused(f"{want.uri} does not match the repository's SHA256")
            os.chmod(partial, 0o644, dir_fd=d, follow_symlinks=False)
            os.rename(partial, want.name, src_dir_fd=d, dst_dir_fd=d)
            verified.add(want.name, os.stat(want.name, dir_fd=d, follow_symlinks=False),
                         want.sha256)  # fmt: skip
            fetched += 1
            size += want.size
    finally:
        os.close(d)
        verified.save()
    return fetched, size


def _recalled(known: dict[str, object] | None) -> tuple[set[str], list[Wanted]] | None:
    """A noted answer, checked as apt's own would be; None if it is not one."""
    if known is None:
        return None
    configured, listed = known.get("sources"), known.get("wanted")
    if not isinstance(configured, list) or not isinstance(listed, list):
        return None
    files = []
    for w in listed:
        if not (isinstance(w, list) and len(w) == 4 and isinstance(w[0], str)
                and isinstance(w[1], str) and _NAME.match(w[1]) and isinstance(w[2], int)
                and isinstance(w[3], str) and re.match(r"^[0-9a-f]{64}$", w[3])):  # fmt: skip
            return None
        files.append(Wanted(w[0], w[1], w[2], w[3]))
    return {str(u) for u in configured}, files


def planned(fetcher: Fetcher, args: list[str], inside: set[str]) -> list[Wanted]:
    """The files `apt-get ARGS` needs, each under a source both the root and the step
    configure: apt's answer, or the one it gave to the same request on the same inputs
    (fetch_memo.py)."""
    memo = fetcher.cache.parent / "apt" / "answers"
    key = signature(fetcher.root, args)
    known = _recalled(recall(memo, key))
    configured, files = known if known is not None else (sources(fetcher), [])
    allowed = inside & configured
    if not allowed:
        raise Refused("the node has no package source that disco can reach")
    if known is None:
        files = wanted(fetcher, args)
        answer = {"sources": sorted(configured),
                  "wanted": [[w.uri, w.name, w.size, w.sha256] for w in files]}  # fmt: skip
        note(memo, key, answer)
    for want in files:
        if not any(want.uri.startswith(base) for base in allowed):
            raise Refused(f"{want.uri} is not under a source the node configures")
    return files


def fetch(fetcher: Fetcher, argv: Sequence[str]) -> tuple[int, bytes, bytes]:
    """The asker's answer to ["disco-fetch", N, N source URIs seen inside, command,
    args...]: status 0 and the cached files' names, one a line; else status 1 and why."""
    started = time.monotonic()
    note: dict[str, object] = {"command": " ".join(argv[1:])}
    try:
        count = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else -1
        if count < 0 or len(argv) < 3 + count:
            raise Refused("not a whole fetch question")
        inside = {u for u in argv[2 : 2 + count]}
        command = list(argv[2 + count :])
        if command[:1] == ["dnf"]:  # its tree of dnf's cache, by name (dnf.py)
            try:
                tree, made = dnf.fetch(fetcher.root, fetcher.cache, inside, command)
            except dnf.Refused as e:
                raise Refused(str(e)) from e
            note.update(files=made, exit=0)
            answer = (0, f"{tree}\n".encode(), b"")
        else:
            files = planned(fetcher, host_command(command), inside)
            fetched, size = download(fetcher, files)
            note.update(files=len(files), fetched=fetched, bytes=size, exit=0)
            answer = (0, "".join(f"{w.name}\n" for w in files).encode(), b"")
    except Refused as e:
        note.update(exit=1, why=str(e))
        answer = (1, b"", f"disco: {e}\n".encode())
    note["wall"] = time.monotonic() - started
    with open(fetcher.log, "a") as log:
        log.write(json.dumps(note) + "\n")
    return answer


def read_log(path: Path) -> list[dict[str, object]]:
    """The fetches noted since the last read (the log is emptied)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    path.write_text("")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
