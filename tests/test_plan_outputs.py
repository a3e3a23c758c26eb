"""The outputs of `disco plan`: JUnit read by a real consumer (junitparser), the Markdown
summary under 60,000 characters saying what it left out, the HTML page, and
--no-content everywhere, every flag in one call (DESIGN §15)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from junitparser import Failure, JUnitXml

from conftest import Run
from plans import BASE, NODE, Spec, make_server, plan

MARK = "content-only-the-diff-shows"


def head_spec() -> Spec:
    spec: Spec = json.loads(json.dumps(BASE))
    spec["alpha"]["files/etc/alpha.conf"] = f"alpha {MARK}\n"
    spec["omega"] = {"scripts/10-fail": "#!/bin/bash\nexit 3\n"}
    return spec


def every_output(
    cmd: Run, state: Path, tmp_path: Path, root: Path, *flags: str
) -> tuple[Path, Path, dict[str, Path], subprocess.CompletedProcess[str]]:
    """A plan of BASE against head_spec() with --json and every output file in one call."""
    base = make_server(tmp_path / "base", BASE)
    head = make_server(tmp_path / "head", head_spec())
    files = {name: tmp_path / f"plan.{name}" for name in ("xml", "md", "html", "out")}
    result = plan(cmd, state, root, base, head, "--json", "--junit", str(files["xml"]),
                  "--markdown", str(files["md"]), "--html", str(files["html"]),
                  "--out", str(files["out"]), *flags)  # fmt: skip
    return base, head, files, result


def test_every_output_in_one_call(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    base, head, files, result = every_output(cmd, state, tmp_path, scratch_root,
                                             "--detailed-exitcodes")  # fmt: skip
    assert result.returncode == 6, result.stderr
    document = json.loads(result.stdout)  # stdout holds the document alone
    assert MARK in json.dumps(document)
    # JUnit, as a consumer reads it: a suite for the node, a case per module of head.
    xml = JUnitXml.fromfile(str(files["xml"]))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    props = {p.name: p.value for p in suite.properties()}  # type: ignore[no-untyped-call]
    assert props["node"] == NODE
    assert props["base"].startswith(str(base)) and props["head"].startswith(str(head))
    assert props["head"].endswith(document["head"]["hash"])
    cases = {case.name: case for case in suite}
    assert set(cases) == {"alpha", "beta", "gamma", "omega"}
    assert all(case.classname == NODE for case in cases.values())
    assert [type(r) for r in cases["omega"].result] == [Failure]
    assert "fails in head" in cases["omega"].result[0].message
    assert all(not cases[m].result for m in ("alpha", "beta", "gamma"))
    assert suite.tests == 4 and suite.failures == 1
    assert "/etc/alpha.conf changed" in (cases["alpha"].system_out or "")
    # Markdown and HTML show the diff; the saved plan never does.
    md = files["md"].read_text()
    assert "| `/etc/alpha.conf` | changed | content | -1 +1 | alpha: fetch |" in md
    assert MARK in md and ":x: module `omega` fails in head" in md
    page = files["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h3>Delta</h3>" in page and MARK in page
    assert MARK not in files["out"].read_text()


def test_no_content_leaves_every_diff_out(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    _, _, files, result = every_output(cmd, state, tmp_path, scratch_root, "--no-content")
    assert result.returncode == 1, result.stderr  # without detailed exit codes: head fails
    assert MARK not in result.stdout
    document = json.loads(result.stdout)
    entry = next(e for e in document["delta"] if e["path"] == "/etc/alpha.conf")
    assert "diff" not in entry and entry["summary"] == "-1 +1" and entry["what"] == ["content"]
    assert all("diff" not in c for c in document["drift"])
    for path in files.values():
        text = path.read_text()
        assert MARK not in text and "alpha 1" not in text, path
        assert "/etc/alpha.conf" in text, path


def test_the_markdown_summary_stays_under_60000_characters_and_says_what_it_left_out(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    base = make_server(tmp_path / "base", BASE)
    spec = head_spec()
    for n in range(8):  # 8 diffs of 1,500 lines: ~200,000 characters of diff
        spec["alpha"][f"files/etc/big/{n}.conf"] = "".join(
            f"line {i} of {n}\n" for i in range(1500)
        )
    head = make_server(tmp_path / "head", spec)
    md, js = tmp_path / "plan.md", tmp_path / "plan.json"
    result = plan(cmd, state, scratch_root, base, head, "--markdown", str(md), "--json")
    js.write_text(result.stdout)
    text = md.read_text()
    assert len(text) < 60000
    assert "Left out to stay under 60,000 characters" in text
    assert "/etc/big/7.conf" in text  # in the table, if not among the diffs
    assert len(json.loads(js.read_text())["delta"]) == 10  # all: alpha.conf, big/ and its 8
