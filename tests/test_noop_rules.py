"""Interception by effect (DESIGN §7, docs/noop-rules.md): the rules table as the bash
interceptor compiles and applies it, questions answered for real (by the host where they
are about the running host), file-only effects shown as live makes them, outside effects
intercepted in NOOP and, on a root that is not the running system, live too."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import BIN, Run, assert_one_error, refuse_live_dance_on_this_machine
from disco.errors import DiscoError
from disco.noop.questions import answer, is_question
from disco.noop.rules import load_rules, parse, shipped
from disco.noop.view import build_view
from test_dance_steps import NODE, dance, make_server, records

# -- the table, as the interceptor's bash reads it ----------------------------------------

CASES = [
    ("dpkg --compare-versions 1.0 lt 2.0", "question"),
    ("dpkg -l openssh-server", "question"),
    ("dpkg --print-architecture", "question"),
    ("dpkg -i /tmp/x.deb", "files"),
    ("dpkg --frobnicate", "outside"),  # a pattern the table does not know
    ("systemctl is-enabled ssh", "question"),
    ("systemctl --quiet is-enabled ssh", "question"),
    ("systemctl is-active --quiet ssh", "host=3"),
    ("systemctl -q is-active ssh", "host=3"),
    ("systemctl status ssh", "host=3"),
    ("systemctl enable ssh", "files"),
    ("systemctl --root=/srv/img enable ssh", "files"),
    ("systemctl mask --now ssh", "files"),
    ("systemctl start ssh", "outside"),
    ("systemctl daemon-reload", "outside"),
    ("systemctl", "outside"),
    ("systemctl start is-active", "outside"),  # a verb is a word, not a substring
    ("service ssh status", "host=3"),
    ("service ssh restart", "outside"),
    ("service --status-all", "question"),
    ("invoke-rc.d --query ssh start", "question"),
    ("invoke-rc.d ssh start", "outside"),
    ("pidof sshd", "host=1"),
    ("pgrep -f sshd", "host=1"),
    ("kill -l", "question"),
    ("kill -TERM 1", "outside"),
    ("apt-get -s install foo", "question"),
    ("apt-get install foo", "fetch"),
    ("apt -y full-upgrade", "fetch"),
    ("apt-get update", "outside"),
    ("rpm -qa", "question"),
    ("rpm -e foo", "outside"),
    ("sysctl kernel.hostname", "question"),
    ("sysctl -n kernel.hostname", "question"),
    ("sysctl -w kernel.hostname=x", "outside"),
    ("sysctl kernel.hostname=x", "outside"),
    ("date +%s", "question"),
    ("date -s 2020-01-01", "outside"),
    ("curl https://example.com", "outside"),
    ("timedatectl", "question"),
    ("timedatectl set-time 12:00", "outside"),
    ("ls -l", "run"),  # not in the table at all
]


def kinds(view: Path, argvs: list[str]) -> list[str]:
    """What the compiled table says of each command line, asked of bash itself."""
    script = (
        'shopt -s extglob; . "$1/noop/.rules"; shift\n'
        'for line in "$@"; do read -ra argv <<< "$line"; args=\n'
        "  for a in \"${argv[@]:1}\"; do args+=$'\\x1f'$a; done\n"
        '  disco_kind "${argv[0]}" "$args"; echo "$kind"; done\n'
    )
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(view), *argvs],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.splitlines()


def test_the_shipped_table_classifies_invocations_by_effect(tmp_path: Path) -> None:
    view = build_view(tmp_path / "view", tuple(shipped()), Path("/"))
    got = kinds(view.path, [argv for argv, _ in CASES])
    assert list(zip([a for a, _ in CASES], got)) == CASES


def test_a_command_whose_rules_run_everything_for_real_gets_no_interceptor(
    tmp_path: Path,
) -> None:
    view = build_view(tmp_path / "view", tuple(shipped()), Path("/"))
    assert not (view.noop / "update-rc.d").exists()
    assert not (view.noop / "deb-systemd-helper").exists()
    assert (view.noop / "systemctl").is_symlink() and (view.noop / "pidof").is_symlink()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("frob\n", ["x.rules:1", "needs a command and a kind"]),
        ("frob sometimes ...\n", ["x.rules:1", "sometimes", "host=STATUS"]),
        ("frob host ...\n", ["x.rules:1", "'host'"]),
        ("# fine\nfrob outside @(a|b\n", ["x.rules:2", "@(a|b"]),
        ("frob outside $(reboot)\n", ["x.rules:1", "$(reboot)"]),
        ("frob outside a(b)\n", ["x.rules:1", "a(b)"]),
        ("frob outside @(a))\n", ["x.rules:1", "@(a))"]),
        ("/usr/bin/frob outside ...\n", ["x.rules:1", "/usr/bin/frob"]),
    ],
)
def test_a_bad_rule_is_an_error_naming_its_line(text: str, words: list[str]) -> None:
    with pytest.raises(DiscoError) as caught:
        parse(text, "x.rules")
    for word in words:
        assert word in str(caught.value)


def test_rules_of_noop_d_come_before_the_shipped_ones(tmp_path: Path) -> None:
    (tmp_path / "noop.d").mkdir()
    (tmp_path / "noop.d/10-site.rules").write_text("systemctl question start ...\n")
    (tmp_path / "noop.d/20-names.list").write_text("# ours\nlaunch-missiles\n")
    (tmp_path / "noop.d/30-ignored.txt").write_text("not a rule at all\n")
    rules = load_rules(tmp_path)
    assert [r.command for r in rules[:2]] == ["systemctl", "launch-missiles"]
    view = build_view(tmp_path / "view", rules, Path("/"))
    assert kinds(view.path, ["systemctl start ssh", "launch-missiles now"]) == [
        "question",
        "outside",
    ]


# -- the asker: what it puts to the host, and what it refuses ---------------------------


@pytest.mark.parametrize(
    ("argv", "asked"),
    [
        ("pidof sshd", True),
        ("pgrep -f -x sshd", True),
        ("systemctl is-active --quiet ssh", True),
        ("systemctl -q is-active ssh cron", True),
        ("systemctl show -p ActiveState --value ssh", True),
        ("systemctl --property=ActiveState show ssh", True),
        ("service ssh status", True),
        ("start-stop-daemon --status --pidfile /run/x.pid", True),
        ("runlevel", True),
        ("systemctl start ssh", False),
        ("systemctl is-active ssh --now", False),
        ("systemctl -H other.host is-active ssh", False),
        ("systemctl --root=/srv is-active ssh", False),
        ("systemctl is-active $(reboot)", False),
        ("service ssh restart", False),
        ("service ssh status extra", False),
        ("start-stop-daemon --stop --pidfile /run/x.pid", False),
        ("start-stop-daemon --status --exec /bin/x --start", False),
        ("kill -TERM 1", False),
        ("rm -rf /", False),
        ("runlevel 5", False),
    ],
)
def test_the_asker_puts_only_read_only_questions_to_the_host(argv: str, asked: bool) -> None:
    assert is_question(argv.split()) is asked


def test_the_asker_refuses_what_is_not_a_question_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    status, out, err = answer(["bash", "-c", f"touch {marker}"])
    assert (status, out) == (1, b"")
    assert b"is not a question disco asks the host" in err
    assert not marker.exists()


# -- end to end ---------------------------------------------------------------------------

UNIT = """[Unit]
Description=disco test unit
[Service]
ExecStart=/bin/true
[Install]
WantedBy=multi-user.target
"""
INIT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          disco-test
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
### END INIT INFO
exit 0
"""
FILE_ONLY = """\
if dpkg --compare-versions 1.0 lt 0.9; then mkdir /etc/upgraded-from-old; fi
if dpkg --compare-versions 1.0 gt 0.9; then echo newer > /etc/compared; fi
systemctl enable disco-test.service
update-rc.d disco-test defaults
systemctl daemon-reload
systemctl restart disco-test.service
echo "restart: $?"
"""


def file_only_root(root: Path) -> None:
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/disco-test.service").write_text(UNIT)
    (root / "etc/init.d").mkdir()
    (root / "etc/init.d/disco-test").write_text(INIT)
    (root / "etc/init.d/disco-test").chmod(0o755)


def test_questions_and_file_only_effects_run_for_real_and_noop_shows_what_live_makes(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    file_only_root(scratch_root)
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": FILE_ONLY}})
    noop = dance(cmd, server, scratch_root)
    assert noop.returncode == 0, noop.stdout + noop.stderr
    assert not (scratch_root / "etc/compared").exists()
    live = dance(cmd, server, scratch_root, noop=False)
    assert live.returncode == 0, live.stdout + live.stderr
    shown = records(noop)
    assert shown == records(live)
    paths = [line.split(" : ")[0].split(": ", 3)[-1] for line in shown]
    assert "/etc/compared" in paths and "/etc/upgraded-from-old" not in paths
    assert "/etc/systemd/system/multi-user.target.wants/disco-test.service" in paths
    assert "/etc/rc2.d/S01disco-test" in paths and "/etc/rc0.d/K01disco-test" in paths
    for result in (noop, live):  # not the running system: outside effects intercepted
        err = result.stderr.splitlines()
        assert "warning: Would execute : systemctl daemon-reload" in err
        assert "warning: Would execute : systemctl restart disco-test.service" in err
        assert "restart: 0" in result.stdout.splitlines()
    wants = scratch_root / "etc/systemd/system/multi-user.target.wants/disco-test.service"
    assert wants.is_symlink()  # live made it


def test_live_on_another_root_intercepts_outside_effects_unless_effects_run(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    script = "service postgresql stop; echo status $?\n"
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": script}})
    held = dance(cmd, server, scratch_root, noop=False)
    assert held.returncode == 0, held.stderr
    assert held.stderr.splitlines() == ["warning: Would execute : service postgresql stop"]
    assert held.stdout.splitlines()[-1] == "status 0"
    ran = dance(cmd, server, scratch_root, "--effects", "run", noop=False)
    assert ran.returncode == 0, ran.stderr
    assert "service postgresql stop: done" in ran.stdout.splitlines()  # the root's stub
    assert "Would execute" not in ran.stderr


def test_a_script_with_a_path_of_its_own_is_still_intercepted(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    # Only bash's builtins are functions in BASH_ENV; the rest are caught by the shims.
    script = (
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"
        "service postgresql stop; /usr/sbin/service postgresql start\n"
        'sleep 60 & kill -TERM $!; echo "functions: $(declare -F | wc -l)"\n'
    )
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": script}})
    noop = dance(cmd, server, scratch_root)
    assert noop.returncode == 0, noop.stderr
    err = noop.stderr.splitlines()
    assert "warning: Would execute : service postgresql stop" in err
    assert "warning: Would execute : service postgresql start" in err
    assert any(line.startswith("warning: Would execute : kill -TERM ") for line in err)
    assert "functions: 1" in noop.stdout.splitlines()  # kill alone


def test_effects_run_with_noop_is_a_usage_error(cmd: Run, tmp_path: Path) -> None:
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": "true\n"}})
    result = dance(cmd, server, tmp_path, "--effects", "run")
    assert_one_error(result, 2, "--effects run", "NOOP")
    result = dance(cmd, server, tmp_path, "--effects", "sometimes", noop=False)
    assert result.returncode == 2 and "invalid choice: 'sometimes'" in result.stderr


def test_a_question_about_the_running_host_gets_the_hosts_answer(
    cmd: Run, tmp_path: Path, real_root_unchanged: None
) -> None:
    name = f"disco-probe-{uuid.uuid4().hex[:8]}"
    probe = subprocess.Popen(["bash", "-c", f"exec -a {name} sleep 120"])
    try:
        script = (
            f'echo "pidof: $(pidof {name}) $?"\n'
            f'echo "pgrep: $(pgrep -f ^{name}) $?"\n'
            'echo "none: $(pidof disco-no-such-process) $?"\n'
        )
        server = make_server(tmp_path / "srv", {"m": {"scripts/10-ask.sh": script}})
        result = dance(cmd, server, Path("/"))
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout.splitlines()
        assert f"pidof: {probe.pid} 0" in out  # the host's pid, not the sandbox's nothing
        assert f"pgrep: {probe.pid} 0" in out
        assert "none:  1" in out
    finally:
        probe.kill()
        probe.wait()


def test_a_host_question_on_another_root_is_answered_as_by_a_root_running_nothing(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    script = "pidof init systemd bash; echo pidof $?\nsystemctl is-active -q ssh; echo active $?\n"
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": script}})
    for noop in (True, False):
        result = dance(cmd, server, scratch_root, noop=noop)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-2:] == ["pidof 1", "active 3"]


def test_noop_d_and_sensitive_d_come_from_the_root_being_configured(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    """The host's /etc/disco is not read with --root: the dance runs in its own mount
    namespace where the host's /etc is an overlay with a list of its own in it."""
    disco = scratch_root / "etc/disco"
    (disco / "noop.d").mkdir(parents=True)
    (disco / "noop.d/test.list").write_text("# ours\nlaunch-missiles\n")
    (disco / "noop.d/test.rules").write_text("kill question -TERM ...\n")
    (disco / "sensitive.d").mkdir()
    (disco / "sensitive.d/app.list").write_text("/etc/app.secret\n")
    upper, work = tmp_path / "etc-upper", tmp_path / "etc-work"
    (upper / "disco/noop.d").mkdir(parents=True)
    (upper / "disco/noop.d/host.list").write_text("host-only-name\n")
    work.mkdir()
    script = (
        'launch-missiles now\nhost-only-name; echo "host-only: $?"\n'
        'sleep 60 & kill -TERM $!; wait $!; echo "killed: $?"\n'
        "echo hush > /etc/app.secret\n"
    )
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": script}})
    argv = ["disco", "dance", "--noop", "--server", str(server), "--node", NODE,
            "--root", str(scratch_root)]  # fmt: skip
    env = {**os.environ, "DISCO_STATE": str(tmp_path / "state"), "NO_COLOR": "1", "NOOP": ""}
    refuse_live_dance_on_this_machine(tuple(argv), env)
    overlay = f"lowerdir=/etc,upperdir={upper},workdir={work}"
    shell = f'mount -t overlay overlay -o {overlay} /etc && exec "$@"'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, "sh",
         str(BIN / "disco"), *argv[1:]],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    err, out = result.stderr.splitlines(), result.stdout.splitlines()
    assert "warning: Would execute : launch-missiles now" in err
    assert "host-only: 127" in out  # the host's list is not the root's
    assert "killed: 143" in out  # the root's rule: kill -TERM runs for real
    assert "(content hidden: sensitive)" in out
    assert not Path("/etc/disco/noop.d/host.list").exists()


def test_a_bad_rules_file_of_the_root_is_one_error_naming_it(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    (scratch_root / "etc/disco/noop.d").mkdir(parents=True)
    (scratch_root / "etc/disco/noop.d/bad.rules").write_text("frob sometimes ...\n")
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": "true\n"}})
    result = dance(cmd, server, scratch_root)
    assert result.stdout.splitlines()[-1].startswith("info: Ready to dance")
    assert_one_error(result, 1, "bad.rules:1", "sometimes")


def test_the_asker_refuses_a_non_question_that_a_rule_sends_it(
    cmd: Run, tmp_path: Path, real_root_unchanged: None
) -> None:
    """A rule of noop.d may call anything a host question; the asker still runs only what
    it knows to be read-only. The host's /etc/disco is an overlay in the dance's own mount
    namespace here, so this machine's /etc is never written."""
    upper, work = tmp_path / "etc-upper", tmp_path / "etc-work"
    (upper / "disco/noop.d").mkdir(parents=True)
    (upper / "disco/noop.d/bad.rules").write_text("systemctl host=0 start ...\n")
    work.mkdir()
    script = 'systemctl start disco-no-such.service; echo "start: $?"\n'
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-x.sh": script}})
    argv = ["disco", "dance", "--noop", "--server", str(server), "--node", NODE]
    env = {**os.environ, "DISCO_STATE": str(tmp_path / "state"), "NO_COLOR": "1", "NOOP": ""}
    refuse_live_dance_on_this_machine(tuple(argv), env)
    overlay = f"lowerdir=/etc,upperdir={upper},workdir={work}"
    shell = f'mount -t overlay overlay -o {overlay} /etc && exec "$@"'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, "sh",
         str(BIN / "disco"), *argv[1:]],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "disco: 'systemctl start disco-no-such.service' is not a question disco asks the host"
        in result.stderr.splitlines()
    )
    assert "start: 1" in result.stdout.splitlines()
