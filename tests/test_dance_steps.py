"""What each step of a dance does (DESIGN §6-§10): failures, the change records of every
kind of change, NOOP stacking and interception, the parameters a step sees, exit
statuses, `--module`, `--diff` and `disco report`. Every server is built in a temporary
folder; every live dance targets a scratch root."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Run

NODE = "node1.example.com"
Spec = dict[str, dict[str, str]]  # module name -> {path in the module: content}


def make_server(where: Path, modules: Spec, params: dict[str, str] | None = None) -> Path:
    """SERVER/modules/<m>/<path> for each file of `modules`, the node with every module
    in its modules map and `params` under SERVER/parameters/NODE/parameters/."""
    for name, files in modules.items():
        (where / "modules" / name).mkdir(parents=True)
        for rel, text in files.items():
            path = where / "modules" / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    (where / "parameters" / NODE / "modules").mkdir(parents=True)
    for name in modules:
        (where / "parameters" / NODE / "modules" / name).touch()
    for rel, text in (params or {}).items():
        path = where / "parameters" / NODE / "parameters" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return where


def dance(
    cmd: Run, server: Path, root: Path, *args: str, noop: bool = True
) -> subprocess.CompletedProcess[str]:
    """`disco dance` of NODE from `server` onto `root`: NOOP unless noop=False."""
    flags = ("--noop",) if noop else ()
    return cmd("disco", "dance", "--server", str(server), "--node", NODE, "--root", str(root),
               *flags, *args, env={"NOOP": ""})  # fmt: skip


def records(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("info: File:")]


def record_of(result: subprocess.CompletedProcess[str], path: str) -> tuple[str, list[str]]:
    """The one `info: File:` record of `path` and the diff lines printed after it."""
    lines = result.stdout.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("info: File: ")
             and line.split(" : ")[0].endswith(f": {path}")]  # fmt: skip
    assert len(heads) == 1, result.stdout
    at = heads[0] + 1
    end = next((i for i in range(at, len(lines)) if lines[i].startswith("info:")), len(lines))
    return lines[heads[0]], lines[at:end]


def md5(text: str | bytes) -> str:
    return hashlib.md5(text.encode() if isinstance(text, str) else text).hexdigest()


# -- failures ---------------------------------------------------------------------------


def test_a_failing_script_stops_its_module_and_skips_those_that_require_it(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {
        "base": {
            "scripts/10-ok.sh": "echo ok > /etc/base-ok\n",
            "scripts/20-fail.sh": "echo partial > /etc/base-partial\nexit 3\n",
            "scripts/30-later.sh": "echo later > /etc/base-later\n",
        },
        "app": {"requires": "base\n", "files/etc/app.conf": "app\n"},
        "top": {"requires": "app\n", "files/etc/top.conf": "top\n"},
        "unrelated": {"files/etc/unrelated.conf": "unrelated\n"},
    })  # fmt: skip
    result = dance(cmd, server, scratch_root, noop=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == ["error: base: script 20-fail.sh exited with status 3"]
    etc = scratch_root / "etc"
    assert (etc / "base-ok").read_text() == "ok\n"  # a script that succeeded is committed
    assert not (etc / "base-partial").exists()  # the failed one's writes are not
    assert not (etc / "base-later").exists()  # and the rest of the module does not run
    lines = result.stdout.splitlines()
    assert "warning: Skipping app: requires base" in lines
    assert "warning: Skipping top: requires app" in lines
    assert "info: Processing app" not in lines
    assert not (etc / "app.conf").exists() and not (etc / "top.conf").exists()
    assert "info: Processing unrelated" in lines
    assert (etc / "unrelated.conf").read_text() == "unrelated\n"


def test_a_failing_template_leaves_its_target_and_delivers_nothing(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    (scratch_root / "etc/tpl.conf").write_text("old\n")
    server = make_server(tmp_path / "srv", {
        "tpl": {
            "templates/etc/tpl.conf": "echo new\nexit 5\n",
            "files/etc/tpl-file.conf": "file\n",
            "scripts/10-run.sh": "echo ran > /etc/tpl-script\n",
        },
    })  # fmt: skip
    result = dance(cmd, server, scratch_root, noop=False)
    assert result.returncode == 1, result.stdout + result.stderr
    [error] = result.stderr.splitlines()
    assert error.startswith("error: tpl: template etc/tpl.conf exited with status 5"), error
    assert (scratch_root / "etc/tpl.conf").read_text() == "old\n"
    assert not (scratch_root / "etc/tpl-file.conf").exists()
    assert not (scratch_root / "etc/tpl-script").exists()
    assert records(result) == []


def test_templates_run_under_noop_rules_even_live(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    template = "echo side > /etc/side-effect\nservice db restart\necho secret=$(hostname)\n"
    server = make_server(tmp_path / "srv", {"t": {"templates/etc/t.conf": template}})
    (server / "modules/t/templates/etc/t.conf").chmod(0o600)
    result = dance(cmd, server, scratch_root, noop=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: Would execute : service db restart" in result.stderr.splitlines()
    assert "service db restart: done" not in result.stdout  # the stub never ran
    assert not (scratch_root / "etc/side-effect").exists()  # only the output is kept
    out = scratch_root / "etc/t.conf"
    assert out.read_text() == f"secret={NODE}\n"
    assert out.stat().st_mode & 0o7777 == 0o600  # with the template file's mode


# -- the change records -------------------------------------------------------------------

OLD, NEW, AB = "line one\nline two\n", "line one\nline 2\n", "a\nb\n"
BLOB = b"\x7fELF\x00\x01\x02"


def prepare(root: Path) -> None:
    """What the scratch root holds before the scripts of test_change_records change it."""
    etc = root / "etc"
    (etc / "app.conf").write_text(OLD)
    (etc / "app.conf").chmod(0o644)
    (etc / "dir/sub").mkdir(parents=True)
    (etc / "dir/sub/inner").write_text("inner\n")
    (etc / "dir/top").write_text("top\n")
    (etc / "link").symlink_to("app.conf")
    (etc / "blob").write_bytes(BLOB)


def dev(root: Path) -> str:
    return f"{os.lstat(root / 'etc').st_dev:x}"


CASES = {  # name: (script, path, header after "info: File: ", diff lines)
    "create": (
        "printf 'a\\nb\\n' > /etc/new.conf", "/etc/new.conf",
        "file: /etc/new.conf : Created : type=[regular file] device=[{dev}] mode=[81a4]"
        f" selinux=[?] md5=[{md5(AB)}] perms=[root:root 644]",
        ["0a1,2", "> a", "> b"],
    ),
    "modify content": (
        "sed -i 's/two/2/' /etc/app.conf", "/etc/app.conf",
        f"file: /etc/app.conf : Modified : md5=[{md5(OLD)} => {md5(NEW)}]",
        ["2c2", "< line two", "---", "> line 2"],
    ),
    "modify mode": (
        "chmod 600 /etc/app.conf", "/etc/app.conf",
        "file: /etc/app.conf : Modified : perms=[root:root 644 => root:root 600]"
        " mode=[81a4 => 8180]",
        [],
    ),
    "modify owner": (
        "chown 1234 /etc/app.conf", "/etc/app.conf",
        "file: /etc/app.conf : Modified : perms=[root:root 644 => 1234:root 644]",
        [],
    ),
    "delete a file": (
        "rm /etc/app.conf", "/etc/app.conf",
        "file: /etc/app.conf : Deleted",
        ["1,2d0", "< line one", "< line two"],
    ),
    "replace a file by a directory": (
        "rm /etc/app.conf; mkdir /etc/app.conf", "/etc/app.conf",
        "directory: /etc/app.conf : Modified : type=[regular file => directory]"
        " perms=[root:root 644 => root:root 755] mode=[81a4 => 41ed]",
        ["1,2d0", "< line one", "< line two"],
    ),
    "create a symlink": (
        "ln -s /etc/app.conf /etc/new-link", "/etc/new-link",
        "symlink: /etc/new-link : Created : type=[symbolic link] device=[{dev}] mode=[a1ff]"
        " selinux=[?] target=[/etc/app.conf] perms=[root:root 777]",
        [],
    ),
    "retarget a symlink": (
        "ln -sfn blob /etc/link", "/etc/link",
        "symlink: /etc/link : Modified : target=[app.conf => blob]",
        [],
    ),
    "modify a binary file": (
        "printf 'x\\0y' > /etc/blob", "/etc/blob",
        f"file: /etc/blob : Modified : md5=[{md5(BLOB)} => {md5(b'x' + bytes(1) + b'y')}]",
        ["Binary files differ"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_change_records(case: str, cmd: Run, tmp_path: Path, scratch_root: Path) -> None:
    script, path, head, diff = CASES[case]
    prepare(scratch_root)
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-change.sh": script + "\n"}})
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 0, result.stdout + result.stderr
    line, printed = record_of(result, path)
    assert line == "info: File: " + head.format(dev=dev(scratch_root))
    assert printed == diff
    assert len(records(result)) == 1, records(result)


def test_deleting_a_directory_records_it_and_everything_below(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    prepare(scratch_root)
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-rm.sh": "rm -r /etc/dir\n"}})
    result = dance(cmd, server, scratch_root)
    assert records(result) == [
        "info: File: directory: /etc/dir : Deleted",
        "info: File: directory: /etc/dir/sub : Deleted",
        "info: File: file: /etc/dir/sub/inner : Deleted",
        "info: File: file: /etc/dir/top : Deleted",
    ]
    assert record_of(result, "/etc/dir/top")[1] == ["1d0", "< top"]
    assert (scratch_root / "etc/dir/top").exists()  # NOOP: the scratch root keeps it


def test_replacing_a_directory_by_a_file(cmd: Run, tmp_path: Path, scratch_root: Path) -> None:
    prepare(scratch_root)
    script = "rm -r /etc/dir && echo now a file > /etc/dir\n"
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-replace.sh": script}})
    result = dance(cmd, server, scratch_root)
    assert records(result) == [
        "info: File: file: /etc/dir : Modified : type=[directory => regular file]"
        " perms=[root:root 755 => root:root 644] mode=[41ed => 81a4]",
        "info: File: directory: /etc/dir/sub : Deleted",
        "info: File: file: /etc/dir/sub/inner : Deleted",
        "info: File: file: /etc/dir/top : Deleted",
    ]
    assert record_of(result, "/etc/dir")[1] == ["0a1", "> now a file"]


def test_a_sensitive_file_shows_its_metadata_never_its_content(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    before = "root:*:19000:0:99999:7:::\nuser:$6$oldpass$hash:19000:0:99999:7:::\n"
    (scratch_root / "etc/shadow").write_text(before)  # not the host's copy
    (scratch_root / "etc/shadow").chmod(0o640)
    added = "intruder:$6$secret$hash:19000:0:99999:7:::"
    script = f"echo '{added}' >> /etc/shadow\n"
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-shadow.sh": script}})
    result = dance(cmd, server, scratch_root)
    line, printed = record_of(result, "/etc/shadow")
    assert line == (f"info: File: file: /etc/shadow : Modified : "
                    f"md5=[{md5(before)} => {md5(before + added + chr(10))}]")  # fmt: skip
    assert printed == ["(content hidden: sensitive)"]
    assert "secret" not in result.stdout + result.stderr
    assert "oldpass" not in result.stdout + result.stderr


def test_touching_a_file_is_no_change(cmd: Run, tmp_path: Path, scratch_root: Path) -> None:
    prepare(scratch_root)
    script = "touch /etc/app.conf /etc/dir/top\n"
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-touch.sh": script}})
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 0, result.stderr
    assert records(result) == []


# -- NOOP -----------------------------------------------------------------------------------


def test_noop_steps_see_what_earlier_modules_would_have_written(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {
        "a": {"files/etc/a.conf": "written by a\n"},
        "b": {"requires": "a\n", "scripts/10-read.sh": "cat /etc/a.conf > /etc/b.conf\n"},
        "c": {"requires": "b\n", "scripts/10-read.sh": "echo \"c read: $(cat /etc/b.conf)\"\n"},
    })  # fmt: skip
    etc = sorted(os.listdir(scratch_root / "etc"))
    # NOOP set to anything not empty means --noop
    argv = ("disco", "dance", "--server", str(server), "--node", NODE, "--root", str(scratch_root))
    result = cmd(*argv, env={"NOOP": "yes"})
    assert result.returncode == 0, result.stderr
    assert "c read: written by a" in result.stdout.splitlines()
    assert sorted(os.listdir(scratch_root / "etc")) == etc  # nothing reached the root


def test_noop_later_steps_do_not_see_a_file_an_earlier_one_deleted(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {
        "a": {"scripts/10-make.sh": "mkdir /etc/new.d\necho x > /etc/new.d/f\n"},
        "b": {"requires": "a\n", "scripts/10-remove.sh": "rm /etc/new.d/f\n"},
        "c": {"requires": "b\n", "scripts/10-list.sh": "echo \"c sees:$(ls -A /etc/new.d)\"\n"},
    })  # fmt: skip
    live = dance(cmd, server, scratch_root, noop=False)
    assert "c sees:" in live.stdout.splitlines()
    shutil.rmtree(scratch_root / "etc/new.d")
    noop = dance(cmd, server, scratch_root)
    assert "c sees:" in noop.stdout.splitlines(), noop.stdout + noop.stderr


def test_noop_intercepts_commands_with_outside_effects(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    commands = ["service x stop", "systemctl restart x", "kill -0 1", "apt-get install foo"]
    if (scratch_root / "usr/sbin/service").exists():  # caught by absolute path too
        commands.append("/usr/sbin/service y stop")
    script = "".join(f'{c}; echo "status of {c}: $?"\n' for c in commands)
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-outside.sh": script + "echo end\n"}})
    result = dance(cmd, server, scratch_root)
    assert result.returncode == 0, result.stdout + result.stderr
    out, err = result.stdout.splitlines(), result.stderr.splitlines()
    for c in commands:  # the warning names the command as the interceptor's name
        assert f"warning: Would execute : {c.rsplit('/', 1)[-1]}" in err, result.stderr
        assert f"status of {c}: 0" in out
    assert out[-1] == "end"
    assert not any(line.startswith("service ") for line in out)  # the stub never ran


# -- parameters inside the sandbox -------------------------------------------------------------

PARAMS_SCRIPT = """\
echo "x=$(disco-param get $(hostname)/parameters/x)"
echo "current=$(disco-param get $(hostname)/current_module)"
echo "hostname=$(hostname)"
echo "key=$(cat /var/disco/parameters/$(hostname)/parameters/m/key)"
echo "only=$(disco-param get $(hostname)/parameters/m/only)"
disco-param dump | sed 's/^/dump: /'
if (echo changed > /var/disco/parameters/$(hostname)/parameters/x) 2>/dev/null
then echo "write: succeeded"; else echo "write: refused"; fi
disco-param set $(hostname)/parameters/x changed 2>/dev/null; echo "set: $?"
echo "x=$(disco-param get $(hostname)/parameters/x)"
"""


@pytest.mark.parametrize("noop", [True, False], ids=["noop", "live"])
def test_a_step_sees_the_merged_parameters_read_only(
    noop: bool, cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {
        "m": {
            "parameters/m/key": "module default\n",
            "parameters/m/only": "only the module has it\n",
            "scripts/10-params.sh": PARAMS_SCRIPT,
        },
    }, {"x": "from the node\n", "m/key": "the node wins\n"})  # fmt: skip
    result = dance(cmd, server, scratch_root, noop=noop)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    for line in (
        "x=from the node",
        "current=m",
        f"hostname={NODE}",
        "key=the node wins",
        "only=only the module has it",
        f"dump: {NODE}/current_module = m",
        f"dump: {NODE}/parameters/m/key = the node wins",
        f"dump: {NODE}/parameters/m/only = only the module has it",
        f"dump: {NODE}/parameters/x = from the node",
        "write: refused",
        "set: 2",
    ):
        assert line in out, result.stdout
    assert out.count("x=from the node") == 2  # still, after the attempts to change it


def test_the_sandbox_disco_param_dump_escapes_values_like_the_client_one(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    script = "disco-param dump $(hostname)/parameters\n"
    server = make_server(tmp_path / "srv", {"m": {"scripts/10-dump.sh": script}},
                         {"multi": "one\ntwo\n", "path": "C:\\new\n"})  # fmt: skip
    result = dance(cmd, server, scratch_root)
    out = result.stdout.splitlines()
    assert f"{NODE}/parameters/multi = one\\ntwo" in out, result.stdout
    assert f"{NODE}/parameters/path = C:\\\\new" in out, result.stdout


# -- exit statuses ------------------------------------------------------------------------------

WRITES = {"files/etc/w.conf": "w\n"}
FAILS = {"scripts/10-fail.sh": "exit 9\n"}


@pytest.mark.parametrize(
    ("modules", "noop", "status"),
    [
        ({"w": WRITES}, False, 2),
        ({"f": FAILS}, False, 4),
        ({"w": WRITES, "f": FAILS}, False, 6),
        ({"w": WRITES}, True, 2),
        ({"f": FAILS}, True, 4),
    ],
    ids=["live changes", "live failure", "live both", "noop pending", "noop failure"],
)
def test_detailed_exitcodes(
    modules: Spec, noop: bool, status: int, cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", modules)
    result = dance(cmd, server, scratch_root, "--detailed-exitcodes", noop=noop)
    assert result.returncode == status, result.stdout + result.stderr


def test_a_second_identical_live_dance_changes_nothing(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    module = {**WRITES, "templates/etc/t.conf": "echo t\n", "scripts/10-s.sh": "echo s > /etc/s\n"}
    server = make_server(tmp_path / "srv", {"w": module})
    first = dance(cmd, server, scratch_root, "--detailed-exitcodes", noop=False)
    assert first.returncode == 2, first.stdout + first.stderr
    assert len(records(first)) == 3
    second = dance(cmd, server, scratch_root, "--detailed-exitcodes", noop=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert records(second) == []


def test_a_dance_that_cannot_run_exits_1(cmd: Run, tmp_path: Path, scratch_root: Path) -> None:
    missing = tmp_path / "no-such-server"
    for extra in ((), ("--detailed-exitcodes",)):
        result = dance(cmd, missing, scratch_root, *extra, noop=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.startswith("error: ") and str(missing) in result.stderr
    # a usage error is 2, but 1 (could not run) with --detailed-exitcodes
    server = make_server(tmp_path / "srv", {"w": WRITES})
    for extra, status in (((), 2), (("--detailed-exitcodes",), 1)):
        result = dance(cmd, server, scratch_root, "--module", "nosuch", *extra)
        assert result.returncode == status, result.stderr
        assert "--module nosuch" in result.stderr


# -- --module and --diff --------------------------------------------------------------------------


def test_module_flag_dances_only_that_module_and_what_it_requires(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {
        "a": {"files/etc/a.conf": "a\n"},
        "b": {"requires": "a\n", "files/etc/b.conf": "b\n"},
        "c": {"files/etc/c.conf": "c\n"},
    })  # fmt: skip
    result = dance(cmd, server, scratch_root, "--module", "b")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "info: Ready to dance : a b" in out
    assert [line for line in out if line.startswith("info: Processing")] == [
        "info: Processing a",
        "info: Processing b",
    ]
    assert [line.split(" : ")[0] for line in records(result)] == [
        "info: File: file: /etc/a.conf",
        "info: File: file: /etc/b.conf",
    ]


def test_unified_diff(cmd: Run, tmp_path: Path, scratch_root: Path) -> None:
    (scratch_root / "etc/x").write_text("same\nold\n")
    os.utime(scratch_root / "etc/x", (0, 0))  # see test_delivery_compares_content_not_times
    server = make_server(tmp_path / "srv", {"m": {"files/etc/x": "same\nnew\n"}})
    result = dance(cmd, server, scratch_root, "--diff=unified")
    assert result.returncode == 0, result.stderr
    assert record_of(result, "/etc/x")[1] == [
        "--- a/etc/x",
        "+++ b/etc/x",
        "@@ -1,2 +1,2 @@",
        " same",
        "-old",
        "+new",
    ]


# -- disco report ---------------------------------------------------------------------------------


def sections(text: str) -> dict[str, list[str]]:
    """`report: <module>: <step>` sections of `disco report`, each with its lines."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        assert line.startswith("report: "), line
        body = line[len("report: ") :]
        if not body.startswith(" "):
            current = out.setdefault(body, [])
        else:
            current.append(body.strip())
    return out


def items(lines: list[str]) -> dict[str, dict[str, float]]:
    """The per-item metrics of a section: {item: {metric: value, "exit": status}}."""
    out: dict[str, dict[str, float]] = {}
    metrics: dict[str, float] = {}
    for line in lines:
        if line.endswith(" :"):
            metrics = out.setdefault(line[:-2], {})
        elif line.startswith("exit: "):
            metrics["exit"] = int(line[len("exit: ") :])
        else:
            for pair in line.split(" : "):
                name, value = pair.split()
                metrics[name] = float(value)
    return out


def test_disco_report_after_a_dance(cmd: Run, tmp_path: Path, scratch_root: Path) -> None:
    server = make_server(tmp_path / "srv", {
        "m": {
            "files/etc/m.conf": "m\n",
            "templates/etc/m-t.conf": "echo t\n",
            "templates/etc/m-u.conf": "echo u\n",
            "scripts/10-ok.sh": "sleep 0.05\n",
            "scripts/20-fail.sh": "sleep 0.05; exit 7\n",
        },
        "n": {"files/etc/n.conf": "n\n"},
    })  # fmt: skip
    assert dance(cmd, server, scratch_root).returncode == 1
    report = cmd("disco", "report")
    assert report.returncode == 0, report.stderr
    found = sections(report.stdout)
    order = ("_internal: fetch_params", "m: template", "m: fetch", "m: diff", "m: exec", "n: fetch")
    assert [name for name in found if name in order] == list(order), report.stdout
    templates = items(found["m: template"])
    assert list(templates) == ["etc/m-t.conf", "etc/m-u.conf"]
    assert all(t["exit"] == 0 for t in templates.values())
    scripts = items(found["m: exec"])
    assert list(scripts) == ["10-ok.sh", "20-fail.sh"]
    assert (scripts["10-ok.sh"]["exit"], scripts["20-fail.sh"]["exit"]) == (0, 7)
    for metrics in scripts.values():
        assert metrics["time_real"] >= 0.05 and metrics["mem_max"] > 0
        assert metrics["time_user"] >= 0 and metrics["time_sys"] >= 0
    assert found["m: fetch"][-1] == "exit: 0"
    assert found["_internal: fetch_params"][-1] == "exit: 0"

    only_m = sections(cmd("disco", "report", "m").stdout)
    assert only_m and all(name.startswith("m: ") for name in only_m)
    assert only_m["m: exec"] == found["m: exec"]

    data = json.loads(cmd("disco", "report", "--json").stdout)
    assert (data["node"], data["mode"], data["exit"]) == (NODE, "noop", 1)
    execs = {r["item"]: r for r in data["records"] if (r["module"], r["step"]) == ("m", "exec")}
    assert execs["20-fail.sh"]["exit"] == 7 and execs["10-ok.sh"]["wall"] >= 0.05
    assert {c["path"] for c in data["changes"]} >= {"/etc/m.conf", "/etc/n.conf"}


# -- delivery -----------------------------------------------------------------------------------


def test_files_delivery_keeps_existing_directories_modes(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"m": {"files/root/.bashrc": "alias ll='ls -l'\n",
                                                  "files/srv/new/data": "data\n"}})  # fmt: skip
    (server / "modules/m/files/root/.bashrc").chmod(0o640)
    (server / "modules/m/files/root").chmod(0o755)
    result = dance(cmd, server, scratch_root, noop=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (scratch_root / "root").stat().st_mode & 0o7777 == 0o700
    bashrc = scratch_root / "root/.bashrc"
    assert bashrc.read_text() == "alias ll='ls -l'\n"
    assert bashrc.stat().st_mode & 0o7777 == 0o640
    assert (scratch_root / "srv/new/data").read_text() == "data\n"
    assert not any(" /root : " in line for line in records(result))


def test_delivery_compares_content_not_times(cmd: Run, tmp_path: Path, scratch_root: Path) -> None:
    server = make_server(tmp_path / "srv", {"m": {"files/etc/x": "new\n"}})
    target = scratch_root / "etc/x"
    target.write_text("old\n")  # edited by hand, same size
    shipped = (server / "modules/m/files/etc/x").stat()
    os.utime(target, ns=(shipped.st_atime_ns, shipped.st_mtime_ns))
    result = dance(cmd, server, scratch_root, noop=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert target.read_text() == "new\n"


def test_a_directory_in_scripts_is_no_crash(cmd: Run, tmp_path: Path, scratch_root: Path) -> None:
    scripts = {"scripts/10-run.sh": "echo ran\n", "scripts/lib/helper.sh": "echo helper\n"}
    server = make_server(tmp_path / "srv", {"m": scripts})
    result = dance(cmd, server, scratch_root)
    assert "ran" in result.stdout.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert cmd("disco", "report", "m").returncode == 0


def test_delivery_replaces_a_symlink_never_writes_where_it_points(
    cmd: Run, tmp_path: Path, scratch_root: Path
) -> None:
    server = make_server(tmp_path / "srv", {"m": {"files/etc/resolv.conf": "nameserver ::1\n"}})
    (scratch_root / "srv/target").write_text("untouched\n")
    (scratch_root / "etc/resolv.conf").symlink_to("../srv/target")
    result = dance(cmd, server, scratch_root, noop=False)
    assert result.returncode == 0, result.stdout + result.stderr
    conf = scratch_root / "etc/resolv.conf"
    assert not conf.is_symlink() and conf.read_text() == "nameserver ::1\n"
    assert (scratch_root / "srv/target").read_text() == "untouched\n"
