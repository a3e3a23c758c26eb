"""A dance: each module of a plan, step by step, in the sandbox (DESIGN §6-§8).

Every step runs in a fresh overlay layer. In NOOP the layers stack, so a module sees
what the modules before it would have written; live, each successful step is
committed to the target root and the next one starts from there. Templates always
run under NOOP rules and only their output is kept.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from disco.asker import asking
from disco.changes import (
    DEFAULT_EXCLUDE,
    Change,
    content_diff,
    header,
    load_sensitive,
    read_changes,
)
from disco.errors import DiscoError
from disco.fetch import Plan
from disco.journal import commit, recover
from disco.links import relink
from disco.metrics import Meter, Record
from disco.modules import Edge, Module
from disco.mounts import bind_readonly, mount_tmpfs, private_mounts
from disco.params import Tree, encode, node_view, read_tree
from disco.rules import intercepted, load_rules
from disco.sandbox import Bind, Mode, Step, StepResult, Zygote, upper_of
from disco.scripts import interpreter_problem
from disco.stack import copy_dir_meta, fold
from disco.staging import Source, stage
from disco.state import State
from disco.view import (
    SANDBOX_PATH,
    View,
    binaries,
    build_shims,
    build_view,
    find,
    real_binds,
    write_parameters,
)

VIEW_AT = "/var/disco"


class Sink(Protocol):
    """Where a dance says what happens; the CLI prints it."""

    def info(self, text: str) -> None: ...
    def warning(self, text: str) -> None: ...
    def error(self, text: str) -> None: ...
    def text(self, text: str) -> None: ...
    def progress(self, module: str, index: int, total: int) -> None:
        """Module `index` of `total` (from 1) starts: for a progress line."""


@dataclass(frozen=True)
class Options:
    noop: bool
    root: Path = Path("/")
    diff: str = "normal"
    etc: Path | None = None  # noop.d/ and sensitive.d/: ROOT/etc/disco unless given
    timeout: float | None = None  # seconds a template or script may run
    dance: str = ""  # the dance's id in `disco history`: its commits' undo logs go there
    effects: str | None = None  # live: "run" or "intercept"; None: run on /, else intercept

    @property
    def config(self) -> Path:
        """Where noop.d/ and sensitive.d/ are read: the system being configured's."""
        return self.etc if self.etc is not None else self.root / "etc/disco"

    @property
    def on_host(self) -> bool:
        return os.path.realpath(self.root) == "/"

    @property
    def intercepts(self) -> bool:
        """Whether scripts' outside effects are intercepted (always in NOOP; live, on a
        root that is not the running system, unless --effects run)."""
        default = "run" if self.on_host else "intercept"
        return self.noop or (self.effects or default) == "intercept"


@dataclass
class Pending:
    """A NOOP step's layer that is stacked but not yet reported nor folded: it is read
    while the next step runs (on the other core)."""

    module: str
    label: str
    layer: Path
    shown: Path  # the name steps stack it under (a symlink to it): one plan for all
    reported: bool = False


@dataclass
class Outcome:
    changes: list[dict[str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def only(plan: Plan, wanted: list[str]) -> Plan:
    """The plan cut down to `wanted` and the modules they require, transitively."""
    by_name = {module.name: module for module in plan.modules}
    keep: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        todo += [r.name for r in by_name[name].requires if r.edge is Edge.AFTER]
    return Plan(plan.node, plan.server, tuple(m for m in plan.modules if m.name in keep))


class Dance:
    def __init__(self, state: State, plan: Plan, options: Options, sink: Sink, meter: Meter):
        self.state = state
        self.plan = plan
        self.options = options
        self.sink = sink
        self.meter = meter
        self.outcome = Outcome()
        # NOOP: what the steps so far would have written, folded into one layer, and the
        # last step's layer over it until it is reported (Pending).
        self.below: Path | None = None
        self.pending: Pending | None = None
        self.announcement: str | None = None  # "Processing X", once X's first lines come
        self.count = 0
        self.hidden = hidden_state(state.root, options.root)
        self.exclude = (*DEFAULT_EXCLUDE, *self.hidden)
        self.sensitive = load_sensitive(options.config)
        self.rules = load_rules(options.config)
        self.noop_names = intercepted(self.rules)

    def run(self) -> Outcome:
        recover(self.state.txn, self.sink.warning)  # a commit cut short: undone first
        with ExitStack() as stack:
            private_mounts()
            work = self.state.txn / "run"
            work.mkdir(parents=True, exist_ok=True)
            mount_tmpfs(work)  # our own mount namespace: gone when we are
            self.work = work
            found = find(self.options.root, self.noop_names)
            self.view = build_view(work / "view", self.rules, self.options.root, found)
            if self.options.on_host:  # questions about the running host asked outside
                stack.enter_context(asking(self.view.ask))
            bind_readonly(self.state.modules, self.view.path / "modules")
            shown = binaries(found)
            self.shims = build_shims(work / "shims", self.view, shown, self.options.root)
            self.real = [Bind(src, dst) for src, dst in real_binds(self.options.root, shown)]
            # Templates run under NOOP rules in both modes; live steps need a zygote of
            # their own, in the host's namespaces.
            self.zygotes = {Mode.NOOP: stack.enter_context(Zygote(Mode.NOOP, work / "z-noop"))}
            if not self.options.noop:
                self.zygotes[Mode.LIVE] = stack.enter_context(Zygote(Mode.LIVE, work / "z-live"))
            write_parameters(self.view, parameters(self.state, self.plan.node, self.plan.modules))
            if self.options.noop:  # what the steps would have written, from the first on
                self.below = work / "layers" / "below"
                upper_of(self.below).mkdir(parents=True)
                copy_dir_meta(self.options.root, upper_of(self.below))
            failed: set[str] = set()
            for index, module in enumerate(self.plan.modules, start=1):
                self.sink.progress(module.name, index, len(self.plan.modules))
                # Only what the module runs after can fail it; `before X` does not.
                blocker = next(
                    (r.name for r in module.requires if r.edge is Edge.AFTER and r.name in failed),
                    None,
                )
                if blocker is not None:
                    self.report_pending()
                    self.sink.warning(f"Skipping {module.name}: requires {blocker}")
                    self.outcome.skipped.append(module.name)
                    failed.add(module.name)
                    continue
                # Said once the module before has said all: its last step's changes are
                # reported while this module's first step runs.
                self.announcement = f"Processing {module.name}"
                ok = self.module(module)
                self.announce()
                if not ok:
                    self.outcome.failed.append(module.name)
                    failed.add(module.name)
            self.fold_pending()
        return self.outcome

    def announce(self) -> None:
        """Print what waits to be said, after the changes still to be reported."""
        self.report_pending()
        if self.announcement is not None:
            self.sink.info(self.announcement)
            self.announcement = None

    # -- one module -----------------------------------------------------------------

    def module(self, module: Module) -> bool:
        # The merged parameters are written once; a module changes only current_module.
        current = self.view.parameters / self.plan.node / "current_module"
        new = current.with_name(".current_module")  # a reader sees the old or the new
        new.write_bytes(encode(module.name))
        os.replace(new, current)
        templates = (
            sorted(
                str(p.relative_to(module.part("templates")))
                for p in module.part("templates").rglob("*")
                if p.is_file() or p.is_symlink()
            )
            if module.part("templates").is_dir()
            else []
        )
        for rel in templates:
            if not self.template(module, rel):
                return False
        if not self.deliver(module, bool(templates)):
            return False
        # As run-parts: files only, and no hidden ones (an editor's swap file).
        scripts = (
            sorted(
                p.name
                for p in module.part("scripts").iterdir()
                if p.is_file() and not p.name.startswith(".")
            )
            if module.part("scripts").is_dir()
            else []
        )
        for name in scripts:
            problem = interpreter_problem(
                module.part("scripts") / name, self.options.root, module.name
            )
            if problem:
                self.announce()
                self.sink.error(problem)
                return False
            path = f"{VIEW_AT}/modules/{module.name}/scripts/{name}"
            if not self.step(
                module, "exec", name, command(module.part("scripts") / name, path), True
            ):
                return False
        return True

    def deliver(self, module: Module, templates: bool) -> bool:
        """Stage files/ and the templates' outputs into a layer, no sandbox needed; then
        it is reported and committed (or stacked) like any step's."""
        sources = [Source(module.part("files"), f"{module.name}/files")]
        if templates:
            tree = self.view.out(module.name) / "tree"
            sources.append(Source(tree, f"{module.name}/templates", keep_owner=False))
        if not any(s.tree.is_dir() for s in sources):
            return True
        layer = self.new_layer()
        try:
            with self.meter.measure(module.name, "fetch", None):
                upper_of(layer).mkdir()
                stage(sources, upper_of(layer), self.lowers())
        except DiscoError as e:
            self.drop(layer)
            self.announce()
            self.sink.error(f"{module.name}: delivery of files and templates: {e}")
            return False
        self.announce()
        self.fold_pending()
        self.settle(module, "fetch", layer, frozenset())
        return True

    # -- steps ----------------------------------------------------------------------

    def template(self, module: Module, rel: str) -> bool:
        """Run a template; its output waits in the view, with the template's mode and its
        directories' modes, to be delivered."""
        tree, templates = self.view.out(module.name) / "tree", module.part("templates")
        out = tree / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        for parent in Path(rel).parents:
            os.chmod(tree / parent, stat.S_IMODE((templates / parent).stat().st_mode))
        path = f"{VIEW_AT}/modules/{module.name}/templates/{rel}"
        layer = self.new_layer()  # its writes are discarded with it, by the zygote
        result = self.sandboxed(("bash", path), layer, Mode.NOOP, True, stdout=out, discard=True)
        self.meter.add(record(module.name, "template", rel, result))
        os.chmod(out, stat.S_IMODE((templates / rel).stat().st_mode))
        if result.returncode != 0:
            self.sink.error(
                f"{module.name}: template {rel} {failure(result, self.options)};"
                f" /{rel} is left as it was"
            )
            return False
        return True

    def step(
        self, module: Module, name: str, item: str | None, argv: tuple[str, ...], intercept: bool
    ) -> bool:
        mode = Mode.NOOP if self.options.noop else Mode.LIVE
        layer = self.new_layer()
        result = self.sandboxed(argv, layer, mode, intercept and self.options.intercepts)
        self.meter.add(record(module.name, name, item, result))
        if result.returncode != 0:
            self.drop(layer)  # a failed step commits nothing, and is stacked under nothing
            self.sink.error(f"{module.name}: script {item} {failure(result, self.options)}")
            return False
        self.settle(module, item or name, layer, result.copied)
        return True

    def settle(
        self, module: Module, label: str, layer: Path, copied: frozenset[tuple[int, int]]
    ) -> None:
        """A successful step. Live: report its changes and commit them. NOOP: stack it,
        to be reported while the next step runs, then folded under the steps to come.
        `copied`: the files the step copied up from a hard-linked one (disco.links)."""
        if copied:  # the other names of hard-linked files changed too
            relink(upper_of(layer), self.lowers(), copied, self.exclude)
        if self.options.noop:  # (the step before is folded by now)
            # Stacked under a name of its own, as the layer below is: the next step's
            # sandbox is then planned as the one before it was (Zygote.plan). A symlink,
            # not a rename: the zygote is removing the step's work dir meanwhile.
            shown, new = self.work / "layers" / "pending", self.work / "layers" / ".pending"
            os.symlink(layer.name, new)
            os.replace(new, shown)
            self.pending = Pending(module.name, label, layer, shown)
            return
        with self.meter.measure(module.name, "diff", label):
            changes = self.read(layer, self.lowers())
            self.report(module.name, label, changes)
        if changes:
            with self.meter.measure(module.name, "commit", label):
                commit(self.state.txn, changes, self.options.root, self.options.dance,
                       module.name, label)  # fmt: skip
        self.drop(layer)

    def report_pending(self) -> None:
        """Read and report the pending step's changes (the view below it stays as it was)."""
        p = self.pending
        if p is None or p.reported:
            return
        p.reported = True
        with self.meter.measure(p.module, "diff", p.label):
            self.report(p.module, p.label, self.read(p.layer, self.lowers()[1:]))

    def fold_pending(self) -> None:
        """Report the pending step if not yet done, then fold its layer under the steps
        to come (nothing may be mounted over the layers meanwhile)."""
        if self.pending is None:
            return
        self.report_pending()
        layer, self.pending = self.pending.layer, None
        assert self.below is not None  # NOOP
        fold(upper_of(layer), upper_of(self.below), self.options.root)
        self.drop(layer)

    def lowers(self) -> list[Path]:
        """What a step's layer lies on: the NOOP steps so far (the pending one on top),
        then the target root."""
        return [upper_of(x) for x in self.stacked()] + [self.options.root]

    def read(self, layer: Path, lowers: list[Path]) -> list[Change]:
        return read_changes(upper_of(layer), lowers, exclude=self.exclude, sensitive=self.sensitive)

    def report(self, module: str, label: str, changes: list[Change]) -> None:
        for change in changes:
            line = header(change)
            self.sink.info(line)
            diff = content_diff(change, self.options.diff)
            if diff:
                self.sink.text(diff)
            self.outcome.changes.append(
                {
                    "module": module,
                    "step": label,
                    "path": change.path,
                    "kind": change.kind.value,
                    "header": line,
                }  # fmt: skip
            )

    def stacked(self) -> tuple[Path, ...]:
        pending = () if self.pending is None else (self.pending.shown,)
        return pending + (() if self.below is None else (self.below,))

    def new_layer(self) -> Path:
        """A fresh layer directory: the zygote makes its work/, disco its upper/."""
        self.count += 1
        path = self.work / "layers" / str(self.count)
        path.mkdir(parents=True)
        return path

    def drop(self, layer: Path) -> None:
        """A layer done with: the NOOP zygote removes it before its next step."""
        self.zygotes[Mode.NOOP].remove(layer)

    def sandboxed(
        self,
        argv: tuple[str, ...],
        layer: Path,
        mode: Mode,
        intercept: bool,
        stdout: Path | None = None,
        discard: bool = False,
    ) -> StepResult:
        noop = mode is Mode.NOOP
        # The last step's changes are read and reported while this one runs, if its
        # output cannot come between them (a template's goes to a file); else first.
        overlap = stdout is not None
        if not overlap:
            self.fold_pending()
            self.announce()
        lowers = self.stacked() if self.options.noop else ()
        zygote = self.zygotes[mode]
        zygote.start(
            Step(
                argv,
                root=self.options.root,
                layer=layer,
                lower_layers=lowers,
                mode=mode,
                env=step_env(self.plan.node, noop, intercept),
                hostname=self.plan.node,
                hide=self.hidden,
                binds=(Bind(self.view.path, VIEW_AT), *(self.real if intercept else ())),
                shims=self.shims if intercept else None,
                stdout=stdout,
                timeout=self.options.timeout,
            ),
            discard,
        )
        self.announce()
        result = zygote.result()
        self.fold_pending()
        return result


def step_env(node: str, noop: bool, intercept: bool) -> dict[str, str]:
    """The environment of a step: a clean one, the interceptors first on PATH."""
    env = {
        "PATH": f"{VIEW_AT}/bin:{SANDBOX_PATH}",
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": "/bin/bash",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TERM": os.environ.get("TERM", "dumb"),
        "DISCO_NODE": node,
    }
    if noop:
        env["NOOP"] = "true"
    if intercept:
        env["PATH"] = f"{VIEW_AT}/noop:{env['PATH']}"
        env["BASH_ENV"] = f"{VIEW_AT}/noop.bash"  # builtins (kill) as functions
    return env


def noop_binds(view: View, binaries: list[str], root: Path) -> list[Bind]:
    """The real binaries' directories under /var/disco/real, then the interceptor over
    each command's absolute path: `/usr/sbin/service` is caught."""
    real = [Bind(source, target) for source, target in real_binds(root, binaries)]
    return real + [Bind(view.interceptor, path) for path in binaries]


def hidden_state(state: Path, root: Path) -> tuple[str, ...]:
    """disco's state as a path in the root, if it lies there: not shown, not reported."""
    real_root, real_state = os.path.realpath(root), os.path.realpath(state)
    if real_state == real_root or real_state.startswith(real_root.rstrip("/") + "/"):
        return ("/" + os.path.relpath(real_state, real_root),)
    return ()


def parameters(
    state: State, node: str, modules: Sequence[Module], current: str | None = None
) -> Tree:
    """What steps see at /var/disco/parameters: the client settings, and the node's tree
    with the modules' defaults under its parameters (and its current_module)."""
    settings = read_tree(state.parameters / "disco")
    node_tree = read_tree(state.parameters / node)
    defaults = [module.defaults() for module in modules]
    view = node_view({"disco": settings} if settings else {}, node, node_tree, defaults)
    own = view[node]
    assert isinstance(own, dict)
    if current is not None:
        own["current_module"] = current
    return view


def command(host_path: Path, path: str) -> tuple[str, ...]:
    """A script with a `#!` line runs as itself if it is executable; else with bash."""
    with host_path.open("rb") as f:
        shebang = f.read(2) == b"#!"
    if shebang and os.access(host_path, os.X_OK):
        return (path,)
    return ("bash", path)


def failure(result: StepResult, options: Options) -> str:
    if result.timed_out:
        return (
            f"ran longer than its limit of {options.timeout:g} s and was killed with its"
            " processes (raise --timeout or disco/client/timeout/step)"
        )
    return f"exited with status {result.returncode}"


def record(module: str, step: str, item: str | None, result: StepResult) -> Record:
    return Record(module, step, item, result.wall, result.usage, result.returncode)
