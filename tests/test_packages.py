"""Packages in NOOP (issue 25, DESIGN §17): `apt-get install` in a NOOP step runs for real
in the sandbox, with the packages fetched on the host side into disco's cache; the report
says a line per package; `disco/client/noop/packages = intercept` and a source nobody
serves fall back to the Would execute line. Dances run on clones of this machine, their
one package source served on loopback (packages_env.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Run, assert_one_error
from disco.noop.packages import Fetcher, Refused, fetch, host_command
from disco.noop.rules import Kind, load_rules
from packages_env import (
    compare,
    corpus,
    dance,
    install_script,
    make_ball_server,
    make_server,
    records,
)
from test_dance_steps import make_server as make_plain_server

PACKAGES = ["lzip", "iputils-arping"]  # alternatives; a file capability (setcap)
CHECKS = """
if touch /var/disco/debs/planted 2>/dev/null; then echo "cache: written"
else echo "cache: read-only"; fi
"""


@pytest.fixture
def packages() -> list[str]:
    if not set(PACKAGES) <= set(corpus()):
        pytest.skip("no package corpus: run `make test-debs` (the install step of make test)")
    return PACKAGES


def report(out: Path, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((out / f"{name}.json").read_text())  # type: ignore[no-any-return]


def test_noop_installs_for_real_from_disco_s_cache_and_says_a_line_per_package(
    tmp_path: Path, packages: list[str]
) -> None:
    server = make_server(tmp_path / "srv", install_script(packages) + CHECKS)
    out = dance(tmp_path, server, ["noop:--noop", "noop.2:--noop",
                                   "off:--noop:disco/client/noop/packages=intercept"])  # fmt: skip
    said = (out / "noop.out").read_text()
    assert "Would execute : apt-get" not in said, said
    lines = said.splitlines()
    assert (
        "info: Package: lzip : Installed : version=[1.23-5] added=[14] changed=[0] removed=[0]"
        in lines
    )
    assert any(
        line.startswith("info: Package: iputils-arping : Installed : version=[3:") for line in lines
    )
    # Package files are counted, not listed; what the maintainer scripts did is listed.
    assert not any(line.startswith("info: File: file: /usr/share/doc/lzip/") for line in lines)
    assert any(" /etc/alternatives/lzip : Created" in line for line in lines)
    [arping] = [line for line in lines if " /usr/bin/arping : " in line]
    assert "xattrs=[security.capability=cap_net_raw=" in arping
    assert "cache: read-only" in said
    # Neither the step nor the host's apt changed the clone NOOP danced on.
    untouched = ". ./usr ./usr/sbin ./usr/sbin/policy-rc.d".split()
    assert (out / "noop.up").read_text().split() == untouched
    # --json and the report keep every file's full record, with its diff and package.
    first = report(out, "noop")
    by_path = {c["path"]: c for c in first["changes"]}
    copyright = by_path["/usr/share/doc/lzip/copyright"]
    assert copyright["package"] == "lzip" and copyright["diff"].startswith("0a1,")
    assert by_path["/usr/bin/lzip.lzip"]["header"].startswith(
        "File: file: /usr/bin/lzip.lzip : Created"
    )
    # The download is a record of its own, apart from the step's.
    downloads = [r for r in first["records"] if r["step"] == "download"]
    assert [(d["module"], d["item"], d["exit"]) for d in downloads] == [("pkgs", "10-install", 0)]
    # Fetched once into the cache: the second NOOP finds the same files there.
    cached = (out / "noop.cache").read_text()
    assert "lzip_1.23-5_amd64.deb" in cached and "planted" not in cached
    assert (out / "noop.2.cache").read_text() == cached
    again = report(out, "noop.2")
    assert {c["path"] for c in again["changes"]} == set(by_path)
    # disco/client/noop/packages = intercept: as before, Would execute and nothing installed.
    off = (out / "off.out").read_text()
    assert "warning: Would execute : apt-get install -y -q --no-install-recommends lzip" in off
    assert "Package:" not in off and "/usr/bin/lzip.lzip" not in off
    assert not (out / "off.cache").read_text().strip()


def test_a_source_nobody_serves_gives_a_warning_and_the_would_execute_line(
    tmp_path: Path, packages: list[str]
) -> None:
    server = make_server(tmp_path / "srv", install_script(packages[:1]))
    out = dance(tmp_path, server, ["noop:--noop"], source="gone")
    said = (out / "noop.out").read_text()
    assert (
        "warning: disco cannot fetch packages for apt-get install -y -q --no-install-recommends"
        " lzip: cannot fetch http://127.0.0.1:8765/./lzip_1.23-5_amd64.deb" in said
    ), said
    assert "warning: Would execute : apt-get install -y -q --no-install-recommends lzip" in said
    done = report(out, "noop")
    assert done["exit"] == 0
    assert [r["exit"] for r in done["records"] if r["step"] == "download"] == [1]
    assert not any(c["path"].startswith("/usr/share/doc/lzip") for c in done["changes"])


def test_a_node_with_no_package_lists_gets_a_warning_not_a_failed_noop(
    tmp_path: Path, packages: list[str]
) -> None:
    server = make_server(tmp_path / "srv", install_script(packages[:1]))
    out = dance(tmp_path, server, ["noop:--noop"], source="none")
    said = (out / "noop.out").read_text()
    assert "warning: disco cannot fetch packages for apt-get install" in said, said
    assert "the node has no package source that disco can reach" in said
    assert "warning: Would execute : apt-get install" in said
    assert report(out, "noop")["exit"] == 0


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["apt-get", "-o", "Dir=/tmp/x", "install", "lzip"], "the setting -o Dir=/tmp/x"),
        (["apt-get", "-oDpkg::Options::=--force-all", "upgrade"], "the setting -o Dpkg::Op"),
        (["apt-get", "--option=Acquire::http::Proxy=http://x", "upgrade"], "setting -o Acq"),
        (["apt-get", "upgrade", "-o"], "fetch with the setting -o "),
        (["apt-get", "install", "./lzip.deb"], "'./lzip.deb' is not a package name"),
        (["apt-get", "install", "lzip;reboot"], "is not a package name"),
        (["apt-get", "install"], "no package named"),
        (["apt-get", "-y"], "no install or upgrade verb"),
        (["dpkg", "-i", "x.deb"], "'dpkg' is not a command disco fetches for"),
        (["apt-get", "-t", "$(id)", "install", "lzip"], "cannot use the release"),
        (["apt-get", "install", "--", "-oDir=/x"], "'-oDir=/x' is not a package name"),
    ],
)
def test_the_host_refuses_what_is_not_a_plain_install(argv: list[str], why: str) -> None:
    with pytest.raises(
        Refused, match=why.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")
    ):
        host_command(argv)


def test_the_host_runs_apt_with_the_step_s_package_words_only() -> None:
    assert host_command(["apt", "-y", "-q", "upgrade"]) == ["--with-new-pkgs", "upgrade"]
    assert host_command(["apt-get", "install", "-y", "--", "a", "b"]) == ["install", "a", "b"]
    assert host_command(["apt-get", "--no-install-recommends", "-qq", "install", "a", "b=1.0"]) == [
        "--no-install-recommends", "install", "a", "b=1.0"]  # fmt: skip
    assert host_command(["apt-get", "full-upgrade", "-t", "bookworm"]) == [
        "-t", "bookworm", "dist-upgrade"]  # fmt: skip
    # How dpkg treats conffiles, and apt's manners, are the sandbox's apt's business alone.
    confold = ["-o", "Dpkg::Options::=--force-confold", "--option=DPkg::Lock::Timeout=60"]
    assert host_command(["apt-get", *confold, "-oAPT::Get::Assume-Yes=true", "upgrade"]) == [
        "upgrade"]  # fmt: skip


def test_a_source_the_root_does_not_configure_is_never_fetched_from(tmp_path: Path) -> None:
    fetcher = Fetcher(Path("/"), tmp_path / "cache", tmp_path / "log")
    status, out, err = fetch(
        fetcher, ["disco-fetch", "1", "http://127.0.0.1:1/planted/", "apt-get", "install", "lzip"]
    )
    assert (status, out) == (1, b"")
    assert b"no package source that disco can reach" in err
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    assert json.loads((tmp_path / "log").read_text())["exit"] == 1


def test_a_bad_packages_setting_is_an_error_naming_it(cmd: Run, tmp_path: Path) -> None:
    server = make_plain_server(tmp_path / "srv", {"m": {"scripts/10-x": "#!/bin/bash\ntrue\n"}})
    set_ = cmd("disco-param", "set", "disco/client/noop/packages", input="maybe\n")
    assert set_.returncode == 0, set_.stderr
    result = cmd("disco", "dance", "--noop", "--server", str(server), "--node", "node1.example.com")
    assert_one_error(result, 1, "disco/client/noop/packages", "'maybe'")


def test_the_intercept_setting_makes_a_package_install_an_outside_effect(tmp_path: Path) -> None:
    fetching = load_rules(tmp_path)
    intercepting = load_rules(tmp_path, "intercept")
    assert any(r.command == "apt-get" and r.kind is Kind.FETCH for r in fetching)
    assert not any(r.kind is Kind.FETCH for r in intercepting)
    assert [r.words for r in intercepting] == [r.words for r in fetching]


def test_the_packages_ball_shows_in_noop_the_records_of_its_live_dance(
    tmp_path: Path, packages: list[str]
) -> None:
    server = make_ball_server(
        tmp_path / "srv", "packages", {"packages/install": " ".join(packages)}
    )
    out = dance(tmp_path, server, ["noop:--noop", "&", "live:--effects+run"])
    noop, live = records(out / "noop.json"), records(out / "live.json")
    assert "/usr/bin/lzip.lzip" in live and "/usr/bin/arping" in live
    assert "security.capability=cap_net_raw" in live["/usr/bin/arping"]
    mismatches, _ = compare(noop, live)
    assert not mismatches, [(p, noop.get(p), live.get(p)) for p in mismatches]
    assert "Would execute" not in (out / "noop.out").read_text()
