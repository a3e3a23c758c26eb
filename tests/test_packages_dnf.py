"""`dnf install` in NOOP (issue 25, DESIGN §17): resolved and downloaded by the host's dnf
over a copy-on-write view of the root, from the root's own repositories; then the real
dnf installs in the sandbox, from that cache, with no network. NOOP on one clone of this
machine (an rpmdb and a repository on loopback added: tiny_rpms.py) and live on an
identical one: every record equal, but for the paths that carry the time of the run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from disco.noop import dnf
from packages_env import compare, dance, make_server, records
from tiny_rpms import DNF_SETUP, available, make_repo

# Paths whose content holds the time of the run: compared without their md5.
DNF_TIMED = {
    "/var/lib/dnf/history.sqlite": "the transaction's start and end times",
    "/var/lib/dnf/history.sqlite-shm": "SQLite's WAL index: the salts of the run",
    "/var/lib/dnf/history.sqlite-wal": "SQLite's WAL: the salts and times of the run",
    "/var/lib/rpm/rpmdb.sqlite": "each package's install time (rpm's INSTALLTIME, seconds)",
    "/var/lib/rpm/rpmdb.sqlite-shm": "SQLite's WAL index: the salts of the run",
    "/var/lib/rpm/rpmdb.sqlite-wal": "SQLite's WAL: the salts of the run",
    "/var/log/dnf.log": "each line starts with the time",
    "/var/log/dnf.librepo.log": "each line starts with the time",
    "/var/log/dnf.rpm.log": "each line starts with the time",
    "/var/log/hawkey.log": "each line starts with the time",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    why = available()
    if why:
        pytest.skip(why)
    return make_repo(tmp_path / "rpms")


def test_dnf_install_in_noop_shows_the_records_of_the_live_install(
    tmp_path: Path, repo: Path
) -> None:
    server = make_server(tmp_path / "srv", "dnf install -y disco-hello\n")
    dances = ["noop:--noop", "&", "live:--effects+run", "noop.2:--noop"]
    out = dance(tmp_path, server, dances, source="plain", debs=repo, setup=DNF_SETUP)
    said = (out / "noop.out").read_text()
    assert "Would execute" not in said and "warning: disco cannot" not in said, said
    noop, live = records(out / "noop.json"), records(out / "live.json")
    made = ["/usr/share/disco-hello/hello.txt", "/usr/lib/disco-lib/lib.txt",
            "/etc/disco-hello/hello.conf", "/var/lib/disco-hello.log", "/etc/passwd"]  # fmt: skip
    for path in made:
        assert path in live, (out / "live.out").read_text()
    assert "> greeting = hello" in said
    mismatches = [
        p for p in compare(noop, live)[0] if _plain(p, noop.get(p)) != _plain(p, live.get(p))
    ]  # fmt: skip
    assert not mismatches, [(p, noop.get(p), live.get(p)) for p in mismatches]
    assert len(noop) > 20
    # The packages dnf downloaded are gone once installed (keepcache off), as live.
    assert not any(p.endswith(".rpm") for p in noop)
    # A second NOOP starts from what the first fetched, and shows the same.
    again = records(out / "noop.2.json")
    assert [
        p for p in set(again) | set(noop) if _plain(p, again.get(p)) != _plain(p, noop.get(p))
    ] == []
    # Neither the step nor the host's dnf changed the clone NOOP danced on.
    untouched = ". ./usr ./usr/sbin ./usr/sbin/policy-rc.d".split()
    assert (out / "noop.up").read_text().split() == untouched


def test_a_dnf_command_disco_does_not_fetch_for_is_would_execute(
    tmp_path: Path, repo: Path
) -> None:
    server = make_server(tmp_path / "srv", "dnf install -y ./disco-hello.rpm\n")
    out = dance(tmp_path, server, ["noop:--noop"], source="plain", debs=repo, setup=DNF_SETUP)
    said = (out / "noop.out").read_text()
    assert (
        "warning: disco cannot fetch packages for dnf install -y ./disco-hello.rpm:"
        " './disco-hello.rpm' is not a package name" in said
    ), said
    assert "warning: Would execute : dnf install -y ./disco-hello.rpm" in said


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["dnf", "install", "./x.rpm"], "'./x.rpm' is not a package name"),
        (["dnf", "install", "http://x/y.rpm"], "is not a package name"),
        (["dnf", "--installroot=/x", "install", "a"], "the option --installroot=/x"),
        (["dnf", "--setopt=reposdir=/x", "install", "a"], "the option --setopt=reposdir"),
        (["dnf", "upgrade", "a"], "'upgrade' is not a verb"),
        (["dnf", "-y", "install"], "no package named"),
    ],
)
def test_the_host_refuses_what_is_not_a_plain_dnf_install(argv: list[str], why: str) -> None:
    with pytest.raises(dnf.Refused, match=re.escape(why)):
        dnf.host_command(argv)


def test_the_host_fetches_with_the_step_s_package_words_only() -> None:
    argv = ["dnf", "-y", "-q", "--setopt=install_weak_deps=False", "install", "a", "b-1.0"]
    assert dnf.host_command(argv) == ["--setopt=install_weak_deps=False", "install", "a", "b-1.0"]


def test_only_repositories_with_baseurls_alone_are_used(tmp_path: Path) -> None:
    repos = tmp_path / "etc" / "yum.repos.d"
    repos.mkdir(parents=True)
    (repos / "a.repo").write_text(
        "[plain]\nbaseurl=http://a/\n  http://b/\n[mirrored]\nbaseurl=http://c/\n"
        "metalink=http://m/\n[off]\nbaseurl=http://d/\nenabled=0\n[none]\nname=x\n"
    )
    assert dnf.repositories(tmp_path) == {
        "plain": (True, ["http://a/", "http://b/"]),
        "mirrored": (False, ["http://c/"]),
        "off": (False, ["http://d/"]),
        "none": (False, []),
    }


def _plain(path: str, header: str | None) -> str | None:
    """A record without what carries the time of the run: the md5 of DNF_TIMED, and
    librepo's note of a downloaded file's mtime (an xattr of each file of the metadata)."""
    if header is None:
        return None
    if path in DNF_TIMED:
        header = re.sub(r" md5=\[[^]]*\]", "", header)
    return re.sub(r"user\.Librepo\.checksum\.mtime=[0-9]+", "user.Librepo.checksum.mtime=T", header)


@pytest.mark.parametrize(
    ("files", "where"),
    [
        ({"etc/rpm/macros": "%_dbpath /var/lib/rpm\n"}, "/var/lib/rpm"),
        ({"usr/lib/rpm/macros": "%_dbpath\t\t%(bash -c 'echo ~/.rpmdb')\n"}, "/root/.rpmdb"),
        (
            {
                "usr/lib/rpm/macros": "%_dbpath %{_usr}/lib/sysimage/rpm\n",
                "usr/lib/sysimage/rpm/rpmdb.sqlite": "",
            },
            "/usr/lib/sysimage/rpm",
        ),  # fmt: skip
        ({}, "/var/lib/rpm"),
    ],
)
def test_the_host_s_rpm_reads_the_rpmdb_where_the_root_s_rpm_would(
    tmp_path: Path, files: dict[str, str], where: str
) -> None:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert dnf._dbpath(tmp_path) == where


def test_a_repository_the_step_does_not_configure_is_never_fetched_from(tmp_path: Path) -> None:
    repos = tmp_path / "root" / "etc" / "yum.repos.d"
    repos.mkdir(parents=True)
    (repos / "a.repo").write_text("[a]\nbaseurl=http://127.0.0.1:1/a/\n")
    cache = tmp_path / "state" / "cache" / "debs"
    with pytest.raises(dnf.Refused, match="no package source that disco can reach"):
        dnf.fetch(
            tmp_path / "root", cache, {"http://127.0.0.1:1/planted/"}, ["dnf", "install", "x"]
        )
    assert not cache.exists()
