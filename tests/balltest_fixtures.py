"""Balls made for `disco test`'s own tests: one that never converges, one that says one
thing in NOOP and does another live, one with a volatile stamp, one with setup and verify."""

from __future__ import annotations

import os
from pathlib import Path

# Appends a line at every dance: the second live dance changes /etc/counter again.
COUNTER = """#!/bin/bash
set -eu
lines=0
[ ! -f /etc/counter ] || lines=$(wc -l </etc/counter)
echo "run $((lines + 1))" >>/etc/counter
"""
# Writes one thing in NOOP, another live.
LIAR = """#!/bin/bash
set -eu
if [ -n "${NOOP:-}" ]; then echo said >/etc/liar; else echo done >/etc/liar; fi
"""
# Converges on /etc/stamped; a stamp of when it last ran changes at every dance.
STAMPED = """#!/bin/bash
set -eu
[ -f /etc/stamped ] || echo converged >/etc/stamped
mkdir -p /var/lib/stamped
date +%s.%N >/var/lib/stamped/last-run
"""
# Adds a line to a file a setup made.
LINER = """#!/bin/bash
set -eu
line=$(cat "/var/disco/parameters/$DISCO_NODE/parameters/liner/line")
grep -qxF -- "$line" /etc/liner.conf || echo "$line" >>/etc/liner.conf
"""


def ball(top: Path, name: str, script: str, scenarios: dict[str, dict[str, str]]) -> Path:
    """A ball `name` under `top` with one script, and scenarios of files (relative path:
    content) beside its tests/SCENARIO/parameters/."""
    path = top / name
    (path / "scripts").mkdir(parents=True)
    (path / "scripts" / "10-run.sh").write_text(script)
    os.chmod(path / "scripts" / "10-run.sh", 0o755)
    for scenario, files in scenarios.items():
        where = path / "tests" / scenario
        (where / "parameters").mkdir(parents=True)
        for rel, text in files.items():
            (where / rel).parent.mkdir(parents=True, exist_ok=True)
            (where / rel).write_text(text)
    return path


def counter(top: Path) -> Path:
    return ball(top, "counter", COUNTER, {"once": {}})


def liar(top: Path) -> Path:
    return ball(top, "liar", LIAR, {"plain": {}})


def stamped(top: Path, volatile: str) -> Path:
    files = {"volatile": volatile} if volatile else {}
    return ball(top, "stamped", STAMPED, {"stamp": files})


def liner(top: Path, verify: str) -> Path:
    """With a files/ entry named tests, which is the module's, not the ball's tests."""
    path = top / "liner" / "files" / "etc" / "tests"
    path.mkdir(parents=True)
    (path / "kept").write_text("delivered\n")
    return ball(
        top,
        "liner",
        LINER,
        {
            "on-a-file-of-setup": {
                "parameters/liner/line": "option = 2\n",
                "setup": "#!/bin/bash\nprintf 'option = 1\\n' >/etc/liner.conf\n",
                "verify": verify,
            }
        },
    )
