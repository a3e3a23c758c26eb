"""`disco dance` end to end: fetch and order a node's modules from a server (DESIGN §4-§6)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import EXAMPLES, Run, assert_one_error, tree_snapshot

SEED = EXAMPLES / "seed"
NODE = "web1.example.com"
DEAD = "rsync://127.0.0.1:1/"  # loopback, nothing listens: refused at once


def make_server(
    root: Path, modules: dict[str, list[str]], node_modules: list[str], node: str = NODE
) -> Path:
    """A server directory: `modules` as `add_module` makes them, and `node` with one
    empty file per module in its modules map and one parameter of its own."""
    for name, requires in modules.items():
        add_module(root, name, requires)
    node_map = root / "parameters" / node / "modules"
    node_map.mkdir(parents=True)
    for name in node_modules:
        (node_map / name).touch()
    (root / "parameters" / node / "parameters").mkdir()
    (root / "parameters" / node / "parameters/colour").write_text("blue\n")
    return root


def add_module(root: Path, name: str, requires: list[str]) -> None:
    """Module `name` on server `root`: its `requires` lines and one file to deliver."""
    module = root / "modules" / name
    (module / "files/etc").mkdir(parents=True)
    (module / "files/etc" / f"{name}.conf").write_text(f"made by {name}\n")
    (module / "requires").write_text("".join(f"{line}\n" for line in requires))


@pytest.fixture(autouse=True)
def noop_only(real_root_unchanged: None) -> None:
    """These dances fetch and order: they run NOOP on the real root, which must not change."""


def dance(cmd: Run, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cmd("disco", "dance", "--noop", "--state-dir", str(state), *args)


def dance_on(
    cmd: Run, state: Path, server: Path, node: str = NODE
) -> subprocess.CompletedProcess[str]:
    return dance(cmd, state, "--server", str(server), "--node", node)


def ready(result: subprocess.CompletedProcess[str]) -> str:
    """The modules a successful dance announced, in order."""
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    prefix = "info: Ready to dance : "
    line = next((x for x in result.stdout.splitlines() if x.startswith(prefix)), "")
    assert line, result.stdout
    return line[len(prefix) :]


@pytest.fixture
def server(tmp_path: Path) -> Path:
    """A server where the node's one module `app` needs `base`."""
    return make_server(tmp_path / "srv", {"app": ["after base"], "base": []}, ["app"])


@pytest.fixture
def danced(cmd: Run, state: Path, server: Path) -> Path:
    """A state that has danced once with `server`; returns the server."""
    assert ready(dance_on(cmd, state, server)) == "base app"
    return server


# -- the shipped example --------------------------------------------------------------


def test_dance_the_shipped_example(cmd: Run, state: Path) -> None:
    result = dance(cmd, state, "--server", str(SEED), "--node", "localhost.localdomain")
    # NOOP: the seed's `service postgresql stop` is caught, and said so on stderr.
    assert result.stderr == "warning: Would execute : service postgresql stop\n"
    quiet = subprocess.CompletedProcess(result.args, result.returncode, result.stdout, "")
    assert ready(quiet) == "testmodule-1.0 othermodule-3.2"
    node = "parameters/localhost.localdomain"
    assert tree_snapshot(state / node) == tree_snapshot(SEED / node)
    assert tree_snapshot(state / "modules") == tree_snapshot(SEED / "modules")
    assert sorted(os.listdir(state / "parameters")) == ["localhost.localdomain"]


def test_dancing_again_changes_nothing(cmd: Run, state: Path, danced: Path) -> None:
    kept = ("reports", "txn/history")  # what each dance adds: its report and history
    before = {k: v for k, v in tree_snapshot(state).items() if not k.startswith(kept)}
    assert ready(dance_on(cmd, state, danced)) == "base app"
    after = {k: v for k, v in tree_snapshot(state).items() if not k.startswith(kept)}
    assert after == before


# -- order ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modules", "node_modules", "order"),
    [
        ({"a": ["after b"], "b": []}, ["a", "b"], "b a"),
        ({"a": [], "b": ["before a"]}, ["a", "b"], "b a"),
        ({"c": [], "b": [], "a": []}, ["c", "b", "a"], "a b c"),
        ({"a": ["after b"], "b": [], "c": []}, ["a", "c"], "b a c"),
        ({"z": ["# only a comment", "", "after y  # inline"], "y": []}, ["z", "y"], "y z"),
    ],
    ids=["after", "before", "alphabetical", "unconstrained", "comments"],
)
def test_modules_dance_in_dependency_then_alphabetical_order(
    modules: dict[str, list[str]], node_modules: list[str], order: str, cmd: Run, tmp_path: Path
) -> None:
    server = make_server(tmp_path / "srv", modules, node_modules)
    assert ready(dance_on(cmd, tmp_path / "state", server)) == order


@pytest.mark.parametrize(
    ("requires", "order"),
    [(["after lib"], "lib app"), (["before lib"], "app lib"), (["lib"], "lib app")],
    ids=["after", "before", "plain-name"],
)
def test_a_module_named_only_in_requires_is_fetched(
    requires: list[str], order: str, cmd: Run, state: Path, tmp_path: Path
) -> None:
    server = make_server(tmp_path / "srv", {"app": requires, "lib": []}, ["app"])
    assert ready(dance_on(cmd, state, server)) == order
    assert tree_snapshot(state / "modules/lib") == tree_snapshot(server / "modules/lib")


# -- servers --------------------------------------------------------------------------


def test_the_server_comes_from_the_disco_server_uri_parameter(
    cmd: Run, state: Path, server: Path
) -> None:
    assert cmd("disco-param", "set", "disco/server/uri", str(server)).returncode == 0
    assert ready(dance(cmd, state, "--node", NODE)) == "base app"
    assert (state / "modules/base/files/etc/base.conf").read_text() == "made by base\n"


@pytest.mark.parametrize("dead", [DEAD, "{tmp}/gone"], ids=["refused", "no-such-directory"])
def test_a_dead_server_is_passed_over_for_the_next_uri(
    dead: str, cmd: Run, state: Path, server: Path, tmp_path: Path
) -> None:
    dead = dead.format(tmp=tmp_path)
    uris = f"{dead}\n{server}\n"
    assert cmd("disco-param", "set", "disco/server/uri", input=uris).returncode == 0
    result = dance(cmd, state, "--node", NODE)
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and dead in warnings[0]
    assert f"info: Fetched from server {server}" in lines
    assert ready(result) == "base app"


def test_server_flag_overrides_the_parameter(cmd: Run, state: Path, server: Path) -> None:
    assert cmd("disco-param", "set", "disco/server/uri", DEAD).returncode == 0
    assert ready(dance_on(cmd, state, server)) == "base app"


def test_a_file_removed_on_the_server_is_removed_locally(
    cmd: Run, state: Path, danced: Path
) -> None:
    (danced / "modules/base/files/etc/base.conf").unlink()
    (danced / "modules/app/files/etc/extra.conf").write_text("new\n")
    (danced / f"parameters/{NODE}/parameters/colour").unlink()
    assert ready(dance_on(cmd, state, danced)) == "base app"
    for name in ("base", "app"):
        assert tree_snapshot(state / "modules" / name) == tree_snapshot(danced / "modules" / name)
    assert tree_snapshot(state / "parameters" / NODE) == tree_snapshot(danced / "parameters" / NODE)
    assert not (state / "modules/base/files/etc/base.conf").exists()


# -- the command line -----------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["before", "after"], ids=["before-the-command", "after-the-command"]
)
def test_state_dir_flag_goes_before_or_after_the_command(
    where: str, cmd: Run, state: Path, server: Path, tmp_path: Path
) -> None:
    elsewhere = str(tmp_path / "elsewhere")
    flags = ["--server", str(server), "--node", NODE]
    if where == "before":
        result = cmd("disco", "--state-dir", elsewhere, "dance", "--noop", *flags)
    else:
        result = cmd("disco", "dance", "--noop", *flags, "--state-dir", elsewhere)
    assert ready(result) == "base app"
    assert (tmp_path / "elsewhere/modules/app/requires").is_file()
    assert not state.exists()  # DISCO_STATE was overridden


@pytest.mark.parametrize("argv", [["--help"], ["dance", "--help"]], ids=["disco", "dance"])
def test_help_shows_an_example(argv: list[str], cmd: Run) -> None:
    result = cmd("disco", *argv)
    assert result.returncode == 0
    assert "disco dance --server " in result.stdout


def test_a_dance_holding_the_lock_makes_another_exit_3(cmd: Run, state: Path, danced: Path) -> None:
    before = tree_snapshot(state)
    fd = os.open(state / "lock", os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_one_error(dance_on(cmd, state, danced), 3, "lock", str(state / "lock"))
    finally:
        os.close(fd)
    assert tree_snapshot(state) == before
    assert ready(dance_on(cmd, state, danced)) == "base app"  # released with the holder


# -- bad input: one `error:` line, the right exit status, the state as it was ---------


@pytest.mark.parametrize("name", ["../etc", "a/b", "bad name", "-rf", "..evil", "_x", "a" * 256])
def test_a_bad_module_name_in_requires_is_refused(
    name: str, cmd: Run, state: Path, danced: Path
) -> None:
    before = tree_snapshot(state)
    (danced / "modules/app/requires").write_text(f"after base\n{name}\n")
    result = dance_on(cmd, state, danced)
    if " " in name:  # two words that are neither 'after' nor 'before'
        assert_one_error(result, 1, "module 'app'", "line 2", name)
    else:
        assert_one_error(result, 1, "module 'app'", "line 2", f"'{name[:40]}")
    assert tree_snapshot(state) == before


@pytest.mark.parametrize(
    "name", ["bad name", "x~", "-rf", "_x", "caf\u00e9", "..evil", "...", "..x~"]
)
def test_a_bad_module_name_in_the_modules_map_is_refused(
    name: str, cmd: Run, state: Path, danced: Path
) -> None:
    before = tree_snapshot(state)
    (danced / f"parameters/{NODE}/modules" / name).touch()
    fix = f"rename or remove parameters/{NODE}/modules/{name} there"
    result = dance_on(cmd, state, danced)
    assert_one_error(result, 1, NODE, "modules map", f"'{name}'", str(danced), fix)
    assert tree_snapshot(state) == before


def test_hidden_files_in_the_modules_map_are_not_modules(
    cmd: Run, state: Path, server: Path
) -> None:
    for name in (".gitkeep", ".app.swp"):  # what git and editors leave
        (server / f"parameters/{NODE}/modules" / name).touch()
    assert ready(dance_on(cmd, state, server)) == "base app"


def test_a_requires_cycle_is_refused_naming_every_module_in_it(
    cmd: Run, state: Path, danced: Path
) -> None:
    before = tree_snapshot(state)
    # app -> base -> db -> app, and `web` hangs off the cycle without being part of it.
    add_module(danced, "db", ["after app"])
    add_module(danced, "web", ["after app"])
    (danced / "modules/base/requires").write_text("after db\n")
    (danced / f"parameters/{NODE}/modules/web").touch()
    result = dance_on(cmd, state, danced)
    assert_one_error(result, 1, "cycle")
    cycle = result.stderr.split("cycle: ", 1)[1].split(";", 1)[0]
    assert set(cycle.split(" -> ")) == {"app", "base", "db"}
    assert tree_snapshot(state) == before


def test_a_required_module_the_server_lacks_is_refused_naming_who_requires_it(
    cmd: Run, state: Path, danced: Path
) -> None:
    before = tree_snapshot(state)
    (danced / "modules/base/requires").write_text("before ghost\n")
    assert_one_error(dance_on(cmd, state, danced), 1, "'ghost'", "module 'base'", str(danced))
    assert tree_snapshot(state) == before


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("{tmp}/no-such-server", "{tmp}/no-such-server"),
        (DEAD, DEAD),
        ("bad host!", "'bad host!'"),
        ("", "disco/server/uri"),
    ],
    ids=["does-not-exist", "does-not-answer", "invalid-uri", "not-configured"],
)
def test_a_server_that_cannot_be_used_is_an_error(
    uri: str, named: str, cmd: Run, state: Path, danced: Path, tmp_path: Path
) -> None:
    before = tree_snapshot(state)
    uri, named = uri.format(tmp=tmp_path), named.format(tmp=tmp_path)
    if uri:
        assert cmd("disco-param", "set", "disco/server/uri", uri).returncode == 0
        before = tree_snapshot(state)
    assert_one_error(dance(cmd, state, "--node", NODE), 1, named)
    assert tree_snapshot(state) == before


def test_a_node_not_on_the_server_is_an_error(cmd: Run, state: Path, danced: Path) -> None:
    before = tree_snapshot(state)
    assert_one_error(dance_on(cmd, state, danced, "db1.example.com"), 1, "'db1.example.com'")
    assert tree_snapshot(state) == before


def test_a_node_without_a_modules_map_is_an_error(cmd: Run, state: Path, danced: Path) -> None:
    before = tree_snapshot(state)
    shutil.rmtree(danced / f"parameters/{NODE}/modules")
    assert_one_error(dance_on(cmd, state, danced), 1, f"'{NODE}'", "modules map")
    assert tree_snapshot(state) == before


@pytest.mark.parametrize("break_it", ["cycle", "missing-module", "server-gone"])
def test_a_failed_fetch_keeps_the_last_good_copy(
    break_it: str, cmd: Run, state: Path, danced: Path
) -> None:
    before = tree_snapshot(state)
    # New content the failed dance must not let through...
    (danced / "modules/app/files/etc/app.conf").write_text("changed\n")
    (danced / f"parameters/{NODE}/parameters/colour").write_text("red\n")
    # ...and the break.
    if break_it == "cycle":
        (danced / "modules/base/requires").write_text("after app\n")
    elif break_it == "missing-module":
        shutil.rmtree(danced / "modules/base")
    else:
        danced.rename(danced.with_name("moved"))
    result = dance_on(cmd, state, danced)
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert tree_snapshot(state) == before


@pytest.mark.parametrize("node", ["a/b", "..", "web 1", ""])
def test_a_bad_node_name_is_a_usage_error(node: str, cmd: Run, state: Path, danced: Path) -> None:
    before = tree_snapshot(state)
    names = (f"'{node}'", "node") if node else ("node name is empty",)
    assert_one_error(dance_on(cmd, state, danced, node), 2, *names)
    assert tree_snapshot(state) == before


@pytest.mark.parametrize(
    "argv",
    [["dance", "--noop", "--bogus"], ["frob"], [], ["dance", "--noop", "--node"]],
    ids=["bad-flag", "unknown-command", "no-command", "flag-without-value"],
)
def test_a_bad_command_line_is_a_usage_error(argv: list[str], cmd: Run, state: Path) -> None:
    assert_one_error(cmd("disco", *argv), 2)
    assert not state.exists()


def test_a_module_that_left_the_dance_is_removed_locally(
    cmd: Run, state: Path, danced: Path
) -> None:
    add_module(danced, "other", [])
    node_map = danced / "parameters" / NODE / "modules"
    (node_map / "app").unlink()
    (node_map / "other").touch()
    assert ready(dance_on(cmd, state, danced)) == "other"
    assert sorted(p.name for p in (state / "modules").iterdir()) == ["other"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--server", "bad host!", "--node", NODE],
        ["--node", NODE],
        ["--server", DEAD, "--node", ".."],
    ],
    ids=["bad-uri", "no-server", "bad-node"],
)
def test_a_dance_that_cannot_start_leaves_a_fresh_machine_without_state(
    argv: list[str], cmd: Run, state: Path
) -> None:
    result = dance(cmd, state, *argv)
    assert result.returncode in (1, 2) and result.stderr.startswith("error: ")
    assert not state.exists()


def test_a_verbose_rsync_is_never_read_as_module_names(cmd: Run, state: Path, server: Path) -> None:
    """rsync -v prints "sending incremental file list": not a module to fetch."""
    setting = ("disco-param", "--state-dir", str(state), "set", "disco/client/cmds/rsync")
    assert cmd(*setting, "rsync -aWHv").returncode == 0
    assert ready(dance_on(cmd, state, server)) == "base app"


def test_the_default_node_is_what_hostname_f_prints(cmd: Run, state: Path, server: Path) -> None:
    fqdn = subprocess.run(["hostname", "-f"], capture_output=True, text=True, check=True)
    name = fqdn.stdout.strip()
    result = dance(cmd, state, "--server", str(server))  # the server has NODE only
    assert_one_error(result, 1, f"node '{name}' is not on server")
    assert "hostname -f" in cmd("disco", "dance", "--help").stdout
