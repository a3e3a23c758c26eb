"""Servers and how rsync reaches them (DESIGN §5)."""

from __future__ import annotations

import enum
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from disco.errors import CommandError, DiscoError
from disco.run import run


class Kind(enum.Enum):
    LOCAL = "local directory"
    SSH = "rsync daemon over ssh"
    DAEMON = "rsync daemon"


HOST = re.compile(r"(?:[A-Za-z0-9_.-]+@)?(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])")
PORT = re.compile(r"(.+):([0-9]{1,5})")  # `[user@]host:port`: ssh's port, for -p


@dataclass(frozen=True)
class Server:
    uri: str
    kind: Kind
    base: str  # a directory, `user@host::` or `rsync://host:port/`
    port: int | None = None  # over ssh: the port `[user@]host:port` names, given to ssh -p

    def parameters(self, node: str) -> str:
        if self.kind is Kind.LOCAL:
            return f"{self.base}/parameters/{node}/"
        return f"{self.base}parameters/{node}/"

    def module(self, name: str) -> str:
        if self.kind is Kind.LOCAL:
            return f"{self.base}/modules/{name}/"
        return f"{self.base}{name}/"


def parse_server(uri: str) -> Server:
    """A local directory (has a '/'), `rsync://host[:port]/` or `[user@]host`."""
    if uri.startswith("rsync://"):
        return Server(uri, Kind.DAEMON, uri.rstrip("/") + "/")
    scheme = SCHEME.match(uri)
    if scheme:  # a URL of another kind: no directory of that name is meant
        raise DiscoError(
            f"server URI '{uri}': disco does not fetch over {scheme[1]}://", _url_hint(uri)
        )
    if "/" in uri or uri in (".", ".."):
        return Server(uri, Kind.LOCAL, str(Path(uri).absolute()).rstrip("/") or "/")
    if HOST.fullmatch(uri):
        return Server(uri, Kind.SSH, f"{uri}::")
    with_port = PORT.fullmatch(uri)
    if with_port and HOST.fullmatch(with_port[1]):
        return with_ssh_port(Server(uri, Kind.SSH, f"{with_port[1]}::"), with_port[2], uri)
    raise DiscoError(
        f"server URI '{uri}' is neither a directory, [user@]host[:port] nor rsync://host/",
        "write a directory with a '/' in it (./srv), a host name, or an rsync:// URL",
    )


SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def _url_hint(uri: str) -> str:
    """What to write instead of the URL `uri`."""
    rest = uri.split("://", 1)[1]
    kind = uri.split("://", 1)[0].lower()
    if kind == "file":
        return f"write the directory itself: {rest or '/'}"
    if kind == "ssh":
        host = rest.split("/", 1)[0]
        return f"write [user@]host[:port] for rsync over ssh: {host}"
    return "a server is a directory (/srv/disco), [user@]host (rsync over ssh) or rsync://host/"


def with_ssh_port(server: Server, port: str, where: str) -> Server:
    """`server` reached on ssh port `port` (from its URI, or --port)."""
    if server.kind is not Kind.SSH:
        return server  # a directory has no port; rsync:// names its own
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise DiscoError(f"{where}: '{port}' is not a port", "give a port from 1 to 65535")
    return replace(server, port=int(port))


def with_port(rsync: tuple[str, ...], port: int | None) -> tuple[str, ...]:
    """The rsync command with `-p PORT` given to its ssh (added as --rsh=ssh if none)."""
    if port is None:
        return rsync
    at = rsh_at(rsync)
    if at is None:
        return (*rsync, f"--rsh=ssh -p {port}")
    i, _ = at
    return (*rsync[:i], f"{rsync[i]} -p {port}", *rsync[i + 1 :])


def rsh_at(rsync: tuple[str, ...]) -> tuple[int, str] | None:
    """Where the rsync command names its remote shell: the index of the word holding the
    shell command and the text before the command in that word (`-e CMD`, `-qaWHe CMD`,
    `-essh`, `--rsh=CMD`, `--rsh CMD`); None if it names none."""
    for i, word in enumerate(rsync[1:], start=1):
        if word.startswith("--rsh="):
            return i, "--rsh="
        if word == "--rsh" and i + 1 < len(rsync):
            return i + 1, ""
        if word.startswith("-") and not word.startswith("--") and "e" in word[1:]:
            flags, _, attached = word[1:].partition("e")
            if attached:
                return i, f"-{flags}e"
            if i + 1 < len(rsync):
                return i + 1, ""
    return None


def has_rsh(rsync: tuple[str, ...]) -> bool:
    """Does the rsync command already name a remote shell (-e / --rsh)?"""
    return rsh_at(rsync) is not None


def sharing(rsync: tuple[str, ...], control: Path) -> tuple[str, ...]:
    """The rsync command with its ssh told to share one connection per server (OpenSSH
    ControlMaster), so a dance authenticates once, however many modules it fetches.
    Options the command gives itself come first, and ssh keeps the first it reads: a
    `-o ControlMaster=no` of the admin's wins."""
    options = f"-o ControlMaster=auto -o ControlPath={control}/%C -o ControlPersist=60"
    at = rsh_at(rsync)
    if at is None:
        return (*rsync, f"--rsh=ssh {options}")
    i, _ = at
    return (*rsync[:i], f"{rsync[i]} {options}", *rsync[i + 1 :])


def close_shared(rsync: tuple[str, ...], server: Server) -> None:
    """Close the shared connection to `server`, if one is open."""
    at = rsh_at(rsync)
    if at is None or server.kind is not Kind.SSH:
        return
    i, prefix = at
    ssh = shlex.split(with_port(rsync, server.port)[i][len(prefix) :])
    run([*ssh, "-O", "exit", server.base.rstrip(":")], check=False)


def rsync_argv(
    rsync: tuple[str, ...],
    server: Server,
    sources: list[str],
    dest: Path,
    link_dest: Path | None,
) -> list[str]:
    argv = [*with_port(rsync, server.port), "--delete"]
    if server.kind is Kind.SSH and not has_rsh(tuple(argv)):
        argv.append("--rsh=ssh")
    if link_dest is not None:
        # Unchanged files become hard links to the last copy: a full copy costs no more
        # than an incremental one.
        argv.append(f"--link-dest={link_dest}")
    return [*argv, *sources, f"{dest}/"]


def without_quiet(rsync: tuple[str, ...]) -> tuple[str, ...]:
    """The rsync command with -q dropped: -q silences the change list we ask for."""
    words: list[str] = []
    for word in rsync:
        if word == "--quiet":
            continue
        if word.startswith("-") and not word.startswith("--") and word[1:].isalpha():
            word = word.replace("q", "")
            if word == "-":
                continue
        words.append(word)
    return tuple(words)


def changed_trees(
    rsync: tuple[str, ...], server: Server, sources: list[str], local: Path
) -> set[str]:
    """Which of the trees `sources` differ from their copies under `local` (a dry run)."""
    if server.kind is Kind.LOCAL:
        check_local(server, sources)
    argv = rsync_argv(without_quiet(rsync), server, sources, local, None)
    result = rpc(argv[:-1] + ["--dry-run", "--out-format=%i %n", argv[-1]], server)
    # Each line is an 11-character change code, a space, then the path. Only the trees
    # asked for count: no other line (a notice, a listing) is ever taken for a name.
    asked = {source.rstrip("/").rsplit("/", 1)[-1] for source in sources}
    found = {line[12:].split("/", 1)[0] for line in result.splitlines() if len(line) > 12}
    return found & asked


class Missing(DiscoError):
    """The server answered, but has no such directory or rsync module."""


def check_local(server: Server, sources: list[str]) -> None:
    if not Path(server.base).is_dir():
        raise DiscoError(f"server {server.uri} does not exist or is not a directory")
    for source in sources:
        if not Path(source).is_dir():
            raise Missing(f"{source} is not on the server")


def fetch_into(
    rsync: tuple[str, ...],
    server: Server,
    sources: list[str],
    dest: Path,
    link_dest: Path | None,
) -> None:
    """Copy trees from the server into the new directory `dest`, in one rsync.

    A source ending in '/' fills `dest` itself; one without lands in `dest/<its name>`.
    """
    if server.kind is Kind.LOCAL:
        check_local(server, [source.rstrip("/") for source in sources])
    dest.mkdir(parents=True, exist_ok=True)
    link = link_dest if link_dest is not None and link_dest.is_dir() else None
    rpc(rsync_argv(rsync, server, sources, dest, link), server)


def rpc(argv: list[str], server: Server) -> str:
    """Run one rsync against the server; its failures become errors a user can act on."""
    try:
        return run(argv).stdout.decode(errors="surrogateescape")
    except CommandError as e:
        if e.returncode == 127:
            raise DiscoError(e.stderr, "install rsync (apt-get install rsync)") from None
        known = ssh_problem(e.stderr, server) or rsync_problem(e.stderr, server)
        if known is not None:
            raise known from None
        reason = rsync_reason(e.stderr) or f"rsync exited with status {e.returncode}"
        if "No such file or directory" in e.stderr or "Unknown module" in e.stderr:
            raise Missing(f"not on the server ({reason})") from None
        raise DiscoError(f"server {server.uri} did not answer: {reason}") from None


def rsync_reason(stderr: str) -> str:
    """The line of rsync's stderr that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("rsync: ", "@ERROR", "ssh: ")) or "Connection refused" in line:
            return line
    return lines[0] if lines else ""


def ssh_problem(stderr: str, server: Server) -> DiscoError | None:
    """What ssh said went wrong, in words an administrator can act on."""
    if server.kind is not Kind.SSH:
        return None
    user, _, host = server.uri.rpartition("@")
    offending = re.search(r"Offending \S+ key in (\S+):(\d+)", stderr)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr and offending:
        return DiscoError(
            f"server {server.uri} sent an ssh host key that does not match the one in"
            f" {offending[1]} (line {offending[2]})",
            "if the server was reinstalled, check its new key, then remove the old one from"
            " known_hosts with ssh-keygen -R",
        )
    if "Host key verification failed" in stderr:
        return DiscoError(
            f"server {server.uri}: its ssh host key is not in known_hosts",
            "add it to known_hosts (ssh-keyscan, checked against the server's own key)",
        )
    if "Permission denied" in stderr:
        return DiscoError(
            f"server {server.uri} refused this node's ssh key (Permission denied)",
            f"add the node's public key to ~{user or 'USER'}/.ssh/authorized_keys on {host},"
            " or name the right key with -i in disco/client/cmds/rsync",
        )
    name = host.split(":")[0]
    if "Could not resolve hostname" in stderr and not user and "." not in name:
        # A bare word: perhaps meant as a directory here.
        local = f"./{name}" if Path(name).is_dir() else "a path with a '/' (./srv)"
        return DiscoError(
            f"server {server.uri}: ssh could not resolve the host name {name} (a server URI"
            " without a '/' is a host, reached by rsync over ssh)",
            f"for a directory on this machine write {local} in disco/server/uri (or --server);"
            " else check the host's name",
        )
    return None


def rsync_problem(stderr: str, server: Server) -> DiscoError | None:
    """An rsync on the server too old for the command we run, in words to act on."""
    unknown = re.search(r"on remote machine: (\S+): unknown option", stderr)
    if unknown:
        return DiscoError(
            f"the rsync on server {server.uri} does not know the option {unknown[1]}"
            " of disco/client/cmds/rsync (too old?)",
            "upgrade rsync on the server, or take the option out of disco/client/cmds/rsync",
        )
    if "protocol version mismatch" in stderr:
        return DiscoError(
            f"the rsync on server {server.uri} speaks a protocol this one does not",
            "upgrade rsync on the server; over ssh, also make sure the remote shell's"
            " startup files print nothing",
        )
    return None
