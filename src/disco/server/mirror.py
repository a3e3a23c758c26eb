"""disco-server mirror: push the server tree to mirror servers with rsync (DESIGN §13).

A fleet larger than one server names several in disco/server/uri; the first is where the
administrator works, the others are mirrors it keeps in sync: `parameters/` and `modules/`
are copied exactly (`--delete`) into the same directory on each mirror (set up once with
`disco-server init DIR` and `add-node` for each node there), then the mirror's own
`disco-server sync DIR` rewrites its rsync configs. `reports/` stays on each server: the
nodes write it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from disco.client.transport import HOST, rsync_reason
from disco.errors import CommandError, UsageError
from disco.run import run
from disco.server.server import PARAMETERS

DEFAULT_RSYNC = ("rsync", "-aH", "--delete")


@dataclass(frozen=True)
class Mirrored:
    host: str
    problem: str  # "" if the mirror has the tree (and synced its configs)


def check_hosts(hosts: list[str]) -> None:
    for host in hosts:
        if not HOST.fullmatch(host):
            raise UsageError(
                f"mirror '{host}' is not [user@]host", "name each mirror as ssh reaches it"
            )


def mirror(
    root: Path, hosts: list[str], rsh: str, remote_dir: str | None, sync: bool
) -> list[Mirrored]:
    """Push `root`'s parameters/ and modules/ to each host; what went wrong, per host."""
    check_hosts(hosts)
    try:
        ssh = shlex.split(rsh)
    except ValueError as e:
        raise UsageError(f"--rsh {rsh}: {e}", "quote it as a shell would") from None
    if not ssh:
        raise UsageError("--rsh is empty", "give the ssh command, e.g. 'ssh -p 2222'")
    where = remote_dir or str(root)
    done = []
    for host in hosts:
        sources = [str(root / PARAMETERS), str(root / "modules")]
        argv = [*DEFAULT_RSYNC, f"--rsh={rsh}", *sources, f"{host}:{where}/"]
        try:
            run(argv)
            if sync:
                run([*ssh, host, "disco-server", "sync", shlex.quote(where)])
        except CommandError as e:
            reason = rsync_reason(e.stderr) or f"{e.argv[0]} exited with status {e.returncode}"
            done.append(Mirrored(host, reason))
            continue
        done.append(Mirrored(host, ""))
    return done


def problem_hint(where: str) -> str:
    return (
        f"check that ssh reaches it and that {where} exists there (disco-server init {where}"
        " on the mirror, once)"
    )
