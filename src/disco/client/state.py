"""Where the client keeps its state, and the settings read from it (DESIGN §2)."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from disco.client.transport import Server, parse_server
from disco.engine.cgroups import Limits
from disco.errors import DiscoError
from disco.run import run
from disco.tree.params import ParamStore

DEFAULT_STATE = Path("/var/disco")
DEFAULT_RSYNC = "rsync -aWHS"  # -S: a sparse file of files/ stays sparse in the state
RSYNC_SETTING = ("disco", "client", "cmds", "rsync")
SERVER_SETTING = ("disco", "server", "uri")


@dataclass(frozen=True)
class State:
    root: Path

    @classmethod
    def locate(cls, flag: str | None = None) -> State:
        """`--state-dir`, else $DISCO_STATE, else /var/disco."""
        chosen = flag or os.environ.get("DISCO_STATE") or str(DEFAULT_STATE)
        where = "--state-dir" if flag else "DISCO_STATE" if os.environ.get("DISCO_STATE") else ""
        state = cls(Path(chosen).absolute())
        if state.root.exists() and not state.root.is_dir():
            raise DiscoError(
                f"state directory {state.root} is not a directory",
                f"point {where or '--state-dir'} at a directory (or where one can be made)",
            )
        return state

    @property
    def parameters(self) -> Path:
        return self.root / "parameters"

    @property
    def modules(self) -> Path:
        return self.root / "modules"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def txn(self) -> Path:
        return self.root / "txn"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def staging(self) -> Path:
        """Where a fetch lands before it is swapped into place."""
        return self.root / "fetch.new"

    def params(self) -> ParamStore:
        return ParamStore(self.parameters)

    def create(self) -> None:
        # The tree may hold secrets: only root reads it.
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for directory in (self.parameters, self.modules):
                directory.mkdir(exist_ok=True)
        except OSError as e:
            raise DiscoError(
                f"cannot make the state directory {self.root}: {e.strerror}",
                "give --state-dir (or DISCO_STATE) a directory root can write, e.g. /var/disco",
            ) from None


@dataclass(frozen=True)
class Settings:
    """Client settings for one dance: parameters, overridden by command-line flags."""

    servers: tuple[Server, ...]
    rsync: tuple[str, ...]
    step_timeout: float | None = None  # seconds a template or script may run
    shared: bool = False  # rsync's ssh already shares one connection per server
    limits: Limits = field(default_factory=Limits.defaults)  # of a sandboxed step
    # NOOP package installs: "fetch" (DESIGN §17) or "intercept"; None: as live would
    packages: str | None = None


TIMEOUT_SETTING = ("disco", "client", "timeout", "step")


def load_settings(
    store: ParamStore, servers: list[str] | None = None, timeout: str | None = None
) -> Settings:
    uri_text = "\n".join(servers) if servers else store.lookup(SERVER_SETTING, "")
    uris = tuple(line.strip() for line in (uri_text or "").splitlines() if line.strip())
    if not uris:
        raise DiscoError(
            "no server to fetch from: disco/server/uri is not set",
            "set it with 'echo /srv/disco | disco-param set disco/server/uri', or pass --server",
        )
    rsync_text = store.lookup(RSYNC_SETTING, DEFAULT_RSYNC) or DEFAULT_RSYNC
    try:
        rsync = tuple(shlex.split(rsync_text))
    except ValueError as e:
        raise DiscoError(
            f"disco/client/cmds/rsync cannot be split into words ({e}): {rsync_text}",
            "fix its quoting with 'disco-param set disco/client/cmds/rsync'",
        ) from None
    if not rsync:
        raise DiscoError(
            "disco/client/cmds/rsync is empty",
            f"set it, e.g. 'echo {DEFAULT_RSYNC} | disco-param set disco/client/cmds/rsync'",
        )
    limit = timeout if timeout is not None else store.lookup(TIMEOUT_SETTING, "")
    servers_ = tuple(parse_server(uri) for uri in uris)
    return Settings(servers_, rsync, step_timeout(limit, timeout), limits=load_limits(store),
                    packages=load_packages(store))  # fmt: skip


PACKAGES_SETTING = ("disco", "client", "noop", "packages")


def load_packages(store: ParamStore) -> str | None:
    """disco/client/noop/packages: "fetch" or "intercept"; None when unset (the dance
    then does what live would: fetch on `/`, intercept on another root)."""
    text = (store.lookup(PACKAGES_SETTING, "") or "").strip()
    if not text:
        return None
    if text not in ("fetch", "intercept"):
        where = "/".join(PACKAGES_SETTING)
        raise DiscoError(
            f"{where} is {text!r}, neither fetch nor intercept",
            f"set it with 'echo intercept | disco-param set {where}' (or fetch)",
        )
    return text


SANDBOX_SETTING = ("disco", "client", "sandbox")


def load_limits(store: ParamStore) -> Limits:
    """disco/client/sandbox/{pids_max,memory_mb,tmpfs_mb}: whole numbers, 0 for none."""
    default = Limits.defaults()
    values = {}
    for name, field_, fallback in (
        ("pids_max", "pids", default.pids),
        ("memory_mb", "memory_mb", default.memory_mb),
        ("tmpfs_mb", "tmpfs_mb", default.tmpfs_mb),
    ):
        path = (*SANDBOX_SETTING, name)
        text = (store.lookup(path, "") or "").strip()
        if not text:
            values[field_] = fallback
            continue
        if not text.isdigit():
            where = "/".join(path)
            raise DiscoError(
                f"{where} is {text!r}, not a whole number",
                f"set it with 'echo {fallback} | disco-param set {where}' (0: no limit)",
            )
        values[field_] = int(text)
    return Limits(**values)


def step_timeout(text: str | None, flag: str | None) -> float | None:
    """The time limit of a step, from --timeout or disco/client/timeout/step; None: none."""
    if not (text or "").strip():
        return None
    where = "--timeout" if flag is not None else "/".join(TIMEOUT_SETTING)
    try:
        seconds = float((text or "").strip())
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 10**7:
        raise DiscoError(
            f"{where} is {(text or '').strip()!r}, not a number of seconds",
            f"give a positive number, e.g. '{where} 600'"
            if flag is not None
            else f"set it with 'echo 600 | disco-param set {where}'",
        )
    return seconds


def default_node() -> str:
    """The node's name when --node is not given: what `hostname -f` prints (DESIGN §1).

    Not socket.getfqdn(): where /etc/hosts maps 127.0.0.1 to localhost as well, that says
    `localhost` on a host whose `hostname -f` says `vm`. Without a working `hostname -f`
    (no DNS name, no hostname binary), the kernel's hostname."""
    result = run(["hostname", "-f"], check=False)
    name = result.stdout.decode(errors="replace").strip()
    return name if result.returncode == 0 and name else os.uname().nodename
