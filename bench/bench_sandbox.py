"""What one step's sandbox costs (DESIGN §12). Run as root: python bench/bench_sandbox.py [N]

Prints the median wall time of /bin/true run directly, in a live step and in a NOOP step
(the real root as lower layer), the same with stacked layers, and the same sandbox built
by util-linux programs (the step's own reproduction script) instead of syscalls.
The bench runs in a private mount namespace of its own, so nothing it mounts outlives it.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from disco.engine.mounts import MS_PRIVATE, MS_REC, Mount, read_mounts, submounts
from disco.engine.runner import Zygote, run_step
from disco.engine.sandbox import Mode, Step, base_ops, describe, plan, upper_of
from disco.engine.syscalls import CLONE_NEWNS, unshare
from disco.errors import CommandError
from disco.run import run


def median_ms(fn: Callable[[], object], n: int) -> float:
    fn()  # warm caches
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def spawn_true() -> None:
    os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0)


def fork_true() -> None:
    pid = os.fork()
    if pid == 0:
        os.execv("/bin/true", ["true"])
    os.waitpid(pid, 0)


def bare_fork() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    if os.geteuid() != 0:
        sys.exit("bench_sandbox: run me as root")
    unshare(CLONE_NEWNS)
    Mount("/", flags=MS_REC | MS_PRIVATE).do()
    base = Path(tempfile.mkdtemp(prefix="disco-bench-", dir="/var/tmp"))  # same fs as /
    tmpfs = Path(tempfile.mkdtemp(prefix="disco-bench-", dir="/run"))
    try:
        run(["mount", "-t", "tmpfs", "tmpfs", str(tmpfs)])  # gone with our namespace anyway
        measure(n, base, tmpfs)
    finally:
        run(["umount", "-l", str(tmpfs)], check=False)
        shutil.rmtree(base, ignore_errors=True)
        tmpfs.rmdir()


def measure(n: int, base: Path, tmpfs: Path) -> None:
    counter = iter(range(10**9))

    # As a dance has them: one per mode for all its steps, /proc /sys /dev made once.
    zygotes = {mode: Zygote(mode, tmpfs / f"z-{mode.value}") for mode in Mode}

    def step(
        mode: Mode, store: Path = base, lowers: tuple[Path, ...] = (), cmd: str = "",
        own: bool = False,
    ) -> None:  # fmt: skip
        layer = store / f"s{next(counter)}"
        argv = ("bash", "-c", cmd) if cmd else ("/bin/true",)
        hide = (str(base), str(tmpfs))
        s = Step(argv, Path("/"), layer, lowers, mode, hostname="bench-node", hide=hide)
        if own:
            run_step(s)  # its zygote is gone, its cleaning done
            shutil.rmtree(layer)
        else:  # the zygote is removing the step's work dir meanwhile: it removes the rest
            zygotes[mode].run(s)
            zygotes[mode].remove(layer)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"python {sys.version.split()[0]}, kernel {os.uname().release}, {os.cpu_count()} cpus,")
    print(f"this process {rss} KB RSS, median of {n} runs, /bin/true unless said\n")
    rows: list[tuple[str, float]] = [
        ("direct: posix_spawn + wait", median_ms(spawn_true, n)),
        ("direct: disco.run.run (subprocess)", median_ms(lambda: run(["/bin/true"]), n)),
        ("direct: os.fork + execv + wait", median_ms(fork_true, n)),
        ("a bare os.fork + _exit of this process", median_ms(bare_fork, n)),
        ("live step, a zygote of its own", median_ms(lambda: step(Mode.LIVE, own=True), n)),
        ("live step, layer on the root fs", median_ms(lambda: step(Mode.LIVE), n)),
        ("NOOP step, layer on the root fs", median_ms(lambda: step(Mode.NOOP), n)),
        ("NOOP step, layer on a tmpfs (as a dance)", median_ms(lambda: step(Mode.NOOP, tmpfs), n)),
        ("live step, layer on a tmpfs", median_ms(lambda: step(Mode.LIVE, tmpfs), n)),
    ]
    ms = median_ms(lambda: step(Mode.NOOP, tmpfs, own=True), n)
    rows.append(("NOOP step, a zygote of its own (its start included)", ms))
    stacked: dict[int, tuple[Path, ...]] = {0: ()}
    for depth in (10, 100):
        lowers: list[Path] = []
        for i in range(depth):  # stacked layers must not lie on the root's filesystem
            (upper_of(tmpfs / f"{depth}-{i}") / "etc").mkdir(parents=True)
            (upper_of(tmpfs / f"{depth}-{i}") / f"etc/f{i}").write_text("x\n")
            lowers.insert(0, tmpfs / f"{depth}-{i}")
        stacked[depth] = tuple(lowers)
        ms = median_ms(lambda: step(Mode.NOOP, tmpfs, stacked[depth]), n)  # noqa: B023
        rows.append((f"NOOP step on {depth} stacked layers (tmpfs)", ms))
    walk = "ls -R /usr/share >/dev/null"
    for depth in (0, 100):
        ms = median_ms(lambda: step(Mode.NOOP, tmpfs, stacked[depth], walk), max(n // 5, 3))  # noqa: B023
        rows.append((f"NOOP step `{walk}`, {depth} layers", ms))
    # The same sandbox built by programs: unshare, mount, mknod, ln, ip, setpriv, env.
    layer = base / "script"
    s = Step(("/bin/true",), Path("/"), layer, mode=Mode.NOOP, hostname="bench-node")

    def scripted() -> None:
        subs = submounts("/", read_mounts(), [str(layer)])  # other tests mount meanwhile
        shutil.rmtree(layer, ignore_errors=True)
        for d in ["upper", "work/mnt", *(f"work/{i}" for i in range(len(subs) + 1))]:
            (layer / d).mkdir(parents=True)
        for i, sub in enumerate(subs, 1):
            (layer / f"work/m{i}").mkdir()
            (layer / "upper" / sub.path).mkdir(parents=True, exist_ok=True)
        scratch = layer / "zygote"
        run(["sh", "-c", describe(s, base_ops(Mode.NOOP, scratch), plan(s, subs, scratch))])

    try:
        rows.append(("NOOP step built by util-linux programs", median_ms(scripted, max(n // 5, 3))))
    except CommandError as e:  # the machine's mounts changed under the script
        print(f"(the util-linux variant failed: {e})")
    width = max(len(r[0]) for r in rows)
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:8.2f} ms")
    true_ms = rows[0][1]
    by = dict(rows)
    for name in ("live step, layer on a tmpfs", "NOOP step, layer on a tmpfs (as a dance)"):
        print(f"overhead of a {name}: {by[name] - true_ms:.2f} ms")


if __name__ == "__main__":
    main()
