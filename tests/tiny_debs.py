"""A tiny package in two versions, built at test time with dpkg-deb (no network), in a
flat apt repository for packages_env.dance to serve on loopback (issue 25: upgrades).

disco-up 1.0-1 -> 2.0-1:
- /etc/disco-up/main.conf, a conffile the maintainer changes (dpkg replaces it);
- /etc/disco-up/kept.conf, a conffile the maintainer changes and the admin changed too
  (UPGRADE_SETUP): dpkg asks, or with --force-confold keeps the admin's and writes
  kept.conf.dpkg-dist;
- /usr/share/disco-up/gone in 1.0 only (removed by the upgrade), /usr/share/disco-up/new
  in 2.0 only, /usr/share/disco-up/data changed;
- a postinst that appends "configured VERSION from OLD" to /var/lib/disco-up/history
  and, from 2.0, adds the system user disco-up.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

PACKAGE = "disco-up"
OLD, NEW = "1.0-1", "2.0-1"

_POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    mkdir -p /var/lib/disco-up
    echo "configured {version} from ${{2:-nothing}}" >>/var/lib/disco-up/history
    {user}
fi
"""
_USER = "getent passwd disco-up >/dev/null || useradd --system --no-create-home disco-up"

# What the scratch root looks like before the upgrade: 1.0 installed, kept.conf changed.
UPGRADE_SETUP = f"""set -e
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q {PACKAGE}={OLD} >/dev/null
echo "mode = the admin's" >/etc/disco-up/kept.conf
"""


def available() -> str | None:
    """Why the tiny packages cannot be built here, or None."""
    for tool in ("dpkg-deb", "dpkg-scanpackages"):
        if shutil.which(tool) is None:
            return f"no {tool}: install dpkg-dev (make test-deps)"
    return None


def _build(work: Path, version: str, out: Path) -> None:
    tree = work / version
    two = version == NEW
    files = {
        "etc/disco-up/main.conf": "level = 2\nnew = yes\n" if two else "level = 1\n",
        "etc/disco-up/kept.conf": "mode = new\n" if two else "mode = old\n",
        "usr/share/disco-up/data": f"data of {version}\n",
        "usr/share/disco-up/new" if two else "usr/share/disco-up/gone": f"only in {version}\n",
    }
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    debian = tree / "DEBIAN"
    debian.mkdir()
    (debian / "control").write_text(
        f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: disco tests <root@localhost>\nSection: misc\nPriority: optional\n"
        f"Description: disco's upgrade test package, version {version}\n"
    )
    (debian / "conffiles").write_text("/etc/disco-up/main.conf\n/etc/disco-up/kept.conf\n")
    postinst = debian / "postinst"
    postinst.write_text(_POSTINST.format(version=version, user=_USER if two else ":"))
    postinst.chmod(0o755)
    for path in tree.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)],
        check=True, capture_output=True,
    )  # fmt: skip


def make_repo(where: Path) -> Path:
    """A flat repository (Packages, Release with its SHA256) holding both versions."""
    repo = where / "repo"
    repo.mkdir(parents=True)
    for version in (OLD, NEW):
        _build(where / "build", version, repo / f"{PACKAGE}_{version}_all.deb")
    packages = subprocess.run(
        ["dpkg-scanpackages", "-m", ".", "/dev/null"],
        cwd=repo, check=True, capture_output=True,
    ).stdout  # fmt: skip
    (repo / "Packages").write_bytes(packages)
    digest = hashlib.sha256(packages).hexdigest()
    (repo / "Release").write_text(
        f"Origin: disco-tests\nLabel: disco-tests\nSHA256:\n {digest} {len(packages)} Packages\n"
    )
    return repo
