"""How the ball tests dance: a server made by `disco-server init --with-balls`, one node with
the ball's parameters, and a scratch root (conftest.scratch_root) danced NOOP, live, live
again and NOOP again: the NOOP dance shows the live dance's changes exactly, the second live
dance changes nothing, and a NOOP dance leaves the root as it was."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import Run, tree_snapshot

NODE = "ball.example"
WATCHED = ("etc", "home", "root", "var", "srv")  # the scratch root's own trees (not /usr)
# /etc files of this machine a scratch root needs for the shadow tools and friends.
ETC = ("login.defs", "gshadow", "subuid", "subgid", "shells", "default/useradd")


@dataclass(frozen=True)
class Danced:
    noop: subprocess.CompletedProcess[str]
    live: subprocess.CompletedProcess[str]


def prepare_root(root: Path) -> Path:
    for name in ETC:
        if Path("/etc", name).exists():
            (root / "etc" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    # awk and friends are alternatives: their links live in /etc.
    shutil.copytree("/etc/alternatives", root / "etc/alternatives", symlinks=True)
    return root


def make_server(cmd: Run, tmp_path: Path, ball: str, params: dict[str, str]) -> Path:
    """A server with the standard balls, and NODE dancing `ball` with `params` (path: value,
    relative to the node's parameters/; a value of None makes a map)."""
    srv = tmp_path / "srv"
    result = cmd("disco-server", "init", str(srv), "--with-balls", "--config", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    node = srv / "parameters" / NODE
    (node / "modules").mkdir(parents=True)
    (node / "modules" / ball).touch()
    set_params(srv, params)
    return srv


def set_params(srv: Path, params: dict[str, str]) -> None:
    top = srv / "parameters" / NODE / "parameters"
    if top.exists():
        shutil.rmtree(top)
    top.mkdir()
    for path, value in params.items():
        (top / path).parent.mkdir(parents=True, exist_ok=True)
        (top / path).write_text(value + "\n")


def dance(
    cmd: Run, state: Path, srv: Path, root: Path, noop: bool
) -> subprocess.CompletedProcess[str]:
    args = ["--server", str(srv), "--node", NODE, "--root", str(root)]
    return cmd("disco", "dance", *(["--noop"] if noop else []), *args)


def watched(root: Path) -> dict[str, dict[str, tuple[int, bytes]]]:
    return {top: tree_snapshot(root / top) for top in WATCHED}


def changes(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("info: File: ")]


def dance_twice(cmd: Run, state: Path, srv: Path, root: Path, exact: bool = True) -> Danced:
    """NOOP, live, live, NOOP: see the module docstring. `exact=False`: the change is an
    outside effect (a package manager), which NOOP intercepts and says it would run."""
    before = watched(root)
    noop = dance(cmd, state, srv, root, noop=True)
    assert noop.returncode == 0, noop.stdout + noop.stderr
    assert watched(root) == before, "a NOOP dance changed the scratch root"
    live = dance(cmd, state, srv, root, noop=False)
    assert live.returncode == 0, live.stdout + live.stderr
    assert changes(live), "the live dance changed nothing"
    assert not exact or [re.sub(r" device=\[\w+\]", "", x) for x in changes(noop)] == [
        re.sub(r" device=\[\w+\]", "", x) for x in changes(live)
    ]
    after = watched(root)
    again = dance(cmd, state, srv, root, noop=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert changes(again) == [], again.stdout
    assert watched(root) == after
    quiet = dance(cmd, state, srv, root, noop=True)
    assert quiet.returncode == 0 and changes(quiet) == [], quiet.stdout
    return Danced(noop, live)


def refused(
    cmd: Run, state: Path, srv: Path, root: Path, *messages: str
) -> subprocess.CompletedProcess[str]:
    """A live dance whose ball parameters are bad: error: lines, a failed dance, nothing
    changed."""
    before = watched(root)
    result = dance(cmd, state, srv, root, noop=False)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for message in messages:
        assert any(message in line for line in errors), (message, result.stderr)
    assert changes(result) == []
    assert watched(root) == before
    return result
