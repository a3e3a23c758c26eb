"""Upgrades in NOOP (issue 25, DESIGN §17): `apt-get upgrade`, `dist-upgrade` and
`install --only-upgrade` of a package installed at 1.0, to 2.0 from a loopback repository
(tiny_debs.py), NOOP on one clone and live on an identical one: every record equal, the
changed conffile's diff, the file 2.0 removes shown removed, the package line saying the
version change, and a conffile the admin changed treated by dpkg alike in both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packages_env import compare, dance, make_server, records
from tiny_debs import NEW, OLD, PACKAGE, UPGRADE_SETUP, available, make_repo

CONFOLD = "-o Dpkg::Options::=--force-confold"
# added: new; changed: data and dpkg's list, md5sums and postinst of it; removed: gone.
UPGRADED = (
    f"info: Package: {PACKAGE} : Upgraded : version=[{OLD} => {NEW}] added=[1] changed=[4]"
    " removed=[1]"
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    why = available()
    if why:
        pytest.skip(why)
    return make_repo(tmp_path / "debs")


def upgrade(tmp_path: Path, repo: Path, command: str) -> tuple[Path, dict[str, str]]:
    """NOOP and live of `command` side by side; the NOOP's records, checked equal to live's."""
    script = f"export DEBIAN_FRONTEND=noninteractive\n{command}\n"
    server = make_server(tmp_path / "srv", script)
    out = dance(tmp_path, server, ["noop:--noop", "&", "live:--effects+run"], debs=repo,
                setup=UPGRADE_SETUP)  # fmt: skip
    noop, live = records(out / "noop.json"), records(out / "live.json")
    said = (out / "noop.out").read_text()
    assert "Would execute" not in said and "warning: disco cannot" not in said, said
    assert live, (out / "live.out").read_text()
    mismatches, _ = compare(noop, live)
    assert not mismatches, [(p, noop.get(p), live.get(p)) for p in mismatches]
    return out, noop


@pytest.mark.parametrize(
    "command",
    [
        f"apt-get -y {CONFOLD} upgrade",
        f"apt-get dist-upgrade -y {CONFOLD}",
        f"apt-get install -y --only-upgrade -oDpkg::Options::=--force-confold {PACKAGE}",
        f"apt -y -o Dpkg::Options::=--force-confdef {CONFOLD} full-upgrade",
    ],
)
def test_an_upgrade_in_noop_shows_the_records_of_the_live_upgrade(
    tmp_path: Path, repo: Path, command: str
) -> None:
    out, noop = upgrade(tmp_path, repo, command)
    lines = (out / "noop.out").read_text().splitlines()
    assert UPGRADED in lines, lines
    assert UPGRADED in (out / "live.out").read_text().splitlines()
    # The conffile the maintainer changed is replaced, its diff shown.
    main = "/etc/disco-up/main.conf"
    assert noop[main].startswith(f"File: file: {main} : Modified")
    said = "\n".join(lines)
    assert "< level = 1\n---\n> level = 2\n> new = yes" in said, said
    # The one the admin changed is kept (--force-confold), the maintainer's put beside it.
    assert "/etc/disco-up/kept.conf" not in noop
    assert noop["/etc/disco-up/kept.conf.dpkg-dist"].startswith(
        "File: file: /etc/disco-up/kept.conf.dpkg-dist : Created"
    )
    # The file 2.0 no longer ships is removed, in the records and in the package's count.
    assert noop["/usr/share/disco-up/gone"] == "File: file: /usr/share/disco-up/gone : Deleted"
    full = json.loads((out / "noop.json").read_text())
    gone = [c for c in full["changes"] if c["path"] == "/usr/share/disco-up/gone"]
    assert gone and gone[0]["package"] == PACKAGE
    # What the postinst did, live and NOOP alike: its history and the user it adds.
    assert f"> configured {NEW} from {OLD}" in said
    assert "/etc/passwd" in noop and "/etc/shadow" in noop


def test_a_conffile_prompt_with_no_terminal_fails_alike_in_noop_and_live(
    tmp_path: Path, repo: Path
) -> None:
    """Without --force-conf*, dpkg asks about kept.conf; a step has no terminal, so
    dpkg gives up on the package, in NOOP as live."""
    out, noop = upgrade(tmp_path, repo, "apt-get -y upgrade || echo apt-get failed: $?")
    for name in ("noop", "live"):
        said = (out / f"{name}.out").read_text()
        assert "apt-get failed: 100" in said, said
        assert "kept.conf" in said
    assert "/etc/disco-up/kept.conf.dpkg-dist" not in noop
