"""What the host side of a NOOP package fetch remembers (issue 25, noop/fetch_memo.py):
apt's answer to the same request on unchanged inputs, and the files of the cache it
verified; each forgotten as soon as what it rests on changes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from disco.noop.fetch_memo import Verified, note, signature
from disco.noop.packages import Fetcher, Refused, Wanted, download, planned

SOURCE = "http://127.0.0.1:1/debs/"
SHA = hashlib.sha256(b"a package\n").hexdigest()


def scratch_root(where: Path) -> Path:
    """A root apt finds no package source in (no network needed: apt is never asked
    when the answer is remembered)."""
    for rel in ("etc/apt/sources.list.d", "var/lib/apt/lists/partial", "var/lib/dpkg",
                "var/cache/apt/archives/partial"):  # fmt: skip
        (where / rel).mkdir(parents=True)
    (where / "etc/apt/sources.list").write_text(f"deb [trusted=yes] {SOURCE} ./\n")
    (where / "var/lib/dpkg/status").write_text("")
    return where


def fetcher(tmp_path: Path) -> Fetcher:
    root = scratch_root(tmp_path / "root")
    return Fetcher(root, tmp_path / "state/cache/debs", tmp_path / "log")


def remember(f: Fetcher, args: list[str]) -> None:
    answer = {"sources": [SOURCE], "wanted": [[f"{SOURCE}a_1_all.deb", "a_1_all.deb", 10, SHA]]}
    note(f.cache.parent / "apt" / "answers", signature(f.root, args), answer)


def test_the_same_request_on_the_same_root_gets_the_remembered_answer(tmp_path: Path) -> None:
    f = fetcher(tmp_path)
    args = ["install", "a"]
    with pytest.raises(Refused, match="no package source"):  # apt: no lists, no sources
        planned(f, args, {SOURCE})
    remember(f, args)
    assert planned(f, args, {SOURCE}) == [Wanted(f"{SOURCE}a_1_all.deb", "a_1_all.deb", 10, SHA)]
    # Still only under a source the step's view configures too.
    with pytest.raises(Refused, match="no package source"):
        planned(f, args, {"http://elsewhere/"})
    # Another request, or any input of apt's changed: apt is asked again.
    with pytest.raises(Refused):
        planned(f, ["install", "b"], {SOURCE})
    (f.root / "var/lib/apt/lists/127.0.0.1:1_debs_._Packages").write_text("")
    with pytest.raises(Refused, match="apt-get cannot plan it: E: Unable to locate package a"):
        planned(f, args, {SOURCE})


@pytest.mark.parametrize(
    "change",
    ["etc/apt/sources.list", "etc/apt/sources.list.d/x.list", "var/lib/dpkg/status",
     "var/cache/apt/archives/a_1_all.deb", "etc/apt/preferences.d/pin"],
)  # fmt: skip
def test_the_key_changes_with_each_input_of_apt_s(tmp_path: Path, change: str) -> None:
    root = scratch_root(tmp_path / "root")
    before = signature(root, ["install", "a"])
    assert signature(root, ["install", "a"]) == before
    path = root / change
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("x")
    assert signature(root, ["install", "a"]) != before


def test_a_cached_file_is_hashed_again_once_anything_wrote_it(tmp_path: Path) -> None:
    f = fetcher(tmp_path)
    f.cache.mkdir(parents=True)
    deb = f.cache / "a_1_all.deb"
    deb.write_bytes(b"a package\n")
    want = Wanted(f"{SOURCE}a_1_all.deb", "a_1_all.deb", 10, SHA)
    assert download(f, [want]) == (0, 0)  # there, and verified: nothing fetched
    verified = Verified(f.cache.parent / "apt" / "verified.json")
    assert verified.knows(deb.name, deb.stat(), SHA)
    # Rewritten with other bytes of the same size and its mtime put back: its ctime
    # tells, it is hashed, found wrong and fetched again (here: refused, no server).
    st = deb.stat()
    deb.write_bytes(b"b package\n")
    os.utime(deb, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not verified.knows(deb.name, deb.stat(), SHA)
    with pytest.raises(Refused, match="cannot fetch"):
        download(f, [want])
