"""After a dance, its report goes to the server it danced from (DESIGN §13).

Only an ssh server has somewhere to put it: `disco-server add-node` gives each node's key a
write-only `[reports]` rsync module, `reports/NODE/` on the server, that takes one file,
last.json. The push runs over the dance's shared ssh connection. A local directory or a
plain rsync:// daemon has no area that a node alone can write, and a server set up by hand
(the seed's ~/rsyncd.conf) has no [reports]: nothing is pushed there.
"""

from __future__ import annotations

from pathlib import Path

from disco.client.state import Settings
from disco.client.transport import Kind, Missing, Server, has_rsh, rpc
from disco.errors import DiscoError

REPORTS = "reports"  # the rsync module, as disco-server writes it
REPORT_FILE = "last.json"


def push_report(settings: Settings, server: Server, last: Path) -> DiscoError | None:
    """Upload `last` (the dance's last.json) to `server`; what went wrong, or None."""
    if server.kind is not Kind.SSH:
        return None
    # Owner and group are the server user's, the mode the daemon's (incoming chmod); the
    # daemon refuses symlinks.
    argv = [*settings.rsync, "--no-owner", "--no-group", "--no-links"]
    argv += [] if has_rsh(settings.rsync) else ["--rsh=ssh"]
    argv += [str(last), f"{server.base}{REPORTS}/{REPORT_FILE}"]
    try:
        rpc(argv, server)
    except Missing as e:
        if "Unknown module" in e.message:  # a server that keeps no reports
            return None
        return DiscoError(
            f"could not push the report to {server.uri}: {e.message}",
            "on the server, run 'disco-server sync' to create reports/NODE/",
        )
    except DiscoError as e:
        hint = (
            "on the server, run 'disco-server sync' (a node set up before reports has no"
            f" [{REPORTS}] area); the report stays in {last}"
        )
        return DiscoError(f"could not push the report to {server.uri}: {e.message}", hint)
    return None
