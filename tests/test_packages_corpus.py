"""NOOP = live on package installs, measured (issue 25, DESIGN §14, §17).

Every package of the corpus (Makefile CORPUS: none installed here, each with maintainer
scripts that add users, alternatives, shells, file capabilities, diversions, units and
triggers) is installed with one `apt-get install`, NOOP on one clone of this machine and
live (`--effects run`) on an identical one, side by side, from a repository served on
loopback. Every change record must be equal, but for the paths that carry the time of the
run (packages_env.TIMED, each with why): there the record must be there in both, only its
md5 may differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import refuse_live_dance_on_this_machine
from packages_env import (
    TIMED,
    by_package,
    compare,
    corpus,
    dance,
    install_script,
    make_server,
    owners,
    records,
)


def test_noop_installs_of_the_corpus_match_live_record_for_record(tmp_path: Path) -> None:
    packages = corpus()
    if not packages:
        pytest.skip("no package corpus: run `make test-debs` (the install step of make test)")
    assert len(packages) >= 30
    server = make_server(tmp_path / "srv", install_script(packages))
    for flag in ("--noop", ""):  # the live dance targets its clone only
        argv = ("disco", "dance", *([flag] if flag else []), "--root", str(tmp_path / "t/x"))
        refuse_live_dance_on_this_machine(argv, {})
    out = dance(tmp_path, server, ["noop:--noop", "&", "live:--effects+run"])
    noop, live = records(out / "noop.json"), records(out / "live.json")
    said = (out / "noop.out").read_text()
    assert "Would execute : apt-get" not in said, said[-3000:]
    assert len(live) > 1000, (out / "live.out").read_text()[-3000:]
    own = owners(out / "live.owners")
    installed = {own.get(p) for p in live}
    missing = [p for p in packages if p not in installed]
    assert not missing, f"not installed live: {missing}"
    mismatches, relaxed = compare(noop, live)
    grouped = by_package(sorted(set(noop) | set(live)), own)
    bad = set(mismatches)
    print(f"packages corpus: {len(packages)} packages asked, {len(grouped)} owners of records")
    for package, paths in sorted(grouped.items()):
        equal = sum(1 for p in paths if p not in bad)
        print(f"  {package}: {equal} of {len(paths)} records equal")
    total = len(set(noop) | set(live))
    print(f"total: {total - len(bad)} of {total} records equal")
    for path in relaxed:
        print(f"equal but for the md5: {path} ({TIMED[path]})")
    caps = [p for p in live if "security.capability=" in live[p]]
    print("file capabilities:", " ".join(caps))
    for path in mismatches:
        print(f"mismatch {path}\n  NOOP: {noop.get(path)}\n  live: {live.get(path)}")
    assert not mismatches, "\n".join(mismatches)
