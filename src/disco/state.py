"""Where the client keeps its state, and the settings read from it (DESIGN §2)."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from disco.errors import DiscoError
from disco.params import ParamStore
from disco.transport import Server, parse_server

DEFAULT_STATE = Path("/var/disco")
DEFAULT_RSYNC = "rsync -aWH"
RSYNC_SETTING = ("disco", "client", "cmds", "rsync")
SERVER_SETTING = ("disco", "server", "uri")


@dataclass(frozen=True)
class State:
    root: Path

    @classmethod
    def locate(cls, flag: str | None = None) -> State:
        """`--state-dir`, else $DISCO_STATE, else /var/disco."""
        chosen = flag or os.environ.get("DISCO_STATE") or str(DEFAULT_STATE)
        return cls(Path(chosen).absolute())

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
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in (self.parameters, self.modules):
            directory.mkdir(exist_ok=True)


@dataclass(frozen=True)
class Settings:
    """Client settings for one dance: parameters, overridden by command-line flags."""

    servers: tuple[Server, ...]
    rsync: tuple[str, ...]
    shared: bool = False  # rsync's ssh already shares one connection per server


def load_settings(store: ParamStore, servers: list[str] | None = None) -> Settings:
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
    return Settings(tuple(parse_server(uri) for uri in uris), rsync)
