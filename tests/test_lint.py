"""disco lint: a server tree checked without root, every problem of every kind in one run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import BIN, Run, assert_one_error, disco_as_nobody

BAD_SCRIPT = "#!/bin/bash\nfor f in $(ls /etc); do echo $f; done\nif [ $x = 1 ] then echo; fi\n"
READS = """#!/bin/bash
port=$(disco-param get "$DISCO_NODE/parameters/app/port")
name=$(disco-param get "$(hostname)"/parameters/app/name)
opt=$(disco-param get "$DISCO_NODE/parameters/app/optional" || echo none)
echo "$port $name $opt $(disco-param get "$DISCO_NODE/current_module")"
"""


def lint(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run([str(BIN / "disco"), "lint", *args], capture_output=True, text=True,
                          env=full, check=False)  # fmt: skip


def test_the_shipped_balls_lint_clean_without_root(cmd: Run, tmp_path: Path) -> None:
    world = Path("/tmp") / f"disco-lint-{os.getpid()}"
    try:
        world.mkdir(mode=0o755)
        srv = world / "srv"
        result = cmd("disco-server", "init", str(srv), "--with-balls", "--config", str(world / "c"))
        assert result.returncode == 0, result.stderr
        subprocess.run(["chown", "-R", "root:root", str(srv)], check=True)
        argv = [*disco_as_nobody(world), "lint", str(srv), "--json"]
        said = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        assert said.returncode == 0, said.stdout + said.stderr
        document = json.loads(said.stdout)
        assert document["passed"] is True
        names = {(c["group"], c["name"]) for c in document["checks"]}
        assert ("shellcheck", "users/scripts/10-users.sh") in names
        assert ("shellcheck", "motd/templates/etc/motd") in names
    finally:
        shutil.rmtree(world, ignore_errors=True)


def module(srv: Path, name: str, requires: str = "", script: str | None = None) -> Path:
    path = srv / "modules" / name
    (path / "scripts").mkdir(parents=True)
    if requires:
        (path / "requires").write_text(requires)
    if script is not None:
        (path / "scripts" / "10-run.sh").write_text(script)
    return path


def node(srv: Path, name: str, modules: list[str], params: dict[str, str]) -> None:
    top = srv / "parameters" / name
    (top / "modules").mkdir(parents=True)
    (top / "parameters").mkdir()
    for m in modules:
        (top / "modules" / m).touch()
    for rel, value in params.items():
        (top / "parameters" / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / "parameters" / rel).write_text(value + "\n")


def bad_tree(srv: Path) -> None:
    module(srv, "a", "b\n")
    module(srv, "b", "a\n")
    module(srv, "c", "after d\n")
    module(srv, "d", "c\nghost\n")
    module(srv, "shelly", script=BAD_SCRIPT)
    app = module(srv, "app", script=READS)
    (app / "parameters" / "app").mkdir(parents=True)
    (app / "parameters" / "app" / "name").write_text("app\n")
    module(srv, "-dash")
    (srv / "modules" / "stray").write_text("not a module\n")
    files = module(srv, "files") / "files"
    (files / "etc").mkdir(parents=True)
    (files / "etc" / "secret").write_text("x\n")
    os.chmod(files / "etc" / "secret", 0)
    (files / "etc" / "theirs").write_text("x\n")
    os.chown(files / "etc" / "theirs", 1000, 1000)
    os.mkfifo(files / "etc" / "pipe")
    (files / "proc").mkdir()
    node(srv, "good.example", ["app", "files"], {"app/port": "80"})
    node(srv, "bare.example", ["app", "vanished"], {})
    (srv / "parameters" / "bad name").mkdir()


def test_every_problem_of_a_tree_in_one_run(tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    bad_tree(srv)
    report = tmp_path / "lint.xml"
    result = lint(str(srv), "--json", "--junit", str(report))
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    failed = {(c["group"], c["name"]): c for c in document["checks"] if c["status"] == "failed"}
    assert set(failed) == {
        ("names", "module -dash"),
        ("names", "module stray"),
        ("names", "node bad name"),
        ("requires", "missing ghost"),
        ("requires", "missing vanished"),
        ("requires", "cycle a b"),
        ("requires", "cycle c d"),
        ("shellcheck", "shelly/scripts/10-run.sh"),
        ("parameters", "node bare.example"),
        ("files", "files"),
    }, sorted(failed)
    assert "named by module d (requires line 2)" in failed[("requires", "missing ghost")]["message"]
    assert "node bare.example" in failed[("requires", "missing vanished")]["message"]
    assert "a -> b -> a" in failed[("requires", "cycle a b")]["message"]
    shell = failed[("shellcheck", "shelly/scripts/10-run.sh")]["details"]
    assert "SC2045" in shell and "SC1010" in shell or "SC1049" in shell, shell
    missing = failed[("parameters", "node bare.example")]["details"].splitlines()
    assert missing == ["app/scripts/10-run.sh:2: disco-param get NODE/parameters/app/port"]
    problems = failed[("files", "files")]["details"]
    for expected in ("/etc/secret: mode 0o0", "/etc/theirs: owned by 1000:1000",
                     "/etc/pipe: a special file", "/proc: under /proc"):  # fmt: skip
        assert expected in problems, problems
    assert "node good.example" not in {n for g, n in failed if g == "parameters"}
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and suite.get("name") == "lint"
    assert suite.get("failures") == str(len(failed))
    assert {c.get("classname") for c in suite.iter("testcase")} >= {"lint.requires", "lint.files"}


def test_without_shellcheck_scripts_are_skipped_with_a_note(tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    module(srv, "shelly", script=BAD_SCRIPT)
    empty = tmp_path / "bin"
    empty.mkdir()
    result = lint(str(srv), env={"PATH": str(empty)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: shellcheck is not installed: 1 script(s)" in result.stdout
    assert "info: lint/shellcheck: shelly/scripts/10-run.sh: skipped" in result.stdout


def test_not_a_server_tree(tmp_path: Path) -> None:
    assert_one_error(lint(str(tmp_path)), 2, str(tmp_path), "no modules/ and no parameters/")


def test_junit_into_a_missing_directory(tmp_path: Path) -> None:
    module(tmp_path / "srv", "m")
    result = lint(str(tmp_path / "srv"), "--junit", str(tmp_path / "no" / "lint.xml"))
    assert_one_error(result, 2, "--junit", str(tmp_path / "no"))
