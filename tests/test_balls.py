"""The standard balls (balls/, DESIGN §13), each danced NOOP and live on a scratch root,
twice (tests/balls.py), and each refusing bad parameters with error: lines."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from balls import NODE, dance, dance_twice, make_server, prepare_root, refused, set_params, watched
from conftest import Run

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEx5v0x2y4z8kVj3sWqM0n1b2c3d4e5f6g7h8i9j0kLm alice@desk"


@pytest.fixture
def root(scratch_root: Path) -> Path:
    return prepare_root(scratch_root)


def passwd(root: Path, name: str) -> list[str]:
    lines = (root / "etc/passwd").read_text().splitlines()
    return next((line.split(":") for line in lines if line.startswith(f"{name}:")), [])


def group(root: Path, name: str) -> list[str]:
    lines = (root / "etc/group").read_text().splitlines()
    return next((line.split(":") for line in lines if line.startswith(f"{name}:")), [])


def test_users_create_modify_lock_remove_with_keys(
    cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    params = {
        "groups/devs/gid": "2345",
        "users/alice/uid": "2001",
        "users/alice/groups": "devs",
        "users/alice/shell": "/bin/sh",
        "users/alice/comment": "Alice A",
        "users/alice/authorized_keys": KEY,
        "users/bob/state": "locked",
    }
    srv = make_server(cmd, tmp_path, "users", params)
    danced = dance_twice(cmd, state, srv, root)
    assert "info: File: file: /etc/passwd : Modified" in danced.noop.stdout
    assert "> alice:x:2001:" in danced.noop.stdout  # the exact line, shown by NOOP
    assert passwd(root, "alice")[2:] == [
        "2001",
        passwd(root, "alice")[3],
        "Alice A",
        "/home/alice",
        "/bin/sh",
    ]
    assert group(root, "devs")[2:] == ["2345", "alice"]
    keys = root / "home/alice/.ssh/authorized_keys"
    assert keys.read_text() == KEY + "\n" and oct(keys.stat().st_mode)[-3:] == "600"
    assert keys.stat().st_uid == 2001
    shadow = (root / "etc/shadow").read_text()
    assert "\nbob:!" in shadow
    # Modify and remove: the change is exactly that, and again idempotent.
    set_params(srv, {**params, "users/alice/shell": "/bin/bash", "users/bob/state": "absent"})
    danced = dance_twice(cmd, state, srv, root)
    assert passwd(root, "alice")[6] == "/bin/bash" and passwd(root, "bob") == []


@pytest.mark.parametrize(
    "params,message",
    [
        ({"users/Alice/uid": "1"}, "'Alice' is not a user name"),
        ({"users/alice/shel": "/bin/sh"}, "alice: unknown parameter 'shel'"),
        ({"users/alice/uid": "12a"}, "alice/uid: '12a' is not a number"),
        ({"users/alice/state": "gone"}, "'gone' is not present, locked or absent"),
        ({"users/alice/authorized_keys": "hello"}, "not an OpenSSH public key line"),
        ({"users/alice": "yes"}, "alice: must be a map"),
        ({"users": "alice"}, "must be a map"),
    ],
)
def test_users_refuses_bad_parameters(
    params: dict[str, str], message: str, cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    carol = {} if "users" in params else {"users/carol/uid": "3000"}  # valid: kept out too
    srv = make_server(cmd, tmp_path, "users", {**carol, **params})
    refused(cmd, state, srv, root, message)


def tiny_deb(tmp_path: Path, name: str) -> Path:
    """A package of one /etc file and no scripts, built here: nothing comes from a network."""
    pkg = tmp_path / f"{name}-pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "etc").mkdir()
    (pkg / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: disco tests <root@localhost>\nDescription: a test package\n"
    )
    (pkg / "etc" / f"{name}.conf").write_text(f"{name}\n")
    deb = tmp_path / f"{name}.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


@pytest.fixture
def debian_root(root: Path, tmp_path: Path) -> Path:
    """The scratch root with a dpkg database of its own holding two tiny packages, apt's
    configuration, and a policy-rc.d that keeps any daemon from starting."""
    for d in (
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/log",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in ("status", "available"):
        (root / "var/lib/dpkg" / f).touch()
    shutil.copytree("/etc/apt", root / "etc/apt", symlinks=True)
    (root / "etc/dpkg").mkdir(exist_ok=True)
    for name in ("disco-kept", "disco-gone"):
        deb = tiny_deb(tmp_path, name)
        # dpkg's log is the host's unless told: --root moves only its databases.
        log = f"--log={root}/var/log/dpkg.log"
        dpkg = ["dpkg", f"--root={root}", log, "-i", str(deb)]
        subprocess.run(dpkg, check=True, capture_output=True)
    return root


def dpkg_installed(root: Path, name: str) -> bool:
    status = (root / "var/lib/dpkg/status").read_text()
    return f"Package: {name}\nStatus: install ok installed" in status


def test_packages_removes_what_is_installed_and_keeps_what_is_wanted(
    cmd: Run, state: Path, tmp_path: Path, debian_root: Path
) -> None:
    params = {"packages/install": "disco-kept", "packages/remove": "disco-gone disco-never"}
    srv = make_server(cmd, tmp_path, "packages", params)
    danced = dance_twice(cmd, state, srv, debian_root, exact=False)
    # Removing changes only files (the network is not asked): NOOP shows it exactly.
    assert "Would execute : apt-get remove" not in danced.noop.stderr
    for result in (danced.noop, danced.live):
        assert "info: File: file: /etc/disco-gone.conf : Deleted" in result.stdout
    assert not dpkg_installed(debian_root, "disco-gone")
    assert dpkg_installed(debian_root, "disco-kept")


def test_packages_install_is_an_outside_effect_in_noop(
    cmd: Run, state: Path, tmp_path: Path, debian_root: Path
) -> None:
    srv = make_server(cmd, tmp_path, "packages", {"packages/install": "disco-kept hello, cowsay"})
    before = watched(debian_root)
    result = dance(cmd, state, srv, debian_root, noop=True)
    assert result.returncode == 0, result.stderr
    assert (
        "warning: Would execute : apt-get install -y -q --no-install-recommends -- cowsay hello"
        in result.stderr
    )
    assert watched(debian_root) == before


@pytest.mark.parametrize(
    "params,message",
    [
        ({"packages/instal": "x"}, "unknown parameter 'instal'"),
        ({"packages/install": "ok b@d"}, "'b@d' is not a package name"),
        ({"packages/install": "x", "packages/remove": "x"}, "'x' is in both install and remove"),
        ({"packages/install/x": "1"}, "install: must be a list"),
    ],
)
def test_packages_refuses_bad_parameters(
    params: dict[str, str], message: str, cmd: Run, state: Path, tmp_path: Path, debian_root: Path
) -> None:
    srv = make_server(cmd, tmp_path, "packages", {"packages/remove": "disco-gone", **params})
    refused(cmd, state, srv, debian_root, message)
    assert dpkg_installed(debian_root, "disco-gone")


UNIT = """[Unit]
Description=a unit of the services ball's test

[Service]
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
RequiredBy=disco-extra.target
"""


@pytest.fixture
def units(root: Path) -> Path:
    """disco-new.service to enable, disco-old.service enabled already, to disable."""
    system = root / "etc/systemd/system"
    (system / "multi-user.target.wants").mkdir(parents=True)
    for name in ("disco-new.service", "disco-old.service", "disco-static.service"):
        (system / name).write_text(UNIT if name != "disco-static.service" else "[Service]\n")
    (system / "multi-user.target.wants/disco-old.service").symlink_to(system / "disco-old.service")
    return root


def test_services_enable_and_disable_by_their_links(
    cmd: Run, state: Path, tmp_path: Path, units: Path
) -> None:
    params = {"services/disco-new/enabled": "yes", "services/disco-old.service/enabled": "no"}
    srv = make_server(cmd, tmp_path, "services", params)
    danced = dance_twice(cmd, state, srv, units)
    system = units / "etc/systemd/system"
    for link in ("multi-user.target.wants", "disco-extra.target.requires"):
        assert (
            danced.noop.stdout.count(f"/etc/systemd/system/{link}/disco-new.service : Created") == 1
        )
        assert (
            os.readlink(system / link / "disco-new.service")
            == "/etc/systemd/system/disco-new.service"
        )
    assert (
        "/etc/systemd/system/multi-user.target.wants/disco-old.service : Deleted"
        in danced.noop.stdout
    )
    assert not (system / "multi-user.target.wants/disco-old.service").is_symlink()


def test_services_start_and_stop_are_outside_effects(
    cmd: Run, state: Path, tmp_path: Path, units: Path
) -> None:
    """Only NOOP: a live start would reach this machine's service manager."""
    params = {"services/disco-new/running": "yes", "services/disco-old/running": "no"}
    srv = make_server(cmd, tmp_path, "services", params)
    before = watched(units)
    result = dance(cmd, state, srv, units, noop=True)
    assert result.returncode == 0, result.stderr
    assert "warning: Would execute : systemctl" in result.stderr
    assert watched(units) == before


@pytest.mark.parametrize(
    "params,message",
    [
        ({"services/disco-new/enabled": "true"}, "'true' is not yes or no"),
        ({"services/disco-new/enable": "yes"}, "unknown parameter 'enable'"),
        ({"services/disco-none/enabled": "yes"}, "no unit file disco-none.service"),
        ({"services/disco-static/enabled": "yes"}, "it cannot be enabled"),
    ],
)
def test_services_refuses_bad_parameters(
    params: dict[str, str], message: str, cmd: Run, state: Path, tmp_path: Path, units: Path
) -> None:
    srv = make_server(cmd, tmp_path, "services", {"services/disco-old/enabled": "no", **params})
    refused(cmd, state, srv, units, message)


def test_files_lines_and_a_tree_with_owner_and_modes(
    cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    (root / "etc/app.conf").write_text("# app\nport = 80\nport = 81\nverbose = yes\n")
    (root / "etc/app.conf").chmod(0o640)
    tree = root / "srv/www"
    (tree / "html").mkdir(parents=True)
    (tree / "html/index.html").write_text("hello\n")
    params = {
        "files/lines/port/path": "/etc/app.conf",
        "files/lines/port/line": "port = 8080",
        "files/lines/port/match": "^port *=",
        "files/lines/quiet/path": "/etc/app.conf",
        "files/lines/quiet/line": "verbose = yes",
        "files/lines/quiet/state": "absent",
        "files/lines/new/path": "/etc/new/list",
        "files/lines/new/line": "first",
        "files/dirs/www/path": "/srv/www",
        "files/dirs/www/owner": "daemon",
        "files/dirs/www/group": "daemon",
        "files/dirs/www/mode": "0750",
        "files/dirs/www/file_mode": "0640",
        "files/dirs/www/recurse": "yes",
        "files/dirs/data/path": "/srv/data",
        "files/dirs/data/mode": "0700",
    }
    srv = make_server(cmd, tmp_path, "files", params)
    dance_twice(cmd, state, srv, root)
    assert (root / "etc/app.conf").read_text() == "# app\nport = 8080\n"
    assert oct((root / "etc/app.conf").stat().st_mode)[-3:] == "640"
    assert (root / "etc/new/list").read_text() == "first\n"
    daemon = int(passwd(root, "daemon")[2])
    for path, mode in ((tree, 0o750), (tree / "html", 0o750), (tree / "html/index.html", 0o640)):
        st = path.stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (daemon, mode), path
    assert ((root / "srv/data").stat().st_mode & 0o7777) == 0o700


@pytest.mark.parametrize(
    "params,message",
    [
        ({"files/lines/x/path": "etc/x", "files/lines/x/line": "a"}, "is not an absolute path"),
        ({"files/lines/x/path": "/etc/x"}, "lines/x: no line"),
        (
            {"files/dirs/x/path": "/srv/x", "files/dirs/x/owner": "nobody-here"},
            "no user 'nobody-here'",
        ),
        ({"files/dirs/x/path": "/srv/x", "files/dirs/x/mode": "rwx"}, "'rwx' is not an octal mode"),
        ({"files/dirs/x/path": "/etc/passwd"}, "is not a directory"),
        ({"files/trees/x/path": "/srv/x"}, "unknown parameter 'trees'"),
        (
            {
                "files/lines/x/path": "/etc/x",
                "files/lines/x/line": "a",
                "files/lines/x/match": "([",
            },
            "not an extended regular expression",
        ),
    ],
)
def test_files_refuses_bad_parameters(
    params: dict[str, str], message: str, cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    ok = {"files/lines/ok/path": "/etc/ok.conf", "files/lines/ok/line": "fine"}
    srv = make_server(cmd, tmp_path, "files", {**ok, **params})
    refused(cmd, state, srv, root, message)


@pytest.fixture
def sysctl_stub(root: Path) -> Path:
    """The scratch root's own `sysctl`, first on its PATH: a live dance on a scratch root
    must not set this machine's kernel parameters, which it shares."""
    stub = root.parent / "usr-local" / "sbin" / "sysctl"
    stub.write_text('#!/bin/sh\necho "sysctl $*: done"\n')
    stub.chmod(0o755)
    return root


def test_sysctl_writes_its_file_and_applies_what_differs(
    cmd: Run, state: Path, tmp_path: Path, sysctl_stub: Path
) -> None:
    root = sysctl_stub
    # Global, not per namespace: the NOOP sandbox reads the same value.
    same = Path("/proc/sys/vm/overcommit_memory").read_text().strip()
    params = {
        "sysctl/vm.overcommit_memory": same,
        "sysctl/vm.swappiness": "1"
        if Path("/proc/sys/vm/swappiness").read_text().strip() != "1"
        else "2",
    }
    srv = make_server(cmd, tmp_path, "sysctl", params)
    danced = dance_twice(cmd, state, srv, root)
    want = params["sysctl/vm.swappiness"]
    assert (root / "etc/sysctl.d/90-disco.conf").read_text().splitlines()[1:] == [
        f"vm.overcommit_memory = {same}",
        f"vm.swappiness = {want}",
    ]
    assert f"warning: Would execute : sysctl -w vm.swappiness={want}" in danced.noop.stderr
    assert "vm.overcommit_memory" not in danced.noop.stderr  # already so
    # Live on a root that is not this machine, the kernel's settings are not this
    # root's to change: intercepted too (--effects run would let them through).
    assert f"warning: Would execute : sysctl -q -w vm.swappiness={want}" in danced.live.stderr


@pytest.mark.parametrize(
    "params,message",
    [
        ({"sysctl/kernel.no_such_thing": "1"}, "this kernel has no such parameter"),
        ({"sysctl/swappiness": "1"}, "'swappiness' is not a kernel parameter name"),
        ({"sysctl/vm.swappiness/x": "1"}, "must be a value, not a map"),
    ],
)
def test_sysctl_refuses_bad_parameters(
    params: dict[str, str], message: str, cmd: Run, state: Path, tmp_path: Path, sysctl_stub: Path
) -> None:
    srv = make_server(cmd, tmp_path, "sysctl", {"sysctl/kernel.pid_max": "4194304", **params})
    refused(cmd, state, srv, sysctl_stub, message)


def test_cron_jobs_are_files_of_their_own(
    cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    (root / "etc/cron.d").mkdir()
    (root / "etc/cron.d/disco-stale").write_text("* * * * * root true\n")
    (root / "etc/cron.d/other").write_text("* * * * * root true\n")
    params = {
        "cron/backup/schedule": "30 2 * * *",
        "cron/backup/command": "/usr/local/bin/backup --all",
        "cron/tick/schedule": "@hourly",
        "cron/tick/user": "daemon",
        "cron/tick/command": "date >/dev/null",
    }
    srv = make_server(cmd, tmp_path, "cron", params)
    danced = dance_twice(cmd, state, srv, root)
    assert "info: File: file: /etc/cron.d/disco-stale : Deleted" in danced.noop.stdout
    assert sorted(os.listdir(root / "etc/cron.d")) == ["disco-backup", "disco-tick", "other"]
    assert (root / "etc/cron.d/disco-tick").read_text().splitlines()[
        -1
    ] == "@hourly daemon date >/dev/null"
    assert (root / "etc/cron.d/disco-backup").read_text().splitlines()[
        -1
    ] == "30 2 * * * root /usr/local/bin/backup --all"


@pytest.mark.parametrize(
    "params,message",
    [
        ({"cron/x/schedule": "every day", "cron/x/command": "true"}, "is not five cron fields"),
        ({"cron/x.y/schedule": "@daily", "cron/x.y/command": "true"}, "'x.y' is not a job name"),
        ({"cron/x/schedule": "@daily"}, "x/command: must be one line, not empty"),
        (
            {"cron/x/schedule": "@daily", "cron/x/command": "true", "cron/x/when": "now"},
            "unknown parameter 'when'",
        ),
    ],
)
def test_cron_refuses_bad_parameters(
    params: dict[str, str], message: str, cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    ok = {"cron/ok/schedule": "@daily", "cron/ok/command": "true"}
    srv = make_server(cmd, tmp_path, "cron", {**ok, **params})
    refused(cmd, state, srv, root, message)


def test_hosts_keeps_its_block_and_the_rest(
    cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
    params = {
        "hosts/db/address": "10.0.0.5",
        "hosts/db/names": "db1.example.com db1",
        "hosts/v6/address": "fd00::5",
        "hosts/v6/names": "v6.example.com",
    }
    srv = make_server(cmd, tmp_path, "hosts", params)
    danced = dance_twice(cmd, state, srv, root)
    assert "> 10.0.0.5 db1.example.com db1" in danced.noop.stdout
    lines = (root / "etc/hosts").read_text().splitlines()
    assert lines[:2] == ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
    assert lines[3:5] == ["10.0.0.5 db1.example.com db1", "fd00::5 v6.example.com"]
    set_params(srv, {})  # every entry gone: the block goes, the rest stays
    dance_twice(cmd, state, srv, root)
    assert (root / "etc/hosts").read_text() == "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"


@pytest.mark.parametrize(
    "params,message",
    [
        (
            {"hosts/x/address": "10.0.0.256", "hosts/x/names": "x"},
            "'10.0.0.256' is not an IPv4 or IPv6 address",
        ),
        (
            {"hosts/x/address": "10.0.0.1", "hosts/x/names": "bad_name"},
            "'bad_name' is not a host name",
        ),
        ({"hosts/x/address": "10.0.0.1"}, "x/names: give at least one host name"),
    ],
)
def test_hosts_refuses_bad_parameters(
    params: dict[str, str], message: str, cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    ok = {"hosts/ok/address": "10.0.0.9", "hosts/ok/names": "ok.example"}
    srv = make_server(cmd, tmp_path, "hosts", {**ok, **params})
    refused(cmd, state, srv, root, message)


def test_motd_from_a_parameter_or_the_default(
    cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    srv = make_server(cmd, tmp_path, "motd", {})
    dance_twice(cmd, state, srv, root)
    assert (
        root / "etc/motd"
    ).read_text() == f"{NODE} is configured by disco: changes made by hand may be undone.\n"
    set_params(srv, {"motd/text": "Welcome to the build farm.\nBe nice."})
    danced = dance_twice(cmd, state, srv, root)
    assert "> Be nice." in danced.noop.stdout
    assert (root / "etc/motd").read_text() == "Welcome to the build farm.\nBe nice.\n"


def test_motd_refuses_bad_parameters(cmd: Run, state: Path, tmp_path: Path, root: Path) -> None:
    srv = make_server(cmd, tmp_path, "motd", {"motd/txt": "hello"})
    refused(cmd, state, srv, root, "unknown parameter 'txt'")


def test_groups_create_change_members_remove(
    cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    params = {"groups/ops/gid": "3100", "groups/ops/members": "daemon, bin", "groups/web/state": ""}
    srv = make_server(cmd, tmp_path, "groups", params)
    dance_twice(cmd, state, srv, root)
    assert group(root, "ops")[2:] == ["3100", "bin,daemon"] and group(root, "web")
    set_params(
        srv, {"groups/ops/gid": "3150", "groups/ops/members": "bin", "groups/web/state": "absent"}
    )
    dance_twice(cmd, state, srv, root)
    assert group(root, "ops")[2:] == ["3150", "bin"] and not group(root, "web")


@pytest.mark.parametrize(
    "params,message",
    [
        ({"groups/ops/gid": "x"}, "ops/gid: 'x' is not a number"),
        ({"groups/ops/members": "Bad!"}, "'Bad!' is not a user name"),
        ({"groups/ops/owner": "x"}, "unknown parameter 'owner'"),
    ],
)
def test_groups_refuses_bad_parameters(
    params: dict[str, str], message: str, cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    srv = make_server(cmd, tmp_path, "groups", {"groups/fine/gid": "3200", **params})
    refused(cmd, state, srv, root, message)


def test_init_with_balls_adds_each_and_keeps_a_module_of_the_same_name(
    cmd: Run, tmp_path: Path
) -> None:
    srv, config = tmp_path / "srv", str(tmp_path / "c")
    (srv / "modules" / "motd").mkdir(parents=True)  # the administrator's own
    result = cmd("disco-server", "init", str(srv), "--with-balls", "--config", config)
    assert result.returncode == 0, result.stderr
    balls = "cron files groups hosts packages services sysctl users"
    assert result.stdout.splitlines()[0] == f"info: Added balls to {srv}/modules: {balls}"
    assert os.listdir(srv / "modules" / "motd") == []
    for ball in balls.split():
        assert (srv / "modules" / ball / "README.md").is_file()
        assert f"[{ball}]" in (tmp_path / "c").read_text()
    again = cmd("disco-server", "init", str(srv), "--with-balls", "--config", config)
    assert again.stdout.splitlines()[0] == f"info: Added balls to {srv}/modules: none (all there)"
    assert cmd("disco-server", "check", str(srv), "--config", config).returncode == 0


# -- balls used together (issue 22): in any combination their READMEs show, one dance --


def ready(result: subprocess.CompletedProcess[str]) -> list[str]:
    line = next(x for x in result.stdout.splitlines() if x.startswith("info: Ready to dance : "))
    return line.split(" : ", 1)[1].split()


USERS_AND_GROUPS = {  # the users README's example, and the groups README's
    "users/alice/uid": "2001",
    "users/alice/groups": "devs",
    "users/alice/shell": "/bin/bash",
    "users/alice/authorized_keys": KEY,
    "users/bob/state": "locked",
    "groups/devs/gid": "2345",
    "groups/ops/gid": "3100",
    "groups/ops/members": "alice bob",
    "groups/old/state": "absent",
}


@pytest.mark.parametrize("ball", ["groups", "users"])
def test_groups_with_members_the_users_ball_makes_converge_in_one_dance(
    ball: str, cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    """The groups README's members (alice, bob) are made by the users ball: whichever of
    the two a node names, both dance, groups first, and the members join as they are
    made. users/alice/groups (devs) and groups/ops/members (alice) add up."""
    srv = make_server(cmd, tmp_path, ball, USERS_AND_GROUPS)
    danced = dance_twice(cmd, state, srv, root)
    assert ready(danced.live) == ["packages", "groups", "users"]
    assert group(root, "ops")[2:] == ["3100", "alice,bob"]
    assert group(root, "devs")[2:] == ["2345", "alice"]
    assert passwd(root, "alice")[2] == "2001" and "\nbob:!" in (root / "etc/shadow").read_text()
    # alice leaves devs: the users ball takes her out; ops keeps her, the groups ball says so.
    set_params(srv, {**USERS_AND_GROUPS, "users/alice/groups": "ops"})
    dance_twice(cmd, state, srv, root)
    assert group(root, "devs")[2:] == ["2345", ""] and group(root, "ops")[3] == "alice,bob"


def test_a_tree_owned_by_a_user_made_in_the_same_dance(
    cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    """The files README's tree, its owner and group made by the users ball: the node names
    files alone; users (and groups) come and run first."""
    params = {
        "users/web/uid": "2500",
        "files/dirs/www/path": "/srv/www",
        "files/dirs/www/owner": "web",
        "files/dirs/www/group": "web",
        "files/dirs/www/mode": "0750",
    }
    srv = make_server(cmd, tmp_path, "files", params)
    danced = dance_twice(cmd, state, srv, root)
    assert ready(danced.live) == ["packages", "groups", "users", "files"]
    st = (root / "srv/www").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (2500, int(group(root, "web")[2]), 0o750)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"groups/ops/members": "ghost"}, "ops/members: no user 'ghost' in /etc/passwd"),
        (
            {"groups/ops/members": "daemon", "users/daemon/state": "absent"},
            "'daemon' is to be removed (users/daemon/state is absent)",
        ),
        (
            {"groups/ops/state": "absent", "users/daemon/groups": "ops"},
            "ops/state: absent, but users/daemon/groups names it",
        ),
    ],
)
def test_groups_refuses_members_no_ball_makes_or_keeps(
    params: dict[str, str], message: str, cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    srv = make_server(cmd, tmp_path, "groups", {"groups/fine/gid": "3200", **params})
    refused(cmd, state, srv, root, message)


def test_users_refuses_a_group_no_ball_makes(
    cmd: Run, state: Path, tmp_path: Path, root: Path
) -> None:
    srv = make_server(cmd, tmp_path, "users", {"users/alice/groups": "nowhere"})
    refused(
        cmd,
        state,
        srv,
        root,
        "alice: no group 'nowhere' in /etc/group; make it with the groups ball",
    )


def test_every_ball_at_once_converges_in_one_dance(
    cmd: Run, state: Path, tmp_path: Path, debian_root: Path, units: Path, sysctl_stub: Path
) -> None:
    """Every README's example in one node (what this machine can do without a network or
    its kernel): one live dance does it all, the second changes nothing."""
    root = debian_root
    (root / "etc/ssh").mkdir()
    (root / "etc/ssh/sshd_config").write_text("#PermitRootLogin prohibit-password\n")
    swappiness = "1" if Path("/proc/sys/vm/swappiness").read_text().strip() != "1" else "2"
    params = {
        **USERS_AND_GROUPS,
        "packages/install": "disco-kept",
        "services/disco-new/enabled": "yes",
        "services/disco-old/enabled": "no",
        "files/lines/ssh-root/path": "/etc/ssh/sshd_config",
        "files/lines/ssh-root/line": "PermitRootLogin no",
        "files/lines/ssh-root/match": "^#?PermitRootLogin",
        "files/dirs/www/path": "/srv/www",
        "files/dirs/www/owner": "alice",
        "files/dirs/www/group": "ops",
        "files/dirs/www/mode": "0750",
        "sysctl/vm.swappiness": swappiness,
        "cron/backup/schedule": "30 2 * * *",
        "cron/backup/command": "/usr/local/bin/backup --all",
        "cron/backup/user": "alice",
        "hosts/db/address": "10.0.0.5",
        "hosts/db/names": "db1.example.com db1",
        "motd/text": "Welcome to the build farm. Ask #ops before rebooting.",
    }
    srv = make_server(cmd, tmp_path, "motd", params)
    for ball in ("cron", "files", "groups", "hosts", "packages", "services", "sysctl", "users"):
        (srv / "parameters" / NODE / "modules" / ball).touch()
    danced = dance_twice(cmd, state, srv, root)
    order = ready(danced.live)
    for first, then in (("packages", "groups"), ("groups", "users"), ("users", "files"),
                        ("files", "services"), ("packages", "services")):  # fmt: skip
        assert order.index(first) < order.index(then), order
    assert (root / "srv/www").stat().st_uid == 2001
    assert (root / "etc/ssh/sshd_config").read_text() == "PermitRootLogin no\n"
    assert (root / "etc/systemd/system/multi-user.target.wants/disco-new.service").is_symlink()
    assert (
        (root / "etc/cron.d/disco-backup")
        .read_text()
        .endswith(" alice /usr/local/bin/backup --all\n")
    )
    assert group(root, "ops")[3] == "alice,bob"
