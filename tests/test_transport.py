"""Server URIs and the rsync command lines built for them (DESIGN §5)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from disco.client.state import load_settings
from disco.client.transport import Kind, has_rsh, parse_server, rsync_argv, sharing, without_quiet
from disco.errors import DiscoError
from disco.tree.params import ParamStore

SEED_RSYNC = tuple(shlex.split('rsync -qaWHe "ssh -i /home/disco/.ssh/id_rsa_disco"'))


@pytest.mark.parametrize(
    "uri, kind, parameters, module",
    [
        ("/srv/disco", Kind.LOCAL, "/srv/disco/parameters/n1/", "/srv/disco/modules/m/"),
        ("/srv/disco/", Kind.LOCAL, "/srv/disco/parameters/n1/", "/srv/disco/modules/m/"),
        ("disco@aklabs.net", Kind.SSH, "disco@aklabs.net::parameters/n1/", "disco@aklabs.net::m/"),
        ("server", Kind.SSH, "server::parameters/n1/", "server::m/"),
        (
            "rsync://127.0.0.1:8730/",
            Kind.DAEMON,
            "rsync://127.0.0.1:8730/parameters/n1/",
            "rsync://127.0.0.1:8730/m/",
        ),
        ("rsync://host", Kind.DAEMON, "rsync://host/parameters/n1/", "rsync://host/m/"),
    ],
)
def test_server_uris(uri: str, kind: Kind, parameters: str, module: str) -> None:
    server = parse_server(uri)
    assert server.kind is kind
    assert server.parameters("n1") == parameters
    assert server.module("m") == module


def test_a_relative_directory_is_made_absolute() -> None:
    server = parse_server("./examples/seed")
    assert server.kind is Kind.LOCAL
    assert server.base == os.path.join(os.getcwd(), "examples/seed")


@pytest.mark.parametrize("uri", ["bad host!", "a@b@c", "host:x", "host:", "a@b:22:1", ""])
def test_unreadable_uris_are_errors(uri: str) -> None:
    with pytest.raises(DiscoError, match="is neither a directory"):
        parse_server(uri)


def test_the_seed_rsync_command_keeps_its_quoted_ssh(tmp_path: Path) -> None:
    store = ParamStore(tmp_path)
    store.set(
        ("disco", "client", "cmds", "rsync"), 'rsync -qaWHe "ssh -i /home/disco/.ssh/id_rsa_disco"'
    )
    store.set(("disco", "server", "uri"), "/srv/a\n/srv/b\n")
    settings = load_settings(store)
    assert settings.rsync == ("rsync", "-qaWHe", "ssh -i /home/disco/.ssh/id_rsa_disco")
    assert [server.uri for server in settings.servers] == ["/srv/a", "/srv/b"]
    assert [server.uri for server in load_settings(store, ["/other"]).servers] == ["/other"]


def test_rsync_defaults_and_bad_quoting(tmp_path: Path) -> None:
    store = ParamStore(tmp_path)
    assert load_settings(store, ["/srv"]).rsync == ("rsync", "-aWHS")
    store.set(("disco", "client", "cmds", "rsync"), 'rsync -e "ssh')
    with pytest.raises(DiscoError, match="cannot be split into words"):
        load_settings(store, ["/srv"])


def test_ssh_servers_get_a_remote_shell_unless_one_is_named() -> None:
    server = parse_server("disco@host")
    dest = Path("/st/new")
    plain = rsync_argv(("rsync", "-aWH"), server, ["disco@host::m/"], dest, None)
    assert plain == ["rsync", "-aWH", "--delete", "--rsh=ssh", "disco@host::m/", "/st/new/"]
    seed = rsync_argv(SEED_RSYNC, server, ["disco@host::m/"], dest, Path("/st/old"))
    assert seed == [*SEED_RSYNC, "--delete", "--link-dest=/st/old", "disco@host::m/", "/st/new/"]


@pytest.mark.parametrize(
    "argv, named",
    [
        (SEED_RSYNC, True),
        (("rsync", "-a", "--rsh=ssh -p 22"), True),
        (("rsync", "-a", "-e", "ssh"), True),
        (("rsync", "-aWH"), False),
        (("rsync", "--exclude=x"), False),
    ],
)
def test_has_rsh(argv: tuple[str, ...], named: bool) -> None:
    assert has_rsh(argv) is named


@pytest.mark.parametrize(
    "argv, quiet_free",
    [
        (SEED_RSYNC, ("rsync", "-aWHe", "ssh -i /home/disco/.ssh/id_rsa_disco")),
        (("rsync", "-q", "-a"), ("rsync", "-a")),
        (("rsync", "--quiet", "-aq", "-e", "ssh -q"), ("rsync", "-a", "-e", "ssh -q")),
        (("rsync", "-T/tmp/q", "-a"), ("rsync", "-T/tmp/q", "-a")),
    ],
)
def test_the_change_check_drops_quiet_only(
    argv: tuple[str, ...], quiet_free: tuple[str, ...]
) -> None:
    assert without_quiet(argv) == quiet_free


OPTS = "-o ControlMaster=auto -o ControlPath=/st/ssh/%C -o ControlPersist=60"


@pytest.mark.parametrize(
    "argv, shared",
    [
        (SEED_RSYNC, ("rsync", "-qaWHe", f"ssh -i /home/disco/.ssh/id_rsa_disco {OPTS}")),
        (("rsync", "-a"), ("rsync", "-a", f"--rsh=ssh {OPTS}")),
        (("rsync", "--rsh=ssh -p 2222", "-a"), ("rsync", f"--rsh=ssh -p 2222 {OPTS}", "-a")),
        (("rsync", "--rsh", "ssh", "-a"), ("rsync", "--rsh", f"ssh {OPTS}", "-a")),
        (("rsync", "-essh"), ("rsync", f"-essh {OPTS}")),
    ],
    ids=["seed", "none", "rsh=", "rsh-word", "attached"],
)
def test_ssh_is_told_to_share_one_connection(
    argv: tuple[str, ...], shared: tuple[str, ...]
) -> None:
    assert sharing(argv, Path("/st/ssh")) == shared
    assert has_rsh(shared)


@pytest.mark.parametrize(
    "uri, base, port",
    [("disco@host:2222", "disco@host::", 2222), ("[::1]:22", "[::1]::", 22), ("h", "h::", None)],
)
def test_an_ssh_uri_may_name_its_port(uri: str, base: str, port: int | None) -> None:
    server = parse_server(uri)
    assert (server.kind, server.base, server.port) == (Kind.SSH, base, port)
    argv = rsync_argv(("rsync", "-a"), server, [server.module("m")], Path("/d"), None)
    assert argv[:3] == ["rsync", "-a", f"--rsh=ssh -p {port}" if port else "--delete"]
    seed = ("rsync", "-qaWHe", "ssh -i /k")
    assert rsync_argv(seed, server, [], Path("/d"), None)[2] == (
        f"ssh -i /k -p {port}" if port else "ssh -i /k"
    )


@pytest.mark.parametrize("uri", ["host:0", "host:65536", "host:99999"])
def test_a_port_out_of_range_is_an_error(uri: str) -> None:
    with pytest.raises(DiscoError, match="is not a port"):
        parse_server(uri)
