"""The engine side by side with its floor, CFEngine 3 and Puppet 7 (issues 8, 26; DESIGN §12).

The peers' workload: N chained modules, each a 1 KB static file, a template of hostname
+ one node parameter and a guarded script. The same workload is written as CFEngine 3
policy (files: copy_from, a mustache template, a commands: bash script, bundlesequence
in chain order), run as `cf-agent --no-lock -f promises.cf`, and as a Puppet manifest
(file source, an inline EPP template, an exec of the script, in manifest order), run as
`puppet apply`. Printed, measured in one run with the runs alternated, medians of RUNS:

- NOOP on this machine's root (left unchanged) vs the bash-fork floor: each template
  and script run once by bash, with nothing around them;
- the floor's own commands each in a NOOP step's sandbox, then a module's template and
  script in one, with nothing else of disco: what no dance can go below (issue 26);
- live into a fresh scratch root, and again converged, vs the floor, and vs cf-agent
  and puppet into a fresh directory and again converged; peak RSS;
- a module whose script creates 5000 files: what its changes and commit cost per file;
- the mean wall time per kind of step from disco's own report, NOOP and live: template
  and exec are sandboxed steps (sandbox build included), fetch the staged delivery, diff
  the reading of a layer's changes, commit the journaled commit.

Where: the server, the scratch roots, the state dirs and the floor's files are in a
directory under BENCH_DIR (default /var/tmp: this machine's disk, where a commit's
flushes cost what they cost on a node; its filesystem type is printed), or on a tmpfs
mounted there with BENCH_TMPFS=1 (where a flush is free).

Usage: python bench/bench_engine.py [N ...] (default 20 200 2000; RUNS=3 in the environment).
DISCO_SRCS="a=/path/src,b=/other/src" measures each of those trees of disco in the same
run (alternated, the floor shared) instead of the installed one: a before/after.
`make bench` installs cfengine3 and puppet first; without them their rows say so.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from disco.dance.environment import VIEW_AT, step_env
from disco.engine.mounts import MS_PRIVATE, MS_REC, Mount
from disco.engine.runner import Zygote
from disco.engine.sandbox import Mode, Step
from disco.engine.syscalls import CLONE_NEWNS, unshare

BIN = Path(sys.executable).parent
RUNS = int(os.environ.get("RUNS", "3"))
CF_AGENT = shutil.which("cf-agent")
PUPPET = shutil.which("puppet")
# The template as a Puppet double-quoted string: \$ a dollar for EPP, \n a newline.
EPP = "<%= \\$facts['networking']['hostname'] %> <%= \\$something %>\\n"
TEMPLATE = 'echo "$(hostname) $(disco-param get bench/parameters/something)"\n'
SCRIPT = "#!/bin/bash\n[ -f /etc/bench/{0}.stamp ] || echo done > /etc/bench/{0}.stamp\n"


def build_server(root: Path, n: int) -> None:
    node = root / "parameters" / "bench"
    (node / "modules").mkdir(parents=True)
    (node / "parameters").mkdir()
    (node / "parameters" / "something").write_text("value\n")
    for i in range(n):
        name = f"m{i:04d}"
        module = root / "modules" / name
        (module / "files" / "etc" / "bench").mkdir(parents=True)
        (module / "files" / "etc" / "bench" / name).write_bytes(b"x" * 1023 + b"\n")
        (module / "templates" / "etc" / "bench").mkdir(parents=True)
        (module / "templates" / "etc" / "bench" / f"{name}.cfg").write_text(TEMPLATE)
        (module / "scripts").mkdir()
        (module / "scripts" / "00-run.sh").write_text(SCRIPT.format(name))
        (module / "requires").write_text(f"m{i - 1:04d}\n" if i else "")
    (node / "modules" / f"m{n - 1:04d}").write_text("")  # the rest come in by requires


def build_cfengine(server: Path, top: Path, n: int) -> Path:
    """The same modules as CFEngine policy writing under `top` (its stand-in for /)."""
    bundles, names = [], []
    for i in range(n):
        name = f"m{i:04d}"
        module = server / "modules" / name
        mustache = module / "cf.mustache"
        mustache.write_text("{{host}} {{something}}\n")
        script = module / "cf-run.sh"
        script.write_text(SCRIPT.format(name).replace("/etc/bench", f"{top}/etc/bench"))
        names.append(f"b{name}")
        bundles.append(f"""
bundle agent b{name}
{{
  vars:
      "data" data => parsejson('{{"host": "$(sys.fqhost)", "something": "value"}}');
  files:
      "{top}/etc/bench/{name}"
        copy_from => local_dcp("{module}/files/etc/bench/{name}"), perms => mode644;
      "{top}/etc/bench/{name}.cfg"
        create => "true", template_method => "mustache",
        edit_template => "{mustache}", template_data => @(data);
  commands:
      "/bin/bash {script}";
}}
""")
    (top / "etc" / "bench").mkdir(parents=True, exist_ok=True)
    policy = server / "promises.cf"
    policy.write_text(
        f"""body common control
{{
  bundlesequence => {{ {", ".join(f'"{b}"' for b in names)} }};
}}
body copy_from local_dcp(from)
{{
  source => "$(from)";
  compare => "digest";
}}
body perms mode644
{{
  mode => "644";
  rxdirs => "false";
}}
"""
        + "".join(bundles)
    )
    return policy


def build_puppet(server: Path, top: Path, n: int) -> Path:
    """The same modules as a Puppet manifest writing under `top`, in manifest order."""
    out = []
    for i in range(n):
        name = f"m{i:04d}"
        module = server / "modules" / name
        script = module / "pp-run.sh"
        script.write_text(SCRIPT.format(name).replace("/etc/bench", f"{top}/etc/bench"))
        out.append(f"""
file {{ '{top}/etc/bench/{name}':
  source => '{module}/files/etc/bench/{name}', mode => '0644',
}}
file {{ '{top}/etc/bench/{name}.cfg':
  content => inline_epp("{EPP}", {{ 'something' => 'value' }}),
}}
exec {{ '{name}': command => '/bin/bash {script}' }}
""")
    (top / "etc" / "bench").mkdir(parents=True, exist_ok=True)
    manifest = server / "site.pp"
    manifest.write_text("".join(out))
    return manifest


def puppet_apply(manifest: Path, var: Path) -> list[str]:
    """`puppet apply` with its state, config and logs in `var`, not the machine's."""
    dirs = [f"--{d}={var / d}" for d in ("vardir", "confdir", "codedir", "logdir", "rundir")]
    return [str(PUPPET), "apply", "--color=false", *dirs, str(manifest)]


def timed(argv: list[str], **kw: object) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of the command's whole process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {err[-2000:]}")
    return wall, ru.ru_maxrss


def floor(server: Path, n: int, tmp: Path) -> float:
    """Each template and script run once by bash, nothing around them but the environment
    disco's steps get (the root's standard PATH, a locale): a peer that runs bash runs it
    with one, and a step's environment is not the engine's cost."""
    fake = tmp / "floor"
    (fake / "bin").mkdir(parents=True, exist_ok=True)
    (fake / "etc" / "bench").mkdir(parents=True, exist_ok=True)
    params = fake / "parameters" / "bench" / "parameters"
    params.mkdir(parents=True, exist_ok=True)
    (params / "something").write_text("value\n")
    src = Path(__file__).parent.parent / "src" / "disco" / "noop" / "data" / "disco-param"
    text = src.read_text().replace("root=/var/disco/parameters", f"root={fake}/parameters")
    (fake / "bin" / "disco-param").write_text(text)
    (fake / "bin" / "disco-param").chmod(0o755)
    env = step_env("bench", noop=False, intercept=False)
    env["PATH"] = env["PATH"].replace(f"{VIEW_AT}/bin", f"{fake}/bin")
    start = time.perf_counter()
    for i in range(n):
        name = f"m{i:04d}"
        module = server / "modules" / name
        template = module / "templates" / "etc" / "bench" / f"{name}.cfg"
        with open(fake / "etc" / "bench" / f"{name}.cfg", "wb") as out:
            subprocess.run(["bash", str(template)], env=env, stdout=out, check=True)
        script = SCRIPT.format(name).replace("/etc/bench", f"{fake}/etc/bench")
        subprocess.run(["bash", "-c", script], env=env, check=True)
    wall = time.perf_counter() - start
    for stamp in (fake / "etc" / "bench").glob("*.stamp"):
        stamp.unlink()
    return wall


def sandboxes_alone(server: Path, n: int, tmp: Path, per_module: bool = False) -> float:
    """The floor's own commands, each in a NOOP step's sandbox (DESIGN §7: a fresh layer
    over the real root, in the steps' namespaces), from one zygote as a dance has it, and
    nothing else of disco: no fetch, change reading, fold or report. A lower bound of what
    any dance that sandboxes each step costs (it is cheaper than a dance's: no layer
    stacks below its steps, so a step that wrote nothing leaves its sandbox to the next).
    `per_module`: a module's template and script in one sandbox (the script's bash runs
    the template's first), what a design with one sandbox a module would pay at least."""
    fake, layers = tmp / "floor", tmp / "sandboxes"
    layers.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(layers)], check=True)
    env = step_env("bench", noop=True, intercept=False)
    env["PATH"] = env["PATH"].replace(f"{VIEW_AT}/bin", f"{fake}/bin")
    count = iter(range(1 << 30))
    try:
        with Zygote(Mode.NOOP, layers / "z") as zygote:

            def step(argv: tuple[str, ...], stdout: Path | None = None) -> None:
                layer = layers / f"s{next(count)}"
                plan = Step(argv, Path("/"), layer, (), Mode.NOOP, env=env, hostname="bench",
                            stdout=stdout)  # fmt: skip
                result = zygote.run(plan, discard=True)
                if result.returncode != 0:
                    raise SystemExit(f"a sandboxed floor step failed: {argv}")

            start = time.perf_counter()
            for i in range(n):
                name = f"m{i:04d}"
                template = server / "modules" / name / "templates" / "etc" / "bench"
                template /= f"{name}.cfg"
                script = SCRIPT.format(name).replace("/etc/bench", f"{fake}/etc/bench")
                if per_module:
                    step(("bash", "-c", f"bash {shlex.quote(str(template))} > /tmp/out\n{script}"))
                    continue
                step(("bash", str(template)), stdout=layers / "out")
                step(("bash", "-c", script))
            return time.perf_counter() - start
    finally:
        subprocess.run(["umount", "-l", str(layers)], check=False)


def codes() -> list[tuple[str, str | None]]:
    """The trees of disco to measure: (label, src dir), or the installed one."""
    spec = os.environ.get("DISCO_SRCS", "")
    return [tuple(c.split("=", 1)) for c in spec.split(",") if c] or [("", None)]  # type: ignore[misc]


def disco(server: Path, state: Path, *args: str, src: str | None = None) -> tuple[float, int]:
    argv = [str(BIN / "disco"), "dance", "--server", str(server), "--node", "bench"]
    env = None
    if src is not None:  # that tree first on the path, for the dance and its zygotes
        run = "import sys; from disco.cli.main import main; sys.exit(main())"
        argv = [str(BIN / "python"), "-c", run, *argv[1:]]
        env = {**os.environ, "PYTHONPATH": src}
    return timed([*argv, "--state-dir", str(state), *args], env=env)


def scratch_root(path: Path) -> None:
    for d in ("etc/bench", "var/tmp", "root", "tmp"):
        (path / d).mkdir(parents=True, exist_ok=True)
    for name in ("usr", "bin", "sbin", "lib", "lib64"):
        host = Path("/", name)
        if host.is_symlink():
            (path / name).symlink_to(os.readlink(host))
        elif host.is_dir() and not (path / name).exists():
            (path / name).mkdir()
            subprocess.run(["mount", "--bind", "-o", "ro", str(host), str(path / name)], check=True)


def unmount_under(path: Path) -> None:
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        point = line.split()[4]
        if point.startswith(str(path) + "/"):
            subprocess.run(["umount", "-l", point], check=False)


def steps(state: Path) -> dict[str, float]:
    """Mean wall ms per kind of step in the last report."""
    report = json.loads((state / "reports" / "last.json").read_text())
    kinds: dict[str, list[float]] = {}
    for r in report["records"]:
        if r["module"] != "_internal":
            kinds.setdefault(r["step"], []).append(r["wall"] * 1000)
    return {k: statistics.mean(v) for k, v in kinds.items()}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def workload(n: int, tmp: Path) -> None:
    server = tmp / f"server{n}"
    build_server(server, n)
    cf_top, pp_top = tmp / f"cf{n}", tmp / f"pp{n}"
    policy = build_cfengine(server, cf_top, n) if CF_AGENT else None
    if (
        policy is not None
    ):  # an invalid policy would run CFEngine's failsafe, which starts cf-serverd
        subprocess.run([str(Path(str(CF_AGENT)).with_name("cf-promises")), "-f", str(policy)],
                       check=True)  # fmt: skip
    manifest = build_puppet(server, pp_top, n) if PUPPET else None
    rows: dict[str, list[float]] = {}
    rss: dict[str, list[int]] = {}
    live_steps: dict[str, dict[str, float]] = {}
    noop_states = {label: tmp / f"noop{n}{label}" for label, _ in codes()}
    for label, src in codes():  # fetch once: the runs below measure the dance
        disco(server, noop_states[label], "--noop", src=src)
    for run in range(RUNS):
        rows.setdefault("floor", []).append(floor(server, n, tmp))
        rows.setdefault("sandboxes", []).append(sandboxes_alone(server, n, tmp))
        rows.setdefault("per-module", []).append(sandboxes_alone(server, n, tmp, per_module=True))
        for label, src in codes():
            wall, peak = disco(server, noop_states[label], "--noop", src=src)
            rows.setdefault(f"noop{label}", []).append(wall)
            rss.setdefault(f"disco{label}", []).append(peak)
            root, state = tmp / f"root{n}-{run}{label}", tmp / f"live{n}-{run}{label}"
            scratch_root(root)
            try:
                shutil.copytree(noop_states[label], state, symlinks=True)
                wall = disco(server, state, "--root", str(root), src=src)[0]
                rows.setdefault(f"live{label}", []).append(wall)
                live_steps[label] = steps(state)
                wall = disco(server, state, "--root", str(root), src=src)[0]
                rows.setdefault(f"converged{label}", []).append(wall)
            finally:
                unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
        if policy is not None:
            shutil.rmtree(cf_top / "etc" / "bench", ignore_errors=True)
            (cf_top / "etc" / "bench").mkdir(parents=True)
            agent = [str(CF_AGENT), "--no-lock", "-f", str(policy)]
            wall, peak = timed(agent)
            rows.setdefault("cf", []).append(wall)
            rss.setdefault("cf", []).append(peak)
            rows.setdefault("cf-converged", []).append(timed(agent)[0])
        if manifest is not None:
            shutil.rmtree(pp_top / "etc" / "bench", ignore_errors=True)
            (pp_top / "etc" / "bench").mkdir(parents=True)
            var = tmp / f"pp-var{n}-{run}"
            wall, peak = timed(puppet_apply(manifest, var))
            rows.setdefault("pp", []).append(wall)
            rss.setdefault("pp", []).append(peak)
            rows.setdefault("pp-converged", []).append(timed(puppet_apply(manifest, var))[0])
    report(n, {k: median(v) for k, v in rows.items()}, rss, live_steps, noop_states)


def report(
    n: int,
    m: dict[str, float],
    rss: dict[str, list[int]],
    live_steps: dict[str, dict[str, float]],
    noop_states: dict[str, Path],
) -> None:
    print(f"N={n} (medians of {RUNS}, runs alternated)")
    print(f"  bash-fork floor            {m['floor']:7.2f} s")
    # What the sandboxes of DESIGN §7 cost by themselves: the goals below cannot be met
    # by any dance that pays more than they allow for its sandboxes alone.
    for what, key in (("a NOOP sandbox a step", "sandboxes"),
                      ("one a module", "per-module")):  # fmt: skip
        print(f"  floor's commands, {what + ',':<22} {m[key]:5.2f} s   {m[key] / m['floor']:5.2f}x"
              " floor (nothing else of disco)")  # fmt: skip
    for label, _src in codes():
        said = f" [{label}]" if label else ""
        for what, key, goal in (("NOOP on /", "noop", "1.35"), ("live, fresh", "live", "1.35"),
                                ("live, converged", "converged", "1.25")):  # fmt: skip
            wall = m[key + label]
            print(f"  {what + said:<26} {wall:7.2f} s   {wall / m['floor']:5.2f}x floor"
                  f"   (goal <= {goal}x)")  # fmt: skip
        for peer, name in (("cf", "CFEngine"), ("pp", "Puppet")):
            if peer in m:
                fresh, conv = (
                    m["live" + label] / m[peer],
                    m["converged" + label] / m[peer + "-converged"],
                )
                print(f"  live{said} vs {name:<15} {fresh:7.2f}x fresh, {conv:.2f}x converged")
        peak = median([float(x) for x in rss["disco" + label]]) / 1024
        print(f"  peak RSS{said}: disco {peak:.1f} MB")
        for what, per in (("NOOP", steps(noop_states[label])),
                          ("live, fresh", live_steps[label])):  # fmt: skip
            print(
                f"  {what}{said} per step (ms, mean wall; template and exec are sandboxed"
                " steps, fetch the staged delivery, diff reading a layer's changes, commit"
                " the journaled commit): "
                + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()))
            )
        per_module = (m["noop" + label] - m["floor"]) / n * 1000
        print(f"  NOOP{said} cost above the floor: {per_module:.1f} ms per module")
    for peer, name, where in (("cf", "CFEngine", CF_AGENT), ("pp", "Puppet", PUPPET)):
        if peer not in m:
            print(f"  {name:<26} not installed")
            continue
        peak = median([float(x) for x in rss[peer]]) / 1024
        walls = f"{m[peer]:7.2f} s, {m[peer + '-converged']:.2f} s"
        print(f"  {name} fresh, converged {walls}   ({m[peer] / m['floor']:.2f}x floor);"
              f" peak RSS {peak:.1f} MB ({where})")  # fmt: skip


def many_files(tmp: Path) -> None:
    """One module whose script creates 5000 files."""
    server = tmp / "server-many"
    node = server / "parameters" / "bench"
    (node / "modules").mkdir(parents=True)
    (node / "modules" / "many").write_text("")
    (server / "modules" / "many" / "scripts").mkdir(parents=True)
    script = (
        "#!/bin/bash\nmkdir -p /srv/many\nfor i in $(seq 5000); do echo $i > /srv/many/f$i; done\n"
    )
    (server / "modules" / "many" / "scripts" / "00-many.sh").write_text(script)
    target = tmp / "many-floor"
    target.mkdir()
    start = time.perf_counter()
    subprocess.run(["bash", "-c", script.replace("/srv/many", str(target))], check=True)
    alone = time.perf_counter() - start
    state = tmp / "many-state"
    noop = disco(server, state, "--noop")[0]
    records = json.loads((state / "reports" / "last.json").read_text())["records"]
    diff = sum(r["wall"] for r in records if r["step"] == "diff")
    root = tmp / "many-root"
    scratch_root(root)
    try:
        live = disco(server, state, "--root", str(root))[0]
        records = json.loads((state / "reports" / "last.json").read_text())["records"]
        commit = sum(r["wall"] for r in records if r["step"] == "commit")
    finally:
        unmount_under(root)
    print("5000 files from one script")
    print(f"  the script alone {alone:.2f} s; NOOP dance {noop:.2f} s, live {live:.2f} s")
    print(
        f"  changes read: {diff / 5000 * 1e6:.0f} us per file;"
        f" commit: {commit / 5000 * 1e6:.0f} us per file"
    )


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [20, 200, 2000]
    base = Path(os.environ.get("BENCH_DIR", "/var/tmp"))
    on_tmpfs = os.environ.get("BENCH_TMPFS") == "1"
    # A mount namespace of our own: what we mount is gone with us, even if we are killed.
    unshare(CLONE_NEWNS)
    Mount("/", flags=MS_REC | MS_PRIVATE).do()
    with tempfile.TemporaryDirectory(prefix="disco-bench-", dir=base) as name:
        tmp = Path(name)
        if on_tmpfs:
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp)], check=True)
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp)], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
        print(
            f"{time.strftime('%Y-%m-%d %H:%M')} UTC, {os.uname().nodename},"
            f" {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; in {tmp} ({fs});"
            f" cf-agent: {CF_AGENT or 'not installed'}; puppet: {PUPPET or 'not installed'}"
        )
        try:
            for n in sizes:
                workload(n, tmp)
            many_files(tmp)
        finally:
            unmount_under(tmp)
            if on_tmpfs:
                subprocess.run(["umount", "-l", str(tmp)], check=False)
        print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
