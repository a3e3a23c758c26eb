"""Issue 12's fleet benchmark: many node dances at once against one disco-server.

A server tree of MODULES small modules and NODES nodes (node00, node01, ...), each naming
every module, is served by tests/sshd.py's harness (a throw-away user, /usr/sbin/sshd on
127.0.0.1, taken down whatever happens) and set up the way an administrator does it:
`disco-server init` and one `disco-server add-node` per node, each node with a key of its
own, run as the server's user. Each node dances NOOP into one shared scratch root (the
host's /usr bound read-only; NOOP changes nothing), with a state directory of its own, and
pushes its report back. For N nodes started at the same moment it prints the p50, p95 and
max dance time, the failures, the server's CPU seconds per dance (sshd, its sessions and
their rsync daemons: the listener's own and reaped children's times), and whether every
node's report reached reports/NODE/.

Runs: 10, 25 and 50 nodes against an sshd tuned for a fleet (MaxStartups 200), 50 against
sshd's defaults (MaxStartups 10:30:100 drops connections beyond 10 unauthenticated ones),
and 50 nodes with two servers in disco/server/uri, the first killed (sshd and every
process of its user) once its log shows logins of a fifth of the nodes.

Knobs: FLEET_SIZES="1 10 25 50" (node counts; the largest is used for the other runs),
FLEET_ONLY="scaling defaults failover" (which runs), FLEET_DEBUG=1 (the whole output of the
first failed dances). Needs root (users, sshd, mounts). Run alone:
`.venv/bin/python bench/bench_fleet.py`; no timing is asserted. The machine's load average
is printed, since others may share it.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_ssh import run  # noqa: E402  (one main for the benches over a real sshd)
from sshd import SSHServer, kill, processes_of, ssh_server  # noqa: E402
from test_ssh_isolation import as_server_user  # noqa: E402

MODULES = 5
SIZES = tuple(int(n) for n in os.environ.get("FLEET_SIZES", "1 10 25 50").split())
BIN = Path(sys.executable).parent
# sshd's own default grace time (the test harness's 10 s is too short for 50 logins at once on
# two cores), and for a fleet as many unauthenticated connections as nodes start at once.
DEFAULTS = ("LoginGraceTime 120",)
TUNED = ("MaxStartups 200", *DEFAULTS)
TICKS = os.sysconf("SC_CLK_TCK")


def node_name(i: int) -> str:
    return f"node{i:02d}"


def build_tree(root: Path, nodes: int) -> None:
    """MODULES modules of a 3-file files/ tree and a template; `nodes` nodes naming them."""
    for m in range(MODULES):
        name = f"m{m}"
        files = root / "modules" / name / "files" / "etc" / "fleet" / name
        files.mkdir(parents=True)
        for part in ("a.conf", "b.conf", "c.conf"):
            (files / part).write_text(f"{name} {part}\n" * 16)
        template = root / "modules" / name / "templates" / "etc" / "fleet" / f"{name}.host"
        template.parent.mkdir(parents=True)
        template.write_text("echo $(hostname)\n")
    for i in range(nodes):
        node = root / "parameters" / node_name(i)
        (node / "modules").mkdir(parents=True)
        for m in range(MODULES):
            (node / "modules" / f"m{m}").write_text("")


@dataclass(frozen=True)
class Served:
    server: SSHServer
    keys: tuple[Path, ...]  # node i's private key


@contextmanager
def served(
    tmp: Path, nodes: int, options: tuple[str, ...], keys_of: Served | None = None
) -> Iterator[Served]:
    """The tree behind a real sshd, each node's key added with disco-server add-node;
    `keys_of`: the nodes' keys of that server again (a node has one key)."""
    tree = tmp / "tree"
    if not tree.exists():
        build_tree(tree, nodes)
    with ssh_server(tree, sshd_options=options) as server:
        init = as_server_user(server, "init", str(server.home))
        if init.returncode != 0:
            raise SystemExit(f"disco-server init failed: {init.stderr}")
        keys = []
        authorized = str(server.home / ".ssh" / "authorized_keys")
        for i in range(nodes):
            key = keys_of.keys[i] if keys_of else server.new_key(node_name(i))
            add = as_server_user(
                server, "add-node", node_name(i), f"{key}.pub", "--authorized-keys", authorized
            )
            if add.returncode != 0:
                raise SystemExit(f"disco-server add-node failed: {add.stderr}")
            keys.append(key)
        yield Served(server, tuple(keys))


def server_cpu(server: SSHServer) -> float:
    """CPU seconds of the sshd listener and every descendant it has reaped."""
    pid = int((server.tmp / "sshd.pid").read_text())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / TICKS


def configure(state: Path, uris: list[str], rsync: str) -> None:
    for key, value in (("disco/server/uri", "\n".join(uris)), ("disco/client/cmds/rsync", rsync)):
        argv = [str(BIN / "disco-param"), "--state-dir", str(state), "set", key, value]
        subprocess.run(argv, check=True, capture_output=True)


@dataclass(frozen=True)
class Result:
    node: str
    seconds: float
    status: int
    output: str  # its stdout and stderr


def dance_all(
    tmp: Path, nodes: int, root: Path, victim: SSHServer | None = None
) -> tuple[list[Result], int]:
    """Start every node's NOOP dance at once; wait for all of them. `victim`: kill that
    server once a fifth of the nodes have logged in to it; the logins it had by then."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOOP", "DISCO_STATE")}
    env["NO_COLOR"] = "1"
    started: list[tuple[str, float, subprocess.Popen[str]]] = []
    for i in range(nodes):
        state = tmp / "states" / node_name(i)
        argv = [str(BIN / "disco"), "--state-dir", str(state), "dance", "--noop"]
        argv += ["--node", node_name(i), "--root", str(root)]
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        started.append((node_name(i), time.monotonic(), process))
    logins = 0
    if victim is not None:
        deadline = time.monotonic() + 120
        while victim.sessions() < nodes // 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        logins = victim.sessions()
        take_down(victim)
    results = []
    for node, start, process in started:
        err, _ = process.communicate()
        results.append(Result(node, time.monotonic() - start, process.returncode, err))
    return results, logins


def take_down(server: SSHServer) -> None:
    """The server dies: its sshd listener and every process of its user, at once."""
    pid = int((server.tmp / "sshd.pid").read_text())
    uid = server.home.stat().st_uid
    kill([pid, *processes_of(uid)])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(label: str, results: list[Result], cpu: float | None, reports: int) -> str:
    times = [r.seconds for r in results]
    failed = [r for r in results if r.status != 0]
    per = f"{cpu / len(results):9.3f}" if cpu is not None else f"{'-':>9}"
    line = (
        f"| {label:<36} | {len(results):>5} | {statistics.median(times):6.2f} |"
        f" {percentile(times, 95):6.2f} | {max(times):6.2f} | {len(failed):>8} | {per} |"
        f" {reports:>7} |"
    )
    for r in failed[:3]:
        last = r.output.strip().splitlines()[-1:] or ["(no message)"]
        line += f"\n  {r.node} exited {r.status}: {last[0][:200]}"
        if os.environ.get("FLEET_DEBUG"):
            line += "\n" + r.output
    return line


def prepare_states(tmp: Path, nodes: int, one: Served) -> None:
    shutil.rmtree(tmp / "states", ignore_errors=True)
    for i in range(nodes):
        rsync = one.server.rsync_command(key=one.keys[i])
        configure(tmp / "states" / node_name(i), [one.server.uri], rsync)


def reports_in(server: SSHServer, nodes: int) -> int:
    return sum(
        (server.home / "reports" / node_name(i) / "last.json").is_file() for i in range(nodes)
    )


def clear_reports(server: SSHServer) -> None:
    for path in (server.home / "reports").glob("*/last.json"):
        path.unlink()


@contextmanager
def scratch_root(tmp: Path) -> Iterator[Path]:
    """A root to dance NOOP on: its own /etc, /var, /tmp; the host's /usr read-only."""
    root = tmp / "root"
    for d in ("usr", "etc", "var/lib", "var/tmp", "root", "tmp"):
        (root / d).mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    for name in ("passwd", "group", "hosts", "nsswitch.conf"):
        shutil.copy2(Path("/etc", name), root / "etc" / name)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if Path("/", name).is_symlink():
            (root / name).symlink_to(os.readlink(Path("/", name)))
    mounted = False
    try:
        subprocess.run(["mount", "--bind", "/usr", str(root / "usr")], check=True)
        mounted = True
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root / "usr")], check=True)
        yield root
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root / "usr")], check=False)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def scaling(tmp: Path, root: Path) -> None:
    most = max(SIZES)
    with served(tmp, most, TUNED) as one:
        for n in SIZES:
            prepare_states(tmp, n, one)
            clear_reports(one.server)
            before = server_cpu(one.server)
            results, _ = dance_all(tmp, n, root)
            cpu = server_cpu(one.server) - before
            label = "one server, sshd MaxStartups 200"
            print(summary(label, results, cpu, reports_in(one.server, n)), flush=True)


def defaults(tmp: Path, root: Path) -> None:
    most = max(SIZES)
    with served(tmp, most, DEFAULTS) as one:
        prepare_states(tmp, most, one)
        before = server_cpu(one.server)
        results, _ = dance_all(tmp, most, root)
        cpu = server_cpu(one.server) - before
        label = "one server, sshd MaxStartups default"
        print(summary(label, results, cpu, reports_in(one.server, most)), flush=True)


def failover(tmp: Path, root: Path) -> None:
    most = max(SIZES)
    with served(tmp, most, TUNED) as a, served(tmp, most, TUNED, keys_of=a) as b:
        prepare_failover(tmp, most, a, b)
        results, logins = dance_all(tmp, most, root, victim=a.server)
        label = "two servers, the first killed"
        print(summary(label, results, None, reports_in(b.server, most)), flush=True)
        second = f"Fetched from server {b.server.user}@{b.server.user}-alias"
        fetched = sum(second in r.output for r in results)
        lost = sum("could not push" in r.output for r in results)
        print(
            f"  (killed once its log showed {logins} logins; {fetched} nodes fetched from the"
            f" second server, {reports_in(a.server, most)} reports reached the first before it"
            f" died, {lost} nodes warned that theirs could not be pushed)",
            flush=True,
        )


def bench(tmp: Path) -> None:
    runs = {"scaling": scaling, "defaults": defaults, "failover": failover}
    chosen = os.environ.get("FLEET_ONLY", " ".join(runs)).split()
    print(f"{MODULES} modules per node, NOOP dances, all started at once; load {load()}")
    print(
        f"| {'run':<36} | nodes | p50 s  | p95 s  | max s  | failures | srv CPU s"
        " | reports |\n"
        f"|{'-' * 38}|-------|--------|--------|--------|----------|-----------|---------|"
    )
    with scratch_root(tmp) as root:
        for name in chosen:
            runs[name](tmp, root)
    print(f"load at the end: {load()}")


def prepare_failover(tmp: Path, nodes: int, a: Served, b: Served) -> None:
    """Each node lists both servers; ssh reaches each at its own port through a per-host
    block of an ssh config file."""
    config = tmp / "ssh_config"
    known = tmp / "known_hosts"
    known.write_text(a.server.known_hosts.read_text() + b.server.known_hosts.read_text())
    config.write_text(
        "".join(
            f"Host {s.server.user}-alias\n  HostName {s.server.host}\n  Port {s.server.port}\n"
            f"  HostKeyAlias [{s.server.host}]:{s.server.port}\n"
            for s in (a, b)
        )
    )
    shutil.rmtree(tmp / "states", ignore_errors=True)
    for i in range(nodes):
        ssh = (
            f"ssh -F {config} -i {a.keys[i]} -o UserKnownHostsFile={known} -o IdentitiesOnly=yes"
            " -o StrictHostKeyChecking=yes -o BatchMode=yes"
        )
        uris = [f"{s.server.user}@{s.server.user}-alias" for s in (a, b)]
        configure(tmp / "states" / node_name(i), uris, f'rsync -qaWHe "{ssh}"')


def main() -> int:
    return run(bench, "fleet", "users")


if __name__ == "__main__":
    sys.exit(main())
