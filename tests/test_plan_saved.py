"""Saved plans: `disco plan --out FILE`, then `disco dance --plan FILE` applies exactly
that plan or refuses with exit 5, naming what drifted (DESIGN §15)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import Run
from plans import BASE, NODE, make_server, plan

SECRET = "s3cr3t-key-material"


@pytest.fixture
def saved(cmd: Run, state: Path, tmp_path: Path, scratch_root: Path) -> Path:
    """A plan of head (BASE with beta's file changed and a private key) on scratch_root."""
    base = make_server(tmp_path / "base", BASE)
    spec = json.loads(json.dumps(BASE))
    spec["beta"]["files/etc/beta.conf"] = "beta 2\nkeep\n"
    spec["beta"]["files/etc/ssl/private/beta.key"] = SECRET + "\n"
    make_server(tmp_path / "head", spec)
    out = tmp_path / "plan.json"
    result = plan(cmd, state, scratch_root, base, tmp_path / "head", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def apply(
    cmd: Run, state: Path, root: Path, saved: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return cmd("disco", "dance", "--state-dir", str(state), "--node", NODE, "--root", str(root),
               "--plan", str(saved), *args)  # fmt: skip


def test_a_saved_plan_pins_the_head_and_holds_no_content(saved: Path) -> None:
    data: dict[str, Any] = json.loads(saved.read_text())
    assert saved.stat().st_mode & 0o077 == 0  # as sensitive as the node's reports
    assert SECRET not in saved.read_text() and "beta 2" not in saved.read_text()
    assert len(data["plan"]["head"]["hash"]) == 64
    steps = {(s["module"], s["step"]): s["changes"] for s in data["steps"]}
    key = next(c for c in steps[("beta", "fetch")] if c["path"] == "/etc/ssl/private/beta.key")
    assert key["sensitive"] is True and "md5" not in key and key["after"]
    conf = next(c for c in steps[("beta", "fetch")] if c["path"] == "/etc/beta.conf")
    assert conf["md5"] and conf["perms"] == "root:root 644" and conf["before"] is None


def test_a_plan_applied_as_planned_changes_what_it_said(
    cmd: Run, state: Path, scratch_root: Path, saved: Path
) -> None:
    (scratch_root / "etc/elsewhere.conf").write_text("a change the plan did not touch\n")
    result = apply(cmd, state, scratch_root, saved, "--detailed-exitcodes")
    assert result.returncode == 2, result.stderr  # changes, no failures
    assert (scratch_root / "etc/beta.conf").read_text() == "beta 2\nkeep\n"
    assert (scratch_root / "etc/gamma.conf").exists()
    assert (scratch_root / "etc/ssl/private/beta.key").read_text() == SECRET + "\n"


def test_a_drifted_path_stops_the_dance_before_its_step_commits(
    cmd: Run, state: Path, scratch_root: Path, saved: Path
) -> None:
    (scratch_root / "etc/beta.conf").write_text("someone else's\n")
    result = apply(cmd, state, scratch_root, saved)
    assert result.returncode == 5, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "beta: fetch: drifted since the plan" in errors[0]
    assert "/etc/beta.conf" in errors[0] and "disco plan" in errors[0]
    assert (scratch_root / "etc/alpha.conf").exists()  # before it: committed
    assert (scratch_root / "etc/beta.conf").read_text() == "someone else's\n"  # not committed
    assert not (scratch_root / "etc/gamma.conf").exists()  # after it: never ran
    history = cmd("disco", "history", "--state-dir", str(state))
    assert history.returncode == 0


def test_a_changed_head_tree_is_refused(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path, saved: Path
) -> None:
    (tmp_path / "head/modules/gamma/files/etc/gamma.conf").write_text("changed after review\n")
    result = apply(cmd, state, scratch_root, saved)
    assert result.returncode == 5, result.stderr
    assert "error: the head tree changed since the plan" in result.stderr
    assert not (scratch_root / "etc/alpha.conf").exists()


def test_a_plan_older_than_max_age_is_refused(
    cmd: Run, state: Path, scratch_root: Path, saved: Path
) -> None:
    data = json.loads(saved.read_text())
    data["plan"]["created"] = "2020-01-01T00:00:00.000000Z"
    saved.write_text(json.dumps(data))
    result = apply(cmd, state, scratch_root, saved, "--detailed-exitcodes")
    assert result.returncode == 5, result.stderr
    assert "more than disco/client/plan/max_age (24 h)" in result.stderr
    assert not (scratch_root / "etc/alpha.conf").exists()
    # A longer max_age takes it.
    cmd("disco-param", "--state-dir", str(state), "set", "disco/client/plan/max_age",
        input="100000d\n")  # fmt: skip
    assert apply(cmd, state, scratch_root, saved).returncode == 0


def test_a_refused_plan_is_a_json_document_too(
    cmd: Run, state: Path, scratch_root: Path, saved: Path
) -> None:
    (scratch_root / "etc/beta.conf").write_text("someone else's\n")
    result = apply(cmd, state, scratch_root, saved, "--json", "--detailed-exitcodes")
    assert result.returncode == 5, result.stderr
    document = json.loads(result.stdout)
    assert document["exit"] == 5 and "/etc/beta.conf" in document["error"]
    beta = [c for c in document["changes"] if c["path"] == "/etc/beta.conf"]
    assert beta and beta[0]["failed"].startswith("not committed: beta: fetch: drifted")
