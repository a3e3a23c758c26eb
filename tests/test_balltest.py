"""disco test (DESIGN §16): every shipped ball's scenarios green, and each check failing
where it must: a ball that never converges (its diff shown), NOOP that says otherwise than
live, a verify that fails; setup, volatile paths, --keep, --json and --junit."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import balltest_fixtures as fx
from conftest import BIN, tree_snapshot

BALLS = Path(__file__).resolve().parent.parent / "src" / "disco" / "balls"
CHECKS = ["noop", "live", "noop-equals-live", "idempotence", "verify", "rollback"]
# What the shipped balls' scenarios change, as this machine has it. (Not all of /etc: other
# suites add users to it while this one runs.)
TOUCHED = ("/etc/motd", "/etc/hosts", "/etc/cron.d", "/etc/sysctl.d", "/etc/ssh/sshd_config",
           "/etc/systemd/system/multi-user.target.wants", "/srv", "/home/alice",
           "/home/bob", "/home/nightly")  # fmt: skip
MADE = ("alice", "bob", "nightly", "ops", "devs")  # users and groups the scenarios make


def this_machine() -> dict[str, object]:
    """The paths and names the shipped balls' scenarios would change, if they reached it."""
    state: dict[str, object] = {}
    for path in map(Path, TOUCHED):
        if not path.exists():
            state[str(path)] = None
        else:
            state[str(path)] = tree_snapshot(path) if path.is_dir() else path.read_bytes()
    for db in ("passwd", "group"):
        names = {line.split(":")[0] for line in Path("/etc", db).read_text().splitlines()}
        state[db] = sorted(names & set(MADE))
    return state


def disco_test(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`disco test` run from `cwd`, as a ball's author runs it."""
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([str(BIN / "disco"), "test", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip


def statuses(document: dict[str, object]) -> dict[tuple[str, str, str], str]:
    checks = document["checks"]
    assert isinstance(checks, list)
    return {(c["suite"], c["group"], c["name"]): c["status"] for c in checks}


def test_every_shipped_ball_passes_every_check(tmp_path: Path) -> None:
    """`make test` runs this: every ball's scenarios, JUnit and JSON, on clones of /."""
    before = this_machine()
    report = tmp_path / "balls.xml"
    result = disco_test("--json", "--junit", str(report), cwd=BALLS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert this_machine() == before, "disco test changed this machine's root"
    document = json.loads(result.stdout)
    assert document["passed"] is True and document["counts"]["failed"] == 0
    found = statuses(document)
    balls = sorted(p.name for p in BALLS.iterdir() if (p / "tests").is_dir())
    assert balls == sorted(p.parent.name for p in BALLS.glob("*/README.md"))  # each has tests
    for ball in balls:
        for scenario in sorted(p.name for p in (BALLS / ball / "tests").iterdir()):
            got = [found[(ball, scenario, check)] for check in CHECKS]
            assert got[:4] + got[5:] == ["passed"] * 5, (ball, scenario, got)
    cases = ET.parse(report).getroot().findall("testsuite/testcase")
    assert len(cases) == len(found) == document["scenarios"] * len(CHECKS)
    assert {c.get("classname", "").split(".")[0] for c in cases} == set(balls)
    assert ("users.example", "rollback") in {(c.get("classname"), c.get("name")) for c in cases}


def test_a_ball_that_never_converges_fails_idempotence_with_its_diff(tmp_path: Path) -> None:
    fx.counter(tmp_path)
    result = disco_test("counter", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    failed = [x for x in lines if x.startswith("error: counter/once: idempotence: FAILED")]
    assert failed and "/etc/counter" in failed[0], result.stdout
    at = lines.index(failed[0])
    shown = "\n".join(lines[at : at + 6])
    assert "File: file: /etc/counter : Modified" in shown and "> run 2" in shown, shown
    for check in ("noop", "live", "noop-equals-live", "rollback"):
        assert f"info: counter/once: {check}: passed" in result.stdout, check


def test_noop_that_says_otherwise_than_live_fails_noop_equals_live(tmp_path: Path) -> None:
    fx.liar(tmp_path)
    result = disco_test(str(tmp_path / "liar"), "--json", cwd=Path("/"))
    assert result.returncode == 1
    document = json.loads(result.stdout)
    found = statuses(document)
    assert found[("liar", "plain", "noop-equals-live")] == "failed"
    assert found[("liar", "plain", "idempotence")] == "passed"
    check = next(c for c in document["checks"] if c["name"] == "noop-equals-live")
    assert "> said" in check["details"] and "> done" in check["details"], check["details"]


def test_volatile_paths_are_listed_apart_with_their_reason(tmp_path: Path) -> None:
    fx.stamped(tmp_path / "without", "")
    plain = disco_test("stamped", cwd=tmp_path / "without")
    assert plain.returncode == 1
    assert "idempotence: FAILED" in plain.stdout and "/var/lib/stamped/last-run" in plain.stdout
    fx.stamped(tmp_path / "with", "# the time of the last run\n/var/lib/stamped/*  # a clock\n")
    result = disco_test("stamped", cwd=tmp_path / "with")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/var/lib/stamped/last-run: volatile (a clock)" in result.stdout


def test_setup_runs_first_and_verify_passes_or_fails(tmp_path: Path) -> None:
    good = "#!/bin/bash\nset -e\ngrep -qx 'option = 1' /etc/liner.conf\n"
    good += "grep -qx 'option = 2' /etc/liner.conf\ngrep -qx delivered /etc/tests/kept\n"
    fx.liner(tmp_path / "good", good)
    result = disco_test("liner", "--json", cwd=tmp_path / "good")
    assert result.returncode == 0, result.stdout + result.stderr
    found = statuses(json.loads(result.stdout))
    assert set(found.values()) == {"passed"}, found
    bad = "#!/bin/bash\necho 'option 3 is missing' >&2\nexit 1\n"
    fx.liner(tmp_path / "bad", bad)
    result = disco_test("liner", cwd=tmp_path / "bad")
    assert result.returncode == 1
    assert "error: liner/on-a-file-of-setup: verify: FAILED" in result.stdout
    assert "option 3 is missing" in result.stdout
    assert "info: liner/on-a-file-of-setup: rollback: passed" in result.stdout


def test_a_failing_setup_skips_the_rest(tmp_path: Path) -> None:
    path = fx.liner(tmp_path, "#!/bin/bash\n")
    (path / "tests" / "on-a-file-of-setup" / "setup").write_text("#!/bin/bash\nexit 3\n")
    result = disco_test("liner", "--json", cwd=tmp_path)
    assert result.returncode == 1
    found = statuses(json.loads(result.stdout))
    assert found[("liner", "on-a-file-of-setup", "noop")] == "failed"
    assert {found[("liner", "on-a-file-of-setup", c)] for c in CHECKS[1:]} == {"skipped"}


def test_keep_leaves_the_scratch_root_and_says_where(tmp_path: Path) -> None:
    result = disco_test("motd", "--keep", "--json", cwd=BALLS)
    document = json.loads(result.stdout)
    kept = document["kept"]
    base = Path(kept["motd/example"]).parent.parent
    try:
        assert result.returncode == 0, result.stderr
        assert sorted(kept) == ["motd/default", "motd/example"]
        for root in kept.values():
            assert os.path.ismount(root) and Path(root, "usr/sbin/policy-rc.d").is_file()
        assert f"'umount -R {base} && rmdir {base}'" in result.stderr
    finally:
        subprocess.run(["umount", "-R", str(base)], check=False)
        os.rmdir(base)


def test_json_and_junit_carry_ball_scenario_and_check(tmp_path: Path) -> None:
    fx.counter(tmp_path)
    report = tmp_path / "out.xml"
    result = disco_test("counter", "--junit", str(report), cwd=tmp_path)
    assert result.returncode == 1
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and suite.get("name") == "counter"
    assert suite.get("tests") == "6" and suite.get("failures") == "1"
    assert suite.get("skipped") == "1"  # no verify script
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == CHECKS
    assert {c.get("classname") for c in cases.values()} == {"counter.once"}
    failure = cases["idempotence"].find("failure")
    assert failure is not None and "/etc/counter" in (failure.text or "")
