"""Issue 4's ssh benchmark: the fetch phase of a 50-module dance over a real sshd.

A server of 50 independent modules (each a small files/ tree), one node naming them all,
served by tests/sshd.py's harness: a throw-away user and /usr/sbin/sshd on 127.0.0.1, taken
down again whatever happens (Ctrl-C included). A NOOP dance into a scratch root (a folder
in /tmp with the host's /usr bound read-only) is run twice per rsync command: first with
nothing local, then again with every copy there. For each it prints the ssh sessions the
server's log shows and the fetch time of `disco report --json` (its `_internal` `fetch`
record). The rsync commands:
  seed     the seed's: rsync -qaWHe "ssh -p P -i KEY -o UserKnownHostsFile=KH ..."; if disco
           shares one ssh connection per dance by itself, this row shows it;
  no-share the same with "-o ControlMaster=no -o ControlPath=none" inside -e, which
           forbids sharing: one ssh connection per rsync.
Needs root (it adds a user and starts sshd). Run with `make bench`; no timing is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sshd import SSHD, SSHServer, ssh_server  # noqa: E402  (tests/ on the path first)

MODULES = 50
NODE = "bench"
BIN = Path(sys.executable).parent
NO_SHARING = "-o ControlMaster=no -o ControlPath=none"


def build_server(root: Path) -> None:
    """parameters/bench/ naming modules m00..m49; each module a files/ tree of 3 files."""
    node = root / "parameters" / NODE
    (node / "modules").mkdir(parents=True)
    (node / "parameters").mkdir()
    (node / "parameters" / "something").write_text("value\n")
    for i in range(MODULES):
        name = f"m{i:02d}"
        files = root / "modules" / name / "files" / "etc" / "bench" / name
        files.mkdir(parents=True)
        for part in ("a.conf", "b.conf", "c.conf"):
            (files / part).write_text(f"{name} {part}\n" * 16)
        (root / "modules" / name / "requires").write_text("")
        (node / "modules" / name).write_text("")


@contextmanager
def scratch_root(tmp: Path) -> Iterator[Path]:
    """A root to dance NOOP on: its own /etc, /var, /tmp; the host's /usr read-only."""
    root = tmp / "root"
    for d in ("usr", "etc", "var/lib", "var/tmp", "root", "tmp"):
        (root / d).mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    for name in ("passwd", "group", "hosts", "nsswitch.conf"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if Path("/", name).is_symlink():
            (root / name).symlink_to(os.readlink(Path("/", name)))
    usr = root / "usr"
    mounted = False
    try:
        subprocess.run(["mount", "--bind", "/usr", str(usr)], check=True)
        mounted = True
        subprocess.run(["mount", "-o", "remount,bind,ro", str(usr)], check=True)
        yield root
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(usr)], check=False)


@dataclass(frozen=True)
class Dance:
    sessions: int  # ssh sessions the server accepted during the dance
    fetch: float  # seconds: the report's _internal fetch_params record(s), the whole fetch


def configure(state: Path, server: SSHServer, rsync: str) -> None:
    for key, value in (("disco/server/uri", server.uri), ("disco/client/cmds/rsync", rsync)):
        argv = [str(BIN / "disco-param"), "--state-dir", str(state), "set", key, value]
        subprocess.run(argv, check=True, capture_output=True)


def dance(state: Path, server: SSHServer, root: Path) -> Dance:
    env = {k: v for k, v in os.environ.items() if k not in ("NOOP", "DISCO_STATE")}
    argv = ["--state-dir", str(state), "dance", "--node", NODE, "--noop", "--root", str(root)]
    before = server.sessions()
    done = subprocess.run(
        [str(BIN / "disco"), *argv], capture_output=True, text=True, env=env, check=False
    )
    sessions = server.sessions() - before
    if done.returncode != 0:
        raise SystemExit(f"the dance failed ({done.returncode}):\n{done.stderr}")
    report = subprocess.run(
        [str(BIN / "disco"), "report", "--json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
    )
    records = [r for r in json.loads(report.stdout)["records"] if r["module"] == "_internal"]

    def wall(step: str) -> float:
        return float(sum(r["wall"] for r in records if r["step"] == step))

    return Dance(sessions, wall("fetch_params"))


def row(label: str, d: Dance) -> str:
    return f"  {label:<20} {MODULES:>7} {d.sessions:>9} {d.fetch:>9.2f} s"


def bench(tmp: Path) -> None:
    tree = tmp / "tree"
    build_server(tree)
    with ssh_server(tree) as server, scratch_root(tmp) as root:
        seed = server.rsync_command()
        no_sharing = seed[:-1] + f' {NO_SHARING}"'  # inside the -e "ssh ..." string
        print(f"{MODULES} modules over ssh (sshd on {server.host}:{server.port}), NOOP dances")
        print(f"  seed rsync command:  {seed}")
        print(f"  no-share adds:       {NO_SHARING} (inside -e)")
        print(f"  {'run':<20} {'modules':>7} {'sessions':>9} {'fetch':>11}")
        results: dict[str, list[Dance]] = {}
        for label, rsync in (("seed", seed), ("no-share", no_sharing)):
            state = tmp / f"state-{label}"
            configure(state, server, rsync)
            results[label] = []
            for which in ("first", "again"):
                d = dance(state, server, root)
                results[label].append(d)
                print(row(f"{label}, {which}", d), flush=True)
        for i, which in enumerate(("first", "again")):
            shared, alone = results["seed"][i].fetch, results["no-share"][i].fetch
            if shared > 0:
                print(f"  {which} dance: no-share fetch / seed fetch = {alone / shared:.1f}x")


def stop_on_signal() -> None:
    """Ctrl-C or a TERM stops the bench through its clean-up (the finally blocks); a
    second one during the clean-up is ignored, so that it completes."""

    def interrupted(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)


def run(bench: Callable[[Path], None], name: str, what: str) -> int:
    """The main of a bench over a real sshd (this one, bench_fleet): `what` it sets up,
    said when skipped or interrupted; its temp folder goes whatever happens."""
    if os.geteuid() != 0 or not SSHD.exists() or shutil.which("rsync") is None:
        print(f"skipped: needs root, openssh-server and rsync (it adds {what}, starts sshd)")
        return 0
    stop_on_signal()
    tmp = Path(tempfile.mkdtemp(prefix=f"disco-bench-{name}-"))
    try:
        bench(tmp)
    except KeyboardInterrupt:
        print(f"interrupted: sshd stopped, {what} removed", file=sys.stderr)
        return 130
    finally:
        if not os.path.ismount(tmp / "root" / "usr"):  # never remove through /usr
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0


def main() -> int:
    return run(bench, "ssh", "a user")


if __name__ == "__main__":
    sys.exit(main())
