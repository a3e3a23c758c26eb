"""A commit that fails is said to have failed everywhere (issue 22): the dance's error
and exit status, `disco history`, the report and its HTML page, `--json`, and `disco
rollback`, which has nothing of it to undo. The scratch root's /usr and /usr/local are
read-only binds (conftest.scratch_root), so `files/usr/local/x` cannot be committed. And
the other way round: a dance whose exit status 2 means changes is not painted red."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import Run, assert_one_error
from test_dance_steps import dance, make_server

MODULES = {
    "a": {"files/etc/a1": "a\n", "files/usr/local/x": "x\n"},  # one commit: both or none
    "b": {"requires": "a\n", "files/etc/b1": "b\n"},  # skipped: it requires a
    "c": {"files/etc/c1": "c\n"},  # unrelated: committed
}


def test_a_failed_commit_fails_its_module_and_is_reported_as_failed(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", MODULES)
    result = dance(cmd, server, scratch_root, "--json", noop=False)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: a: the commit of fetch failed, nothing of it was applied: cannot commit"
    ), errors
    assert "/usr/local/x" in errors[0] and "Read-only file system" in errors[0]
    assert "warning: Skipping b: requires a" in result.stderr
    assert not (scratch_root / "etc/a1").exists() and not (scratch_root / "etc/b1").exists()
    assert (scratch_root / "etc/c1").read_text() == "c\n"

    document = json.loads(result.stdout)
    assert (document["failed"], document["skipped"], document["exit"]) == (["a"], ["b"], 1)
    failed = {c["path"]: c["failed"] for c in document["changes"] if "failed" in c}
    assert set(failed) == {"/etc/a1", "/usr/local/x"}
    assert all(text.startswith("not committed: cannot commit") for text in failed.values())

    listed = cmd("disco", "history").stdout.splitlines()
    assert len(listed) == 1
    assert "1 change(s)  2 failure(s)  exit 1  rollback: yes" in listed[0], listed

    page = cmd("disco", "report", "--html", "-").stdout
    x = next(line for line in page.splitlines() if "/usr/local/x : Created" in line)
    assert '<summary class="failed">not committed: cannot commit' in x, x
    assert '<summary class="created">' not in x
    assert re.search(r'<li class="bad"><b>2</b>not committed</li>', page)
    assert re.search(r'<li class="bad"><b>1 \(failures\)</b>exit</li>', page)

    noop = cmd("disco", "rollback", "--noop", "--root", str(scratch_root))
    assert noop.returncode == 0, noop.stderr
    assert (
        "info: dance 1 did not commit a: fetch (its commit failed; nothing to undo):"
        " /etc/a1 /usr/local/x"
    ) in noop.stdout.splitlines()
    assert "info: File: file: /etc/c1 : Deleted" in noop.stdout


def test_a_dance_whose_only_commit_failed_has_nothing_to_roll_back(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"a": MODULES["a"]})
    assert dance(cmd, server, scratch_root, noop=False).returncode == 1
    listed = cmd("disco", "history").stdout
    assert "0 change(s)  1 failure(s)  exit 1  rollback: no (nothing committed)" in listed
    refused = cmd("disco", "rollback", "--noop", "--root", str(scratch_root))
    assert_one_error(refused, 1, "no live dance", "did not commit a: fetch", "/usr/local/x")


def test_a_failed_commit_keeps_the_modules_after_it_dancing(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    """A commit fails like a step: the next step of its module does not run."""
    server = make_server(tmp_path / "srv", {
        "a": {"files/usr/local/x": "x\n", "scripts/10-later.sh": "echo later > /etc/later\n"},
        "c": {"files/etc/c1": "c\n"},
    })  # fmt: skip
    result = dance(cmd, server, scratch_root, noop=False)
    assert result.returncode == 1
    assert not (scratch_root / "etc/later").exists() and (scratch_root / "etc/c1").exists()
    assert "info: Processing c" in result.stdout


def test_changes_under_detailed_exitcodes_are_not_painted_as_a_failure(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"c": MODULES["c"]})
    assert dance(cmd, server, scratch_root, "--detailed-exitcodes").returncode == 2
    page = cmd("disco", "report", "--html", "-").stdout
    assert '<li class="ok"><b>2 (changes)</b>exit</li>' in page
