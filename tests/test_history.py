"""The kept dances: ids, the last 50, the undo logs' size cap, damaged entries. Built
with the history module itself in tmp_path; no dance runs here but in the last tests,
on a scratch root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import Run, assert_one_error
from disco.errors import DiscoError
from disco.live import history
from disco.tree.params import ParamStore
from test_dance_steps import dance, make_server


def entry(txn: Path, mode: str, log_bytes: int = 0) -> history.Kept:
    kept = history.begin(txn, mode, Path("/srv/root"), "node1")
    if log_bytes:
        saved = txn / "history" / kept.id / "commits/1/saved"
        saved.mkdir(parents=True)
        (saved / "0").write_bytes(os.urandom(log_bytes))
    return history.finish(txn, kept, 1, 0, 0)


def test_ids_count_up_and_each_line_says_what_the_dance_was(tmp_path: Path) -> None:
    first, second = entry(tmp_path, "live", 10), entry(tmp_path, "noop")
    third = entry(tmp_path, "live")  # it committed nothing
    assert (first.id, second.id, third.id) == ("1", "2", "3")
    kept = history.listing(tmp_path)
    undone = history.rolled_back(tmp_path, kept)
    lines = [history.line(tmp_path, k, undone) for k in kept]
    assert "live" in lines[0] and "/srv/root" in lines[0] and "1 change(s)" in lines[0]
    assert lines[0].endswith("rollback: yes") and lines[1].endswith("rollback: no")
    assert lines[2].endswith("rollback: no (nothing committed)")


def test_the_last_50_are_kept_and_noop_dances_never_push_out_a_live_one(tmp_path: Path) -> None:
    live = entry(tmp_path, "live")
    for _ in range(55):
        entry(tmp_path, "noop")
    said = history.prune(tmp_path, 1 << 30)
    ids = [k.id for k in history.listing(tmp_path)]
    assert ids[0] == live.id and len(ids) == 51
    assert len(said) == 5 and "dance 2 " in said[0] and "last 50" in said[0]


def test_undo_logs_above_max_mb_are_dropped_oldest_first_never_the_newest(
    tmp_path: Path,
) -> None:
    for _ in range(3):
        entry(tmp_path, "live", 600_000)
    said = history.prune(tmp_path, 1_000_000)
    assert len(said) == 2 and "dance 1 " in said[0] and "dance 2 " in said[1]
    assert "disco/client/history/max_mb" in said[0]
    pruned = [k.pruned for k in history.listing(tmp_path)]
    assert pruned == [True, True, False]
    assert history.prune(tmp_path, 0) == []  # the newest stays, whatever its size
    with pytest.raises(DiscoError, match="dance 2 cannot be rolled back: its undo log"):
        history.choose(tmp_path, Path("/srv/root"), "2")


@pytest.mark.parametrize("value", ["lots", "-3", "nan"])
def test_a_bad_max_mb_is_an_error_with_the_fix(tmp_path: Path, value: str) -> None:
    store = ParamStore(tmp_path)
    store.set(history.MAX_MB, value)
    with pytest.raises(DiscoError, match="max_mb is not a number") as e:
        history.max_bytes(store)
    assert "disco-param set disco/client/history/max_mb" in e.value.hint


def test_a_damaged_entry_is_an_error_naming_it(tmp_path: Path) -> None:
    entry(tmp_path, "live")
    (tmp_path / "history/1/dance.json").write_text("{")
    with pytest.raises(DiscoError, match="history/1/dance.json is damaged"):
        history.listing(tmp_path)


def test_a_dance_says_what_it_pruned(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-a.sh": "date +%N > /etc/x\n"}})
    assert cmd("disco-param", "set", "disco/client/history/max_mb", input="0\n").returncode == 0
    assert dance(cmd, server, scratch_root, noop=False).returncode == 0
    second = dance(cmd, server, scratch_root, noop=False)
    assert second.returncode == 0, second.stderr
    assert "info: the undo log of dance 1 (" in second.stdout
    listed = cmd("disco", "history").stdout.splitlines()
    assert listed[0].endswith("rollback: no (undo log pruned)")
    assert listed[1].endswith("rollback: yes")
    refused = cmd("disco", "rollback", "--root", str(scratch_root), "1")
    assert_one_error(refused, 1, "dance 1 cannot be rolled back", "max_mb")


def test_a_bad_max_mb_stops_a_dance_before_it_starts(
    cmd: Run, state: Path, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-a.sh": "echo x > /etc/x\n"}})
    assert cmd("disco-param", "set", "disco/client/history/max_mb", input="big\n").returncode == 0
    result = dance(cmd, server, scratch_root, noop=False)
    assert_one_error(result, 1, "disco/client/history/max_mb", "'big'")
    assert not (scratch_root / "etc/x").exists()
