"""One scenario's checks, in order (DESIGN §16): NOOP, live, NOOP = live, idempotence,
verify, rollback. disco drives itself as a user would, as Molecule drives ansible: every
dance and the rollback is the `disco` command, run on the scenario's scratch root."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disco.balltest import snapshot
from disco.balltest.results import Check, Status
from disco.balltest.roots import Scratch
from disco.balltest.scenarios import Ball, Scenario
from disco.run import run

NODE = "test.disco"
SETUP, VERIFY = "disco-test-setup", "disco-test-verify"  # the scenario's own steps, as modules
CHECKS = ("noop", "live", "noop-equals-live", "idempotence", "verify", "rollback")
DEVICE = re.compile(r" device=\[\w+\]")  # the layer's device: NOOP's is not live's


@dataclass(frozen=True)
class Danced:
    status: int
    document: dict[str, Any]
    stderr: str

    @property
    def changes(self) -> list[dict[str, str]]:
        return list(self.document.get("changes", []))

    def said(self) -> str:
        """What the dance printed: with --json, its lines and its steps' output are on
        stderr; an error before the dance began is in the document alone."""
        text = self.stderr.strip()
        error = self.document.get("error")
        return text if not error or error in text else f"{text}\nerror: {error}".strip()


@dataclass
class Run:
    """The scenario's run: its scratch root, server and state, and the checks so far."""

    ball: Ball
    scenario: Scenario
    scratch: Scratch
    checks: list[Check] = field(default_factory=list)
    started: float = 0.0  # when the check under way began
    noop: Danced = Danced(0, {}, "")
    live: Danced = Danced(0, {}, "")
    before: snapshot.Snapshot = snapshot.Snapshot({})  # the root before the live dance
    live_id: str = ""
    danced: int = 0  # the dances run so far

    @property
    def server(self) -> Path:
        return self.scratch.home / "server"

    def disco(self, *args: str) -> tuple[int, str, str]:
        env = {
            **os.environ,
            "DISCO_STATE": str(self.scratch.home / "state"),
            "NO_COLOR": "1",
            "LC_ALL": "C",
        }
        env.pop("NOOP", None)
        result = run([sys.executable, "-m", "disco", *args], env=env, check=False)
        return (
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )

    def dance(self, *flags: str, module: str | None = None) -> Danced:
        args = [
            "dance",
            "--server",
            str(self.server),
            "--node",
            NODE,
            "--root",
            str(self.scratch.root),
            "--json",
            *flags,
        ]
        # The node dances this one module (and what it brings, both ways): its map says so.
        listed = self.server / "parameters" / NODE / "modules"
        for entry in listed.iterdir():
            entry.unlink()
        for name in (module,) if module else self.scenario.dances:
            (listed / name).touch()
        status, out, err = self.disco(*args)
        self.danced += 1
        try:
            document = json.loads(out)
        except ValueError:
            document = {"error": f"no JSON document on stdout: {out[:200]!r}"}
        return Danced(status, document, err)

    def add(self, name: str, status: Status, message: str = "", details: str = "") -> None:
        self.checks.append(
            Check(
                self.ball.name,
                self.scenario.name,
                name,
                status,
                message,
                details,
                time.monotonic() - self.started,
            )
        )


def make_server(r: Run) -> None:
    """The ball and the modules it brings, the scenario's setup and verify as modules of
    their own, and the node with the scenario's parameters."""
    modules = r.server / "modules"
    for name, path in r.scenario.modules:
        shutil.copytree(path, modules / name, symlinks=True, ignore=top_tests(path))
    node = r.server / "parameters" / NODE
    (node / "modules").mkdir(parents=True)
    if r.scenario.parameters.is_dir():
        shutil.copytree(r.scenario.parameters, node / "parameters", symlinks=True)
    for module, name in ((SETUP, "setup"), (VERIFY, "verify")):
        script = r.scenario.script(name)
        if script is not None:
            (modules / module / "scripts").mkdir(parents=True)
            shutil.copy(script, modules / module / "scripts" / name)
            os.chmod(modules / module / "scripts" / name, 0o755)


def top_tests(top: Path) -> Callable[[str, list[str]], list[str]]:
    """A ball's own tests/ is left out of the module: not a files/ entry named tests."""
    return lambda folder, names: ["tests"] if Path(folder) == top else []


def run_scenario(ball: Ball, scenario: Scenario, scratch: Scratch) -> list[Check]:
    r = Run(ball, scenario, scratch, started=time.monotonic())
    make_server(r)
    if scenario.script("setup") is not None:
        setup = r.dance(module=SETUP)
        if setup.status != 0:
            r.add("noop", Status.FAILED, "the scenario's setup failed", setup.said())
            return skip_rest(r, "the setup failed")
    for step in (check_noop, check_live):
        if not step(r):
            return skip_rest(r, f"{r.checks[-1].name} failed")
    return r.checks


def skip_rest(r: Run, why: str) -> list[Check]:
    done = {c.name for c in r.checks}
    for name in CHECKS:
        if name not in done:
            r.add(name, Status.SKIPPED, f"not run: {why}")
    return r.checks


def check_noop(r: Run) -> bool:
    upper = snapshot.upper_paths(r.scratch.upper)
    before = snapshot.take(r.scratch.root, upper)
    r.noop = noop = r.dance("--noop")
    r.started = time.monotonic()
    if noop.status != 0:
        r.add("noop", Status.FAILED, f"the NOOP dance exited {noop.status}", noop.said())
        return False
    now = snapshot.take(r.scratch.root, snapshot.upper_paths(r.scratch.upper) | upper)
    changed = snapshot.compare(before, now, r.scratch.lower)
    if changed:
        r.add("noop", Status.FAILED, "the NOOP dance changed the root", "\n".join(changed))
        return False
    r.add("noop", Status.PASSED, f"{len(noop.changes)} change(s) would be made")
    r.before = before
    return True


def check_live(r: Run) -> bool:
    r.started = time.monotonic()
    r.live = live = r.dance()
    if live.status != 0:
        r.add("live", Status.FAILED, f"the live dance exited {live.status}", live.said())
        return False
    r.add("live", Status.PASSED, f"{len(live.changes)} change(s) made")
    r.started = time.monotonic()
    # The scenario's state is its own: its dances are numbered 1, 2, ... in the order run
    # (setup, NOOP, live), as 'disco history' lists them.
    r.live_id = str(r.danced)
    check_equal(r)
    check_idempotent(r)
    check_verify(r)
    check_rollback(r)
    return True


def record(change: dict[str, str]) -> str:
    return DEVICE.sub("", change.get("header", "")) + "\n" + change.get("diff", "")


def apart(r: Run, changes: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[str]]:
    """The changes that count, and the volatile ones listed with their reason."""
    kept, volatile = [], []
    for change in changes:
        reason = r.scenario.volatile_reason(change.get("path", ""))
        if reason is None:
            kept.append(change)
        else:
            volatile.append(f"{change.get('path')}: volatile ({reason})")
    return kept, volatile


def check_equal(r: Run) -> None:
    noop, volatile = apart(r, r.noop.changes)
    live, _ = apart(r, r.live.changes)
    a, b = [record(c) for c in noop], [record(c) for c in live]
    if a == b:
        r.add(
            "noop-equals-live", Status.PASSED, f"{len(a)} record(s) the same", "\n".join(volatile)
        )
        return
    only_noop = [x for x in a if x not in b]
    only_live = [x for x in b if x not in a]
    lines = ["NOOP said, live did not:", *only_noop, "live did, NOOP did not say:", *only_live]
    if not only_noop and not only_live:
        lines = ["the same records in another order", "NOOP:", *a, "live:", *b]
    r.add(
        "noop-equals-live",
        Status.FAILED,
        "NOOP's change records differ from live's",
        "\n".join([*lines, *volatile]),
    )


def check_idempotent(r: Run) -> None:
    r.started = time.monotonic()
    again = r.dance()
    if again.status != 0:
        r.add(
            "idempotence",
            Status.FAILED,
            f"the second live dance exited {again.status}",
            again.said(),
        )
        return
    kept, volatile = apart(r, again.changes)
    shown = [f"{c.get('module')}: {c.get('step')}: {record(c)}".rstrip() for c in kept]
    if kept:
        paths = ", ".join(c.get("path", "") for c in kept)
        r.add(
            "idempotence",
            Status.FAILED,
            f"the second live dance changed {len(kept)} path(s): {paths}",
            "\n".join([*shown, *volatile]),
        )
        return
    r.add(
        "idempotence", Status.PASSED, "the second live dance changed nothing", "\n".join(volatile)
    )


def check_verify(r: Run) -> None:
    r.started = time.monotonic()
    if r.scenario.script("verify") is None:
        r.add("verify", Status.SKIPPED, "no verify script")
        return
    verified = r.dance("--noop", module=VERIFY)
    if verified.status != 0:
        r.add("verify", Status.FAILED, "verify failed", verified.said())
        return
    r.add("verify", Status.PASSED, "verify exited 0")


def check_rollback(r: Run) -> None:
    r.started = time.monotonic()
    status, out, err = r.disco("rollback", r.live_id, "--root", str(r.scratch.root))
    if status != 0:
        r.add("rollback", Status.FAILED, f"disco rollback exited {status}", (out + err).strip())
        return
    paths = snapshot.upper_paths(r.scratch.upper) | set(r.before.entries)
    now = snapshot.take(r.scratch.root, paths)
    changed = snapshot.compare(r.before, now, r.scratch.lower)
    if changed:
        r.add(
            "rollback",
            Status.FAILED,
            f"after the rollback {len(changed)} path(s) differ from before the live dance",
            "\n".join(changed),
        )
        return
    r.add("rollback", Status.PASSED, "the root is as it was, byte for byte")
