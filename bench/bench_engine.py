"""The engine side by side with its floor and with CFEngine 3 (issue 8, DESIGN §12).

The peers' workload: N chained modules, each a 1 KB static file, a template of hostname
+ one node parameter and a guarded script. The same workload is written as CFEngine 3
policy (files: copy_from, a mustache template, a commands: bash script, bundlesequence
in chain order) and run as `cf-agent --no-lock -f promises.cf`. Printed, measured in one
run with the runs alternated, medians of RUNS:

- NOOP on this machine's root (left unchanged) vs the bash-fork floor: each template
  and script run once by bash, with nothing around them;
- live into a fresh scratch root, and again converged, vs cf-agent into a fresh
  directory and again converged; peak RSS of both;
- a module whose script creates 5000 files: what its changes and commit cost per file;
- the mean wall time per kind of step from disco's own report, NOOP and live: template
  and exec are sandboxed steps (sandbox build included), fetch the staged delivery, diff
  the reading of a layer's changes, commit the journaled commit.

Usage: python bench/bench_engine.py [N ...] (default 20 200 2000; RUNS=3 in the environment).
`make bench` installs cfengine3 first; without cf-agent its rows say so.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from disco.dance.environment import VIEW_AT, step_env
from disco.engine.mounts import MS_PRIVATE, MS_REC, Mount
from disco.engine.syscalls import CLONE_NEWNS, unshare

BIN = Path(sys.executable).parent
RUNS = int(os.environ.get("RUNS", "3"))
CF_AGENT = shutil.which("cf-agent")
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


def disco(server: Path, state: Path, *args: str) -> tuple[float, int]:
    argv = [str(BIN / "disco"), "dance", "--server", str(server), "--node", "bench"]
    return timed([*argv, "--state-dir", str(state), *args])


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
    cf_top = tmp / f"cf{n}"
    policy = build_cfengine(server, cf_top, n) if CF_AGENT else None
    if (
        policy is not None
    ):  # an invalid policy would run CFEngine's failsafe, which starts cf-serverd
        subprocess.run([str(Path(str(CF_AGENT)).with_name("cf-promises")), "-f", str(policy)],
                       check=True)  # fmt: skip
    rows: dict[str, list[float]] = {}
    rss: dict[str, list[int]] = {}
    live_steps: dict[str, float] = {}
    state_noop = tmp / f"noop{n}"
    disco(server, state_noop, "--noop")  # fetch once: the runs below measure the dance
    for run in range(RUNS):
        rows.setdefault("floor", []).append(floor(server, n, tmp))
        wall, peak = disco(server, state_noop, "--noop")
        rows.setdefault("noop", []).append(wall)
        rss.setdefault("disco", []).append(peak)
        root, state = tmp / f"root{n}-{run}", tmp / f"live{n}-{run}"
        scratch_root(root)
        try:
            shutil.copytree(state_noop, state, symlinks=True)
            rows.setdefault("live", []).append(disco(server, state, "--root", str(root))[0])
            live_steps = steps(state)
            rows.setdefault("converged", []).append(disco(server, state, "--root", str(root))[0])
        finally:
            unmount_under(root)
        if policy is not None:
            shutil.rmtree(cf_top / "etc" / "bench", ignore_errors=True)
            (cf_top / "etc" / "bench").mkdir(parents=True)
            agent = [str(CF_AGENT), "--no-lock", "-f", str(policy)]
            wall, peak = timed(agent)
            rows.setdefault("cf", []).append(wall)
            rss.setdefault("cf", []).append(peak)
            rows.setdefault("cf-converged", []).append(timed(agent)[0])
    m = {k: median(v) for k, v in rows.items()}
    print(f"N={n} (medians of {RUNS}, runs alternated)")
    print(f"  bash-fork floor            {m['floor']:7.2f} s")
    print(f"  NOOP on /                  {m['noop']:7.2f} s   {m['noop'] / m['floor']:5.2f}x floor"
          "   (goal <= 1.35x)")  # fmt: skip
    cf, cfc = m.get("cf"), m.get("cf-converged")
    for label, key, peer, goal in (("live, fresh", "live", cf, "0.8"),
                                   ("live, converged", "converged", cfc, "1.0")):  # fmt: skip
        ratio = f"{m[key] / peer:5.2f}x CFEngine (goal <= {goal}x)" if peer else "(no cf-agent)"
        print(f"  {label:<26} {m[key]:7.2f} s   {ratio}")
    if cf and cfc:
        print(f"  CFEngine fresh, converged  {cf:7.2f} s, {cfc:.2f} s")
    print(f"  converged / fresh (disco)  {m['converged'] / m['live']:7.2f}")
    peaks = f"{median([float(x) for x in rss['disco']]) / 1024:.1f} MB"
    if "cf" in rss:
        peaks += f", CFEngine {median([float(x) for x in rss['cf']]) / 1024:.1f} MB"
    print(f"  peak RSS: disco {peaks}")
    for label, per in (("NOOP", steps(state_noop)), ("live, fresh", live_steps)):
        print(
            f"  {label} per step (ms, mean wall; template and exec are sandboxed steps,"
            " fetch the staged delivery, diff reading a layer's changes, commit"
            " the journaled commit): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()))
        )
    per_module = (m["noop"] - m["floor"]) / n * 1000
    print(f"  NOOP cost above the floor: {per_module:.1f} ms per module")


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
    print(
        f"{time.strftime('%Y-%m-%d')}, {os.uname().nodename}, {os.cpu_count()} cores,"
        f" load {os.getloadavg()[0]:.2f}; cf-agent: {CF_AGENT or 'not installed'}"
    )
    # A mount namespace of our own: what we mount is gone with us, even if we are killed.
    unshare(CLONE_NEWNS)
    Mount("/", flags=MS_REC | MS_PRIVATE).do()
    with tempfile.TemporaryDirectory(prefix="disco-bench-") as name:
        tmp = Path(name)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp)], check=True)
        try:
            for n in sizes:
                workload(n, tmp)
            many_files(tmp)
        finally:
            unmount_under(tmp)
            subprocess.run(["umount", "-l", str(tmp)], check=False)


if __name__ == "__main__":
    main()
