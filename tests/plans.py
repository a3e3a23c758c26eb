"""Helpers of the plan tests: servers made from a few lines, and a root's exact state."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from conftest import Run

NODE = "plan.example.com"

# Module name -> {path under the module: content}. `scripts/*` are made executable.
Spec = dict[str, dict[str, str]]

BASE: Spec = {
    "alpha": {"files/etc/alpha.conf": "alpha 1\n"},
    "beta": {
        "files/etc/beta.conf": "beta 1\nkeep\n",
        "scripts/10-log": "#!/bin/bash\necho ran >> /etc/beta.log\nsystemctl restart beta\n",
    },
    "gamma": {
        "files/etc/gamma.conf": "gamma\n",
        "files/etc/gamma-mode": "m\n",
        "files/etc/gamma-gone": "goes\n",
        "scripts/10-own": "#!/bin/bash\nchown 0:0 /etc/gamma.conf\n",
    },
}


def make_server(top: Path, spec: Spec, node: str = NODE) -> Path:
    if top.exists():
        shutil.rmtree(top)
    (top / "parameters" / node / "modules").mkdir(parents=True)
    for name, files in spec.items():
        (top / "parameters" / node / "modules" / name).touch()
        (top / "modules" / name).mkdir(parents=True)
        for rel, text in files.items():
            path = top / "modules" / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if rel.startswith("scripts/"):
                path.chmod(0o755)
    return top


def plan(
    cmd: Run, state: Path, root: Path, base: Path, head: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return cmd("disco", "plan", "--state-dir", str(state), "--node", NODE, "--root", str(root),
               "--server", str(base), "--head", str(head), *args)  # fmt: skip


def plan_json(
    cmd: Run, state: Path, root: Path, base: Path, head: Path, *args: str
) -> dict[str, Any]:
    result = plan(cmd, state, root, base, head, "--json", *args)
    assert result.returncode in (0, 2, 4, 6), result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def exact_state(root: Path) -> dict[str, tuple[int, ...]]:
    """Every path under `root` (not below its mounts) with its inode's times and content
    hash: proof that nothing, not even a ctime, changed."""
    out: dict[str, tuple[int, ...]] = {}
    with open("/proc/self/mountinfo") as f:
        mounts = {line.split()[4] for line in f}
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(here, d) not in mounts]
        for name in [*dirs, *files, "."]:
            path = os.path.join(here, name)
            st = os.lstat(path)
            data = (
                hash(Path(path).read_bytes())
                if os.path.isfile(path) and not os.path.islink(path)
                else 0
            )
            out[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                         st.st_ctime_ns, st.st_nlink, data)  # fmt: skip
    return out


def by_path(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in document["delta"]}
