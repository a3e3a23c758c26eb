"""Step metrics and `disco report` (DESIGN §9): measuring, storage, the seed's format."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from disco.cli.common import add_state_dir, parser
from disco.cli.report import add_parser, run
from disco.engine.sandbox import Usage
from disco.errors import DiscoError
from disco.report.metrics import (
    FORMAT,
    DanceReport,
    Meter,
    Record,
    load_last,
    report_json,
    report_lines,
    save,
    to_data,
)
from disco.report.page import report_html

ZERO = Usage(0.0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def rec(
    module: str,
    step: str,
    item: str | None,
    wall: float,
    user: float,
    sys_: float,
    mem: int,
    major: int,
    minor: int,
    fsin: int,
    fsout: int,
    exit: int = 0,
) -> Record:
    usage = dataclasses.replace(
        ZERO, utime=user, stime=sys_, maxrss=mem, majflt=major, minflt=minor
    )
    usage = dataclasses.replace(usage, inblock=fsin, oublock=fsout)
    return Record(module, step, item, wall, usage, exit)


STOP, STUFF = "10-service_stop.sh", "etc/othermodule/stuff.cfg"

# The seed's `disco report` run, recorded in the order the steps ran (not the printed order).
SEED_RECORDS = (
    rec("_internal", "fetch_params", None, 1.26, 0.02, 0.08, 11136, 0, 1728, 0, 0),
    rec("testmodule-1.0", "fetch", None, 2.72, 0.06, 0.15, 11152, 0, 2996, 0, 24),
    rec("othermodule-3.2", "fetch", None, 2.28, 0.05, 0.14, 11152, 0, 2843, 0, 24),
    rec("testmodule-1.0", "exec", "00-hello.sh", 0.27, 0.03, 0.18, 4672, 32, 3783, 6640, 8),
    rec("testmodule-1.0", "exec", STOP, 0.58, 0.03, 0.41, 4960, 122, 5462, 25656, 8, 1),
    rec("othermodule-3.2", "template", STUFF, 0.56, 0.04, 0.37, 4592, 122, 4885, 25536, 16),
    rec("testmodule-1.0", "diff", None, 2.56, 0.42, 2.10, 5184, 0, 57661, 0, 32),
    rec("othermodule-3.2", "diff", None, 0.80, 0.13, 0.65, 4816, 0, 16448, 0, 8),
    rec("_internal", "diff", None, 0.82, 0.14, 0.66, 5184, 0, 18218, 0, 8),
)  # fmt: skip

# The seed's output, byte for byte: its blocks, sorted there, come in dance order here.
SEED_SORTED = """\
report: _internal: diff
report:    time_real 0.82 : time_user 0.14 : time_sys 0.66
report:    mem_avg 0 : mem_max 5184 : mem_faults_major 0 : mem_faults_minor 18218
report:    io_fsin 0 : io_fsout 8 : io_sockin 0 : io_sockout 0 : io_signals 0
report:    exit: 0
report: _internal: fetch_params
report:    time_real 1.26 : time_user 0.02 : time_sys 0.08
report:    mem_avg 0 : mem_max 11136 : mem_faults_major 0 : mem_faults_minor 1728
report:    io_fsin 0 : io_fsout 0 : io_sockin 0 : io_sockout 0 : io_signals 0
report:    exit: 0
report: othermodule-3.2: diff
report:    time_real 0.80 : time_user 0.13 : time_sys 0.65
report:    mem_avg 0 : mem_max 4816 : mem_faults_major 0 : mem_faults_minor 16448
report:    io_fsin 0 : io_fsout 8 : io_sockin 0 : io_sockout 0 : io_signals 0
report:    exit: 0
report: othermodule-3.2: fetch
report:    time_real 2.28 : time_user 0.05 : time_sys 0.14
report:    mem_avg 0 : mem_max 11152 : mem_faults_major 0 : mem_faults_minor 2843
report:    io_fsin 0 : io_fsout 24 : io_sockin 0 : io_sockout 0 : io_signals 0
report:    exit: 0
report: othermodule-3.2: template
report:    etc/othermodule/stuff.cfg :
report:        time_real 0.56 : time_user 0.04 : time_sys 0.37
report:        mem_avg 0 : mem_max 4592 : mem_faults_major 122 : mem_faults_minor 4885
report:        io_fsin 25536 : io_fsout 16 : io_sockin 0 : io_sockout 0 : io_signals 0
report:        exit: 0
report: testmodule-1.0: diff
report:    time_real 2.56 : time_user 0.42 : time_sys 2.10
report:    mem_avg 0 : mem_max 5184 : mem_faults_major 0 : mem_faults_minor 57661
report:    io_fsin 0 : io_fsout 32 : io_sockin 0 : io_sockout 0 : io_signals 0
report:    exit: 0
report: testmodule-1.0: exec
report:    00-hello.sh :
report:        time_real 0.27 : time_user 0.03 : time_sys 0.18
report:        mem_avg 0 : mem_max 4672 : mem_faults_major 32 : mem_faults_minor 3783
report:        io_fsin 6640 : io_fsout 8 : io_sockin 0 : io_sockout 0 : io_signals 0
report:        exit: 0
report:    10-service_stop.sh :
report:        time_real 0.58 : time_user 0.03 : time_sys 0.41
report:        mem_avg 0 : mem_max 4960 : mem_faults_major 122 : mem_faults_minor 5462
report:        io_fsin 25656 : io_fsout 8 : io_sockin 0 : io_sockout 0 : io_signals 0
report:        exit: 1
report: testmodule-1.0: fetch
report:    time_real 2.72 : time_user 0.06 : time_sys 0.15
report:    mem_avg 0 : mem_max 11152 : mem_faults_major 0 : mem_faults_minor 2996
report:    io_fsin 0 : io_fsout 24 : io_sockin 0 : io_sockout 0 : io_signals 0
report:    exit: 0
"""


def blocks(text: str) -> dict[str, str]:
    """A report's blocks by their head line ("report: m: step")."""
    found: dict[str, str] = {}
    head = ""
    for line in text.splitlines(keepends=True):
        if not line.startswith("report:    "):
            head = line.strip()
        found[head] = found.get(head, "") + line
    return found


DANCE_ORDER = (
    "_internal: fetch_params",
    "testmodule-1.0: fetch",
    "othermodule-3.2: fetch",
    "testmodule-1.0: exec",
    "othermodule-3.2: template",
    "testmodule-1.0: diff",
    "othermodule-3.2: diff",
    "_internal: diff",
)
SEED_REPORT = "".join(blocks(SEED_SORTED)[f"report: {head}"] for head in DANCE_ORDER)
assert sorted(SEED_REPORT.splitlines()) == sorted(SEED_SORTED.splitlines())

CHANGE = {
    "module": "testmodule-1.0",
    "step": "exec",
    "path": "/etc/caf\udce9",  # a file name that is not UTF-8
    "kind": "modified",
    "header": "M /etc/caf\udce9",
}


def seed_report(started: str = "2024-05-01T12:00:00.000000Z") -> DanceReport:
    return DanceReport(started, "disco", "noop", "/", 1, SEED_RECORDS, (CHANGE,))


def body(report: list[str]) -> str:
    return "".join(f"report: {line}\n" for line in report)


# -- measuring ------------------------------------------------------------------------------


def test_measure_times_a_child_and_counts_its_usage() -> None:
    meter = Meter()
    with meter.measure("testmodule-1.0", "exec", "00-hello.sh"):
        subprocess.run(["sleep", "0.05"], check=True)
    (record,) = meter.records
    assert (record.module, record.step, record.item, record.exit) == (
        "testmodule-1.0",
        "exec",
        "00-hello.sh",
        0,
    )
    assert record.wall >= 0.05
    # Forking and exec'ing sleep costs page faults, in disco or in the reaped child.
    assert record.usage.minflt > 0
    assert record.usage.maxrss > 0
    assert record.usage.utime >= 0 and record.usage.stime >= 0


def test_measure_counts_the_children_reaped_inside_the_block() -> None:
    meter = Meter()
    with meter.measure("m", "busy"):
        code = "x = 0\nfor i in range(3_000_000): x += i"
        subprocess.run([sys.executable, "-c", code], check=True)
    with meter.measure("m", "idle"):
        pass
    busy, idle = meter.records
    # The child's CPU time shows, although disco itself only waited.
    assert busy.usage.utime + busy.usage.stime >= 0.05
    assert idle.usage.utime + idle.usage.stime < 0.05


def test_measure_records_the_exit_the_block_sets() -> None:
    meter = Meter()
    with meter.measure("m", "exec", "10-service_stop.sh") as probe:
        probe.exit = 3
    assert meter.records[0].exit == 3


def test_an_exception_records_exit_1_and_goes_on() -> None:
    meter = Meter()
    with pytest.raises(RuntimeError), meter.measure("m", "template", "etc/x"):
        raise RuntimeError("boom")
    assert [(r.step, r.item, r.exit) for r in meter.records] == [("template", "etc/x", 1)]


def test_add_keeps_run_order() -> None:
    meter = Meter()
    with meter.measure("_internal", "fetch_params"):
        pass
    meter.add(SEED_RECORDS[3])
    assert [r.step for r in meter.records] == ["fetch_params", "exec"]


# -- storage --------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    report = seed_report()
    last = save(tmp_path / "reports", report)
    assert last == tmp_path / "reports" / "last.json"
    assert load_last(tmp_path / "reports") == report
    history = list((tmp_path / "reports" / "history").iterdir())
    assert [p.name for p in history] == [f"{report.started}-{os.getpid()}.json"]
    assert json.loads(history[0].read_text()) == json.loads(last.read_text())


def test_report_data_is_what_asdict_gives() -> None:
    report = dataclasses.replace(seed_report(), would_execute=({"module": "m", "command": "x"},))
    expected = {"format": FORMAT, **dataclasses.asdict(report)}
    assert json.dumps(to_data(report), sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_the_saved_report_is_its_data_as_compact_json(tmp_path: Path) -> None:
    """Written a record at a time, it is still the one JSON text of the whole report."""
    report = dataclasses.replace(seed_report(), would_execute=({"module": "m", "command": "x"},))
    last = save(tmp_path, report)
    text = json.dumps(to_data(report), sort_keys=True, separators=(",", ":")) + "\n"
    assert last.read_text() == text
    history = next((tmp_path / "history").iterdir())
    assert history.stat().st_ino == last.stat().st_ino  # one file, two names


def test_history_keeps_the_newest_50(tmp_path: Path) -> None:
    for n in range(55):
        save(tmp_path, seed_report(f"2024-05-01T12:00:{n:02d}.000000Z"))
    names = sorted(p.name for p in (tmp_path / "history").iterdir())
    assert len(names) == 50
    assert names[0].startswith("2024-05-01T12:00:05.") and names[-1].startswith(
        "2024-05-01T12:00:54."
    )
    assert load_last(tmp_path).started == "2024-05-01T12:00:54.000000Z"


def test_last_json_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(tmp_path, seed_report("2024-05-01T12:00:00.000000Z"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history", "last.json"]
    before = (tmp_path / "last.json").read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save(tmp_path, seed_report("2024-05-01T13:00:00.000000Z"))
    # The old report is whole, and no temporary file is left beside it.
    assert (tmp_path / "last.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history", "last.json"]
    assert all(not p.name.startswith(".") for p in (tmp_path / "history").iterdir())


def test_no_report_yet(tmp_path: Path) -> None:
    with pytest.raises(DiscoError) as e:
        load_last(tmp_path / "reports")
    assert "last.json" in e.value.message and "disco dance" in e.value.hint


@pytest.mark.parametrize(
    "text", ["{not json", "[]", '{"format": 1}', '{"format": 99}', "\xff", "null"]
)
def test_a_damaged_report_is_an_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "last.json").write_text(text, encoding="latin-1")
    with pytest.raises(DiscoError) as e:
        load_last(tmp_path)
    assert "last.json" in e.value.message and "disco dance" in e.value.hint


def test_a_record_with_a_wrong_type_is_damage(tmp_path: Path) -> None:
    data = json.loads(report_json(seed_report()))
    data["records"][0]["usage"]["maxrss"] = "11136"
    (tmp_path / "last.json").write_text(json.dumps(data))
    with pytest.raises(DiscoError, match="damaged"):
        load_last(tmp_path)


# -- the seed's format ----------------------------------------------------------------------


def test_report_lines_are_the_seeds() -> None:
    assert body(report_lines(seed_report())) == SEED_REPORT


def test_report_of_one_module() -> None:
    assert (
        body(report_lines(seed_report(), "othermodule-3.2"))
        == """\
report: othermodule-3.2: fetch
report:    time_real 2.28 : time_user 0.05 : time_sys 0.14
report:    mem_avg 0 : mem_max 11152 : mem_faults_major 0 : mem_faults_minor 2843
report:    io_fsin 0 : io_fsout 24 : io_sockin 0 : io_sockout 0 : io_signals 0
report:    exit: 0
report: othermodule-3.2: template
report:    etc/othermodule/stuff.cfg :
report:        time_real 0.56 : time_user 0.04 : time_sys 0.37
report:        mem_avg 0 : mem_max 4592 : mem_faults_major 122 : mem_faults_minor 4885
report:        io_fsin 25536 : io_fsout 16 : io_sockin 0 : io_sockout 0 : io_signals 0
report:        exit: 0
report: othermodule-3.2: diff
report:    time_real 0.80 : time_user 0.13 : time_sys 0.65
report:    mem_avg 0 : mem_max 4816 : mem_faults_major 0 : mem_faults_minor 16448
report:    io_fsin 0 : io_fsout 8 : io_sockin 0 : io_sockout 0 : io_signals 0
report:    exit: 0
"""
    )


def test_a_whole_step_record_comes_before_its_items() -> None:
    records = (
        rec("m", "exec", "b.sh", 0.1, 0, 0, 1, 0, 0, 0, 0),
        rec("m", "exec", "a.sh", 0.2, 0, 0, 1, 0, 0, 0, 0),
        rec("m", "exec", None, 0.3, 0, 0, 1, 0, 0, 0, 0),
    )
    report = dataclasses.replace(seed_report(), records=records)
    heads = [line for line in report_lines(report) if "time_real" not in line]
    assert [h for h in heads if not h.strip().startswith(("mem_", "io_", "exit"))] == [
        "m: exec",
        "   b.sh :",
        "   a.sh :",
    ]
    assert report_lines(report)[1] == "   time_real 0.30 : time_user 0.00 : time_sys 0.00"


def test_report_lines_keep_dance_order_when_a_step_kind_comes_again() -> None:
    """A live module: each step's diff and commit come after it, before the next step."""
    steps = [("fetch", None), ("diff", "fetch"), ("commit", "fetch"), ("exec", "10-a.sh"),
             ("diff", "10-a.sh"), ("commit", "10-a.sh"), ("exec", "20-b.sh"),
             ("diff", "20-b.sh")]  # fmt: skip
    records = tuple(rec("m", step, item, 0.1, 0, 0, 1, 0, 0, 0, 0) for step, item in steps)
    report = dataclasses.replace(seed_report(), records=records)
    heads = [line for line in report_lines(report) if not line.startswith("   ")]
    assert heads == ["m: fetch", "m: diff", "m: commit", "m: exec", "m: diff", "m: commit",
                     "m: exec", "m: diff"]  # fmt: skip
    items = [line.strip() for line in report_lines(report) if line.endswith(" :")]
    assert items == [f"{item} :" for _, item in steps[1:]]


def test_html_says_what_a_detailed_exit_status_means() -> None:
    """--detailed-exitcodes: 2 is changes (not red), 4 and 6 are failures."""
    for status, detailed, kind, words in [
        (2, True, "ok", "2 (changes)"),
        (0, True, "ok", "0 (no changes)"),
        (4, True, "bad", "4 (failures)"),
        (6, True, "bad", "6 (changes and failures)"),
        (2, False, "bad", "2 (failed)"),
        (1, False, "bad", "1 (failures)"),
        (130, False, "bad", "130 (interrupted)"),
    ]:
        report = dataclasses.replace(seed_report(), exit=status, detailed_exitcodes=detailed)
        assert f'<li class="{kind}"><b>{words}</b>exit</li>' in report_html(report)


def test_an_unknown_module_names_the_known_ones() -> None:
    with pytest.raises(DiscoError) as e:
        report_lines(seed_report(), "nosuchmodule")
    assert "nosuchmodule" in e.value.message
    assert e.value.hint == "modules in it: _internal, othermodule-3.2, testmodule-1.0"


def test_json_is_valid_and_round_trips(tmp_path: Path) -> None:
    data = json.loads(report_json(seed_report()))
    assert data["node"] == "disco" and len(data["records"]) == len(SEED_RECORDS)
    (tmp_path / "last.json").write_text(report_json(seed_report()))
    assert load_last(tmp_path) == seed_report()


def test_json_of_one_module_keeps_its_records_and_changes() -> None:
    data = json.loads(report_json(seed_report(), "othermodule-3.2"))
    assert {r["module"] for r in data["records"]} == {"othermodule-3.2"}
    assert data["changes"] == []
    with pytest.raises(DiscoError, match="nosuchmodule"):
        report_json(seed_report(), "nosuchmodule")


def test_html_has_a_bar_per_record_on_a_time_axis() -> None:
    page = report_html(seed_report())
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert page.count('<div class="bar" style="left:') == len(SEED_RECORDS)
    # The seed's records carry no start: laid end to end, the first starts at 0 and the
    # last ends at the right edge.
    assert 'style="left:0.000%;' in page
    assert page.count('class="row failed"') == 1  # 10-service_stop.sh exited 1


def test_html_places_each_step_where_it_started() -> None:
    usage = SEED_RECORDS[0].usage
    records = (
        Record("_internal", "fetch_params", None, 1.0, usage, 0, 0.0),
        Record("m", "exec", "a.sh", 2.0, usage, 0, 2.0),
        Record("m", "exec", "b.sh", 1.0, usage, 3, 3.0),
    )
    change = {**CHANGE, "diff": "0a1\n> <new>"}
    page = report_html(dataclasses.replace(seed_report(), records=records, changes=(change,)))
    assert 'style="left:50.000%;width:50.000%"' in page  # a.sh: from 2 s to 4 s of 4
    assert 'style="left:75.000%;width:25.000%"' in page
    assert "<b>4.00 s</b>wall time" in page and "<b>1</b>failed steps" in page
    assert "<details><summary" in page and "&gt; &lt;new&gt;" in page  # the diff, folded


# -- disco report ---------------------------------------------------------------------------


def cli(state: Path, *argv: str) -> int:
    p = parser("disco", "test", "")
    add_state_dir(p)
    add_parser(p.add_subparsers(dest="command", required=True))
    return run(p.parse_args(["--state-dir", str(state), "report", *argv]))


def test_disco_report_prints_the_last_dance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save(tmp_path / "reports", seed_report())
    assert cli(tmp_path) == 0
    assert capsys.readouterr().out == SEED_REPORT
    assert cli(tmp_path, "--json", "_internal") == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in data["records"]] == ["fetch_params", "diff"]
    assert cli(tmp_path, "--html", str(tmp_path / "r.html")) == 0
    assert "wrote" in capsys.readouterr().out
    assert "etc/othermodule/stuff.cfg" in (tmp_path / "r.html").read_text(errors="replace")


def test_disco_report_without_a_dance(tmp_path: Path) -> None:
    code = (
        "import sys; from disco.cli.common import execute; from disco.cli.report import run;"
        "import argparse; sys.exit(execute(lambda: argparse.Namespace(state_dir=sys.argv[1],"
        " debug=False, module=None, json=False, html=None), run))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: no report yet: ")
    assert "run 'disco dance' first" in result.stderr


def test_the_help_has_an_example() -> None:
    p = argparse.ArgumentParser()
    s = add_parser(p.add_subparsers())  # type: ignore[arg-type]
    assert "disco report testmodule-1.0" in s.format_help()
