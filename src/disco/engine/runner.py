"""The dance's side of the zygote (zygote.py): started once per dance and mode, it is
sent each step's plan (sandbox.py) and answers with the step's result (DESIGN §7, §12).
"""

from __future__ import annotations

import itertools
import os
import select
import shutil
import stat
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from disco.engine import cgroups, zygote
from disco.engine.cgroups import SETTING, Limits, StepCgroup
from disco.engine.mounts import Op, Submount, read_mounts, submounts
from disco.engine.sandbox import (
    Bind,
    Mode,
    Prebuilt,
    Step,
    StepResult,
    Usage,
    base_ops,
    bind_groups,
    describe,
    lowers_of,
    pid1_ops,
    plan,
    upper_of,
)
from disco.engine.syscalls import CLONE_NEWPID, setns, unshare
from disco.errors import CommandError, DiscoError
from disco.run import start, wait_exit

KILL_GRACE = 2.0  # seconds disco waits for the zygote to be gone after asking it to stop


def _prepare(step: Step, subs: Sequence[Submount]) -> bool:
    """Create upper/; dirs we create in upper/ copy their lower's metadata (times last,
    children first: making a child dir sets its parent's). Whether upper/ is new: dirs
    alone, as any new layer's of the same plan (a NOOP shell's layer is not)."""
    fresh = not upper_of(step.layer).exists()
    made: list[tuple[Path, os.stat_result]] = []
    for rel in ["", *(s.path for s in subs if not s.readonly)]:
        parts = Path(rel).parts
        for n in range(len(parts) + 1):
            part = os.path.join(*parts[:n]) if n else ""
            up = upper_of(step.layer) / part
            if up.is_dir():
                continue
            up.mkdir(parents=True)
            srcs = [upper_of(x) / part for x in step.lower_layers] + [step.root / part]
            src = next((s for s in srcs if s.is_dir()), None)
            if src is not None:
                st = src.stat()
                os.chown(up, st.st_uid, st.st_gid)
                os.chmod(up, stat.S_IMODE(st.st_mode))
                made.append((up, st))
    for up, st in reversed(made):
        os.utime(up, ns=(st.st_atime_ns, st.st_mtime_ns))
    return fresh


def _stdio(spec: int | Path | None, flags: int) -> Any:
    if isinstance(spec, Path):
        return (str(spec), flags, 0o644)
    return spec


class Zygote:
    """The step runner of a dance for one mode (zygote.py), started once and serving
    every step of that mode.

    `scratch` is an empty directory for what the zygote builds once (its mount points
    live in its own namespace only); None: a temporary one. `pass_fds` are fds of ours
    that steps may name as their stdin/stdout/stderr.
    """

    def __init__(
        self,
        mode: Mode = Mode.NOOP,
        scratch: Path | None = None,
        pass_fds: Sequence[int] = (),
        limits: Limits | None = None,
        host_network: bool = False,
    ) -> None:
        self.mode = mode
        self.limits = limits = limits or Limits()
        self.own_scratch = scratch is None
        self.scratch = (
            Path(tempfile.mkdtemp(prefix="disco-zygote-")) if scratch is None else scratch
        )
        self.scratch.mkdir(parents=True, exist_ok=True)
        noop = mode is Mode.NOOP
        # NOOP steps: root in a user namespace of their own, in a cgroup with limits.
        # Live ones (the host's): in a cgroup too, so that none outlives the dance.
        self.userns = identity_userns() if noop else -1
        self.cgroup = _step_cgroup(limits if noop else Limits(0, 0, 0))
        self.counted = self.cgroup.counters()
        # Why the steps have no pids or memory limit, if they have none ("": they have).
        self.unlimited = self.cgroup.missing if noop else ""
        req_r, self.req = os.pipe2(os.O_CLOEXEC)
        self.rep, rep_w = os.pipe2(os.O_CLOEXEC)
        # Imported, not run as a script: its cached bytecode is read, not compiled anew.
        # Only disco.engine's zygote and syscalls: no site, nothing else of disco.
        top = os.path.dirname(os.path.dirname(os.path.dirname(zygote.__file__)))
        load = f"import sys; sys.path.append({top!r}); from disco.engine import zygote"
        argv = [sys.executable, "-I", "-S", "-c", f"{load}; zygote.main()", str(req_r), str(rep_w)]
        ours = -1
        try:
            if mode is Mode.NOOP:  # the zygote is pid 1 of a pid namespace of its own
                ours = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
                unshare(CLONE_NEWPID)
            try:
                fds = (req_r, rep_w, *pass_fds, *([self.userns] if noop else []))
                self.proc = start(argv, pass_fds=fds)
            finally:
                if ours >= 0:
                    setns(ours, CLONE_NEWPID)
        finally:
            for fd in (req_r, rep_w, ours):
                if fd >= 0:
                    os.close(fd)
        self.subs: dict[tuple[str, tuple[str, ...]], list[Submount]] = {}
        self.mountinfo_fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        self.mountinfo = select.poll()
        self.mountinfo.register(self.mountinfo_fd, select.POLLPRI | select.POLLERR)
        self.table = Path("/proc/self/mountinfo").read_text()
        self.prebuilt: dict[tuple[Bind, tuple[Bind, ...]], Prebuilt] = {}
        self.plans: dict[tuple[Any, ...], list[Op]] = {}
        self.trash: list[str] = []  # to remove, told with the next step
        self.built: list[Op] = base_ops(mode, self.scratch)
        self.early: list[Op] = pid1_ops(self.scratch) if noop else []
        self.pending: tuple[Step, list[Op]] | None = None
        setup = {"noop": noop, "ops": [op.wire() for op in self.built],
                 "userns": self.userns,
                 "early": [op.wire() for op in self.early],
                 "init_root": str(self.scratch / "api" / "init"),
                 "cgroups": self.cgroup.procs,
                 "host_network": host_network,
                 "tag": f"{os.getpid()}-{next(_TAGS)}"}  # fmt: skip
        try:
            self._call({"setup": setup}, "cannot start the sandbox helper")
        except BaseException:
            self.close(interrupted=True)
            raise

    def __enter__(self) -> Zygote:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(interrupted=e is not None)

    def close(self, interrupted: bool = False) -> None:
        """Stop the zygote (it kills a step it may still be running)."""
        if self.req >= 0:
            last = {"stop": True} if interrupted else {"remove": self.trash}
            if (interrupted or self.trash) and self.proc.poll() is None:
                try:
                    zygote.send(self.req, last)
                except OSError:  # it is gone already
                    pass
            self.trash = []
            for fd in (self.req, self.rep, self.mountinfo_fd):  # at end of file, the zygote
                os.close(fd)  # kills what it runs, and exits
            self.req = self.rep = self.mountinfo_fd = -1
        if not wait_exit(self.proc, KILL_GRACE + 5):
            self.proc.kill()
            self.proc.wait()
        self.cgroup.remove()  # empty now: its steps died with their pid namespaces
        if self.userns >= 0:
            os.close(self.userns)
            self.userns = -1
        if self.own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def submounts(self, step: Step) -> list[Submount]:
        """The filesystems under the root, parsed again only when the mount table
        changed (someone else mounted or unmounted: the steps' own mounts live in their
        namespaces and never show in ours)."""
        hidden = [str(step.root / h.lstrip("/")) for h in step.hide]
        skip = (*map(str, step.lower_layers), *hidden, str(self.scratch))
        # The kernel marks an open mount table when it changes: poll says so, once.
        if self.mountinfo.poll(0):
            self.table = Path("/proc/self/mountinfo").read_text()
            self.subs.clear()
        key = (str(step.root), skip)
        if key not in self.subs:
            self.subs[key] = submounts(str(step.root), read_mounts(self.table), skip)
        return self.subs[key]

    def prebuild(self, binds: Sequence[Bind]) -> list[Prebuilt]:
        """The zygote's prebuilt mounts for `binds`, made now if they are new."""
        out = []
        for group in bind_groups(binds):
            if group not in self.prebuilt:
                place = str(self.scratch / "binds" / str(len(self.prebuilt)))
                built = Prebuilt(group[0], group[1], place)
                ops = built.ops()
                self._call({"prebuild": [op.wire() for op in ops]},
                           f"cannot bind {group[0].source} into the sandbox")  # fmt: skip
                self.prebuilt[group] = built
                self.built += ops
            out.append(self.prebuilt[group])
        return out

    def run(self, step: Step, discard: bool = False) -> StepResult:
        """Run `step.argv` in a fresh overlay layer over the target root; see the module doc.
        `discard`: the zygote removes the layer afterwards (a template's writes).

        Raises DiscoError (with a script that reproduces the sandbox as hint) when the
        sandbox cannot be built, CommandError (status 127) when the command cannot be run.
        """
        self.start(step, discard)
        return self.result()

    def start(self, step: Step, discard: bool = False) -> None:
        """Hand `step` to the zygote; `result()` waits for it. Meanwhile disco may read
        anything, but the step's layer and the layers below it may not change."""
        if not step.argv:
            raise DiscoError("a step needs a command", "give at least the program to run")
        if step.mode is not self.mode:
            raise ValueError(f"a {self.mode.value} zygote cannot run a {step.mode.value} step")
        step = _absolute(step)
        subs = self.submounts(step)
        ops = self.plan(step, subs)
        fresh = _prepare(step, subs)
        write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW  # never a planted link
        request = {
            "remove": self.trash,
            "layer": str(step.layer),
            "discard": str(step.layer) if discard else "",
            "fresh": fresh,  # a kept sandbox (warm.py) serves only a new layer
            "ops": [op.wire() for op in ops],
            "hostname": step.hostname,
            "argv": list(step.argv),
            "env": dict(step.env),
            "stdio": [
                ("/dev/null", os.O_RDONLY, 0) if step.stdin is None else step.stdin,
                _stdio(step.stdout, write),
                _stdio(step.stderr, write),
            ],
            "timeout": step.timeout or 0,
        }
        zygote.send(self.req, request)
        self.pending, self.trash = (step, ops), []

    def result(self) -> StepResult:
        """The result of the step started last: its sandbox is gone by then."""
        assert self.pending is not None
        step, ops = self.pending
        self.pending = None
        answer = self._answer()
        result = _result(step, self.built, ops, answer, self.early)
        if result.returncode != 0:
            result = replace(result, limit=self.limit_hit())
        return result

    def limit_hit(self) -> str:
        """The limit the last step ran into, if its cgroup's counters say so."""
        now, before = self.cgroup.counters(), self.counted
        self.counted = now
        if now["memory"] > before.get("memory", 0):
            return f"its memory limit ({SETTING}/memory_mb = {self.limits.memory_mb})"
        if now["pids"] > before.get("pids", 0):
            return f"its limit of processes ({SETTING}/pids_max = {self.limits.pids})"
        return ""

    def plan(self, step: Step, subs: list[Submount]) -> list[Op]:
        """plan(), made again only when something it depends on is another: the steps
        of a dance differ in their layers, which the plan does not name."""
        dirs = tuple(p.is_dir() for s in subs if not s.readonly for p in lowers_of(step, s.path))
        key = (step.mode, step.root, step.lower_layers, step.shims, step.hide, step.binds,
               step.cwd, tuple(subs), dirs)  # fmt: skip
        if key not in self.plans:
            if len(self.plans) > 16:
                self.plans.clear()
            self.plans[key] = plan(step, subs, self.scratch, self.prebuild(step.binds))
        return self.plans[key]

    def remove(self, path: Path) -> None:
        """Have the zygote remove a layer (or any tree with no mount under it) once it
        has answered its next step, while disco reads that step's changes. (Told with
        the step: a message of its own would wake the zygote, which then runs where
        disco does.)"""
        self.trash.append(str(path))

    def _call(self, message: dict[str, Any], what: str) -> None:
        """A request the zygote answers at once (setup, prebuild): {} or why it failed."""
        zygote.send(self.req, message)
        answer = zygote.receive(self.rep)
        if answer is None:
            answer = {"msgs": {"F": f"the zygote exited with status {self.proc.wait()}"}}
        if answer:
            hint = "run disco as root, on a kernel with overlayfs and namespaces"
            raise DiscoError(f"{what}: {answer['msgs']['F']}", hint)

    def _answer(self) -> dict[str, Any]:
        """The zygote's answer. If we are interrupted, the step is killed first."""
        try:
            answer = zygote.receive(self.rep)
        except BaseException:
            zygote.send(self.req, {"stop": True})
            zygote.receive(self.rep)
            raise
        if answer is None:
            raise DiscoError(
                f"the sandbox helper (zygote) exited with status {self.proc.wait()}",
                "run again with --debug; a kernel without overlayfs or namespaces cannot sandbox",
            )
        return dict(answer)


def _result(
    step: Step, built: Sequence[Op], ops: Sequence[Op], answer: dict[str, Any],
    early: Sequence[Op] = (),
) -> StepResult:  # fmt: skip
    msgs: dict[str, str] = answer["msgs"]
    if "E" in msgs:
        i, err = map(int, msgs["E"].split())
        raise DiscoError(
            f"cannot build the step's sandbox: {ops[i].describe()}: {os.strerror(err)}",
            f"reproduce it as root with:\n{describe(step, built, ops, early)}",
        )
    if "X" in msgs:
        raise CommandError(
            step.argv, 127, f"cannot run {step.argv[0]}: {os.strerror(int(msgs['X']))}"
        )
    if "F" in msgs:
        raise DiscoError(
            f"the step's sandbox failed: {msgs['F']}", describe(step, built, ops, early)
        )
    strays = tuple(map(int, msgs.get("K", "").split()))
    utime, stime, *counts = answer["usage"]  # getrusage(2) order, as Usage
    usage = Usage(float(utime), float(stime), *map(int, counts))
    code = os.waitstatus_to_exitcode(answer["status"])
    copied = frozenset(map(tuple, answer.get("copied", ())))
    return StepResult(code, answer["wall"], usage, strays, bool(answer["timed_out"]), copied)


def run_step(step: Step, limits: Limits | None = None) -> StepResult:
    """Run one step with a zygote of its own (a dance keeps one for all its steps)."""
    fds = [fd for fd in (step.stdin, step.stdout, step.stderr) if isinstance(fd, int)]
    with Zygote(step.mode, pass_fds=fds, limits=limits) as z:
        return z.run(step)


def identity_userns() -> int:
    """A new user namespace whose every uid and gid is the host's, as an fd: root in it
    holds capabilities over what it owns alone. `unshare --user` holds it while we write
    its maps (which only a process outside it may) and open it."""
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    script = f"echo >&{ready_w}; exec cat <&{hold_r} >/dev/null"
    try:
        proc = start(["unshare", "--user", "--", "bash", "-c", script], pass_fds=(ready_w, hold_r))
    finally:
        os.close(ready_w)
        os.close(hold_r)
    try:
        if os.read(ready_r, 1) != b"\n":
            raise DiscoError(
                "cannot make a user namespace for the sandbox (unshare --user failed)",
                "run disco as root on a kernel with user namespaces (user.max_user_namespaces > 0)",
            )
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{proc.pid}/{name}", "w") as f:
                f.write("0 0 4294967295")
        return os.open(f"/proc/{proc.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(hold_w)
        proc.wait()


_CGROUPS = itertools.count(1)
_TAGS = itertools.count(1)


def _step_cgroup(limits: Limits) -> StepCgroup:
    name = f"disco-{os.getpid()}-{next(_CGROUPS)}"
    try:
        return cgroups.make(name, limits)
    except OSError as e:  # no cgroup filesystem: steps run without limits
        return StepCgroup(missing=f"no cgroup for the steps ({e.strerror or e})")


def _absolute(step: Step) -> Step:
    env = step.env
    if step.mode is Mode.LIVE:  # so that systemctl reaches systemd from our pivoted root
        env = {"SYSTEMD_IGNORE_CHROOT": "1", **env}
    return replace(
        step,
        env=env,
        root=Path(os.path.realpath(step.root)),
        layer=Path(os.path.abspath(step.layer)),
        lower_layers=tuple(Path(os.path.abspath(p)) for p in step.lower_layers),
    )
