"""A dance: each module of a plan, step by step, in the sandbox (DESIGN §6-§8).

Every step runs in a fresh overlay layer (layers.py). In NOOP the layers stack, so a
module sees what the modules before it would have written; live, each successful step
is committed to the target root and the next one starts from there. Templates always
run under NOOP rules and only their output is kept.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from disco.client.fetch import Plan
from disco.client.state import State
from disco.dance.environment import (
    VIEW_AT,
    command,
    hidden_state,
    parameters,
    set_current_module,
    step_env,
)
from disco.dance.layers import Early, Layers
from disco.dance.options import Drifted, Guard, Options, Outcome, Split, Watch
from disco.dance.reporting import ChangeReport, Sink
from disco.engine.cgroups import SETTING as SANDBOX
from disco.engine.changes import DEFAULT_EXCLUDE, Change, load_sensitive
from disco.engine.links import relink
from disco.engine.mounts import bind_readonly, mount_tmpfs, private_mounts
from disco.engine.runner import Zygote
from disco.engine.sandbox import Bind, Mode, Step, StepResult, Usage, upper_of
from disco.engine.scripts import ignored_interpreter, interpreter_problem
from disco.engine.staging import Source, stage
from disco.errors import DiscoError
from disco.live.commit import commit
from disco.live.recovery import recover
from disco.noop.asker import Asker, Duties, asking
from disco.noop.packages import Fetcher, read_log
from disco.noop.rules import intercepted, load_rules
from disco.noop.view import binaries, build_shims, build_view, find, real_binds, write_parameters
from disco.report.metrics import Meter, Record
from disco.run import run
from disco.tree.modules import Edge, Module


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
    def __init__(
        self,
        state: State,
        plan: Plan,
        options: Options,
        sink: Sink,
        meter: Meter,
        *,
        guard: Guard | None = None,
        watch: Watch | None = None,
        save: Split | None = None,
        resume: Split | None = None,
    ):
        self.guard = guard
        self.watch = watch
        self.save = save
        self.resume = resume
        self.state = state
        self.plan = plan
        self.options = options
        self.sink = sink
        self.meter = meter
        self.outcome = Outcome()
        self.announcement: str | None = None  # "Processing X", once X's first lines come
        self.hidden = hidden_state(options.state or state.root, options.root)
        self.exclude = (*DEFAULT_EXCLUDE, *self.hidden)
        self.changes = ChangeReport(
            sink, self.outcome.changes, self.exclude, load_sensitive(options.config), options.diff
        )
        self.rules = load_rules(options.config, options.package_mode)
        self.noop_names = intercepted(self.rules)
        self.asker: Asker | None = None
        self.fetcher: Fetcher | None = None

    def run(self) -> Outcome:
        recover(self.state.txn, self.sink.warning)  # a commit cut short: undone first
        with ExitStack() as stack:
            private_mounts()
            work = self.state.txn / "run"
            work.mkdir(parents=True, exist_ok=True)
            mount_tmpfs(work, self.options.limits.tmpfs_mb)  # our mount namespace's alone
            self.work = work
            found = find(self.options.root, self.noop_names)
            self.view = build_view(work / "view", self.rules, self.options.root, found)
            if self.options.package_mode == "fetch":  # package installs fetched outside (§17)
                cache = self.state.root / "cache" / "debs"
                cache.mkdir(parents=True, exist_ok=True, mode=0o755)
                (self.view.path / "debs").mkdir()
                bind_readonly(cache, self.view.path / "debs")
                self.fetcher = Fetcher(self.options.root, cache, work / "fetches.jsonl")
            if self.options.on_host:  # questions about the running host asked outside
                (self.view.path / "on-host").touch()
            if self.options.on_host or self.fetcher is not None:
                duties = Duties(self.options.on_host, self.fetcher)
                self.asker = stack.enter_context(asking(self.view.ask, duties=duties))
            bind_readonly(self.state.modules, self.view.path / "modules")
            shown = binaries(found)
            self.shims = build_shims(work / "shims", self.view, shown, self.options.root)
            self.real = [Bind(src, dst) for src, dst in real_binds(self.options.root, shown)]
            # Templates run under NOOP rules in both modes; live scripts on / need a zygote
            # of their own (the host's namespaces). Elsewhere they are sandboxed as in
            # NOOP, by the same zygote: its start is paid once.
            templates = stack.enter_context(self.zygote(Mode.NOOP, "z-noop"))
            self.zygotes = {TEMPLATES: templates, SCRIPTS: templates}
            if self.mode is not Mode.NOOP:
                self.zygotes[SCRIPTS] = stack.enter_context(self.zygote(self.mode, "z-live"))
            if templates.unlimited:
                self.sink.warning(
                    f"steps run without pids and memory limits: {templates.unlimited}"
                )
            write_parameters(
                self.view,
                parameters(self.state, self.plan.node, self.plan.modules, server=self.plan.server),
            )
            remove = templates.remove
            seed = upper_of(self.resume.below) if self.resume is not None else None
            self.layers = Layers(
                work, self.options.root, self.options.noop, remove, self.diff, seed
            )
            failed: set[str] = set(self.resume.failed if self.resume is not None else ())
            start = self.resume.index if self.resume is not None else 0
            for index, module in enumerate(self.plan.modules, start=1):
                if index - 1 < start:  # a plan's shared prefix: danced once, by base
                    continue
                if self.save is not None and index - 1 == self.save.index:
                    self.split(self.save)
                self.sink.progress(module.name, index, len(self.plan.modules))
                # Only what the module runs after can fail it; `before X` does not.
                blocker = next(
                    (r.name for r in module.requires if r.edge is Edge.AFTER and r.name in failed),
                    None,
                )
                if blocker is not None:
                    self.layers.report_pending()
                    self.sink.warning(f"Skipping {module.name}: requires {blocker}")
                    self.outcome.skipped.append(module.name)
                    failed.add(module.name)
                    continue
                # Said once the module before has said all: its last step's changes are
                # reported while this module's first template runs (sandboxed()), not
                # here. A module that ran no step says its name now.
                self.announcement = f"Processing {module.name}"
                ok = self.module(module)
                if self.announcement is not None:
                    self.announce()
                if not ok:
                    self.outcome.failed.append(module.name)
                    failed.add(module.name)
            self.layers.fold_pending()
            if self.save is not None and self.save.index >= len(self.plan.modules):
                self.split(self.save)
        return self.outcome

    def split(self, save: Split) -> None:
        """Copy what the modules so far would write to `save.below` (NOOP only)."""
        self.layers.fold_pending()
        assert self.layers.below is not None
        save.below.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", "--", str(upper_of(self.layers.below)), str(upper_of(save.below))])

    @property
    def mode(self) -> Mode:
        """How the scripts run: LIVE (the host's namespaces) only live on the node's own
        root; NOOP and live on another root (an image, a container's root) sandboxed."""
        return Mode.LIVE if not self.options.noop and self.options.on_host else Mode.NOOP

    def zygote(self, mode: Mode, name: str) -> Zygote:
        host_network = mode is Mode.NOOP and not self.options.noop and not self.options.intercepts
        return Zygote(mode, self.work / name, limits=self.options.limits, host_network=host_network)

    def announce(self) -> None:
        """Print what waits to be said, after the changes still to be reported."""
        self.layers.report_pending()
        if self.announcement is not None:
            self.sink.info(self.announcement)
            self.announcement = None

    # -- one module -----------------------------------------------------------------

    def module(self, module: Module) -> bool:
        set_current_module(self.view, self.plan.node, module.name)
        templates = template_names(module.part("templates"))
        early = Early()
        for rel in templates:
            if not self.template(module, rel, early):
                if early.layer is not None:
                    self.layers.drop(early.layer)
                return False
        if not self.deliver(module, bool(templates), early):
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
            ignored = ignored_interpreter(module.part("scripts") / name, module.name)
            if ignored:
                self.announce()
                self.sink.warning(ignored)
            path = f"{VIEW_AT}/modules/{module.name}/scripts/{name}"
            if not self.step(
                module, "exec", name, command(module.part("scripts") / name, path), True
            ):
                return False
        return True

    def deliver(self, module: Module, templates: bool, early: Early) -> bool:
        """Stage files/ (unless staged `early`) and the templates' outputs into a layer,
        no sandbox needed; then it is reported and committed (or stacked) like any step's."""
        sources = [] if early.done else [Source(module.part("files"), f"{module.name}/files")]
        if templates:
            tree = self.view.out(module.name) / "tree"
            sources.append(Source(tree, f"{module.name}/templates", keep_owner=False))
        if early.layer is None and not any(s.tree.is_dir() for s in sources):
            return True
        layer = early.layer or self.layers.new()
        try:
            with self.meter.measure(module.name, "fetch", None):
                if early.error is not None:
                    raise early.error
                if early.layer is None:
                    upper_of(layer).mkdir()
                stage(sources, upper_of(layer), self.layers.lowers())
        except DiscoError as e:
            self.layers.drop(layer)
            self.announce()
            self.sink.error(f"{module.name}: delivery of files and templates: {e}")
            return False
        self.announce()
        self.layers.fold_pending()
        return self.settle(module, "fetch", layer, frozenset())

    def stage_files(self, module: Module, early: Early) -> None:
        """Stage files/ into the delivery's layer while the module's first template runs:
        the view it is staged over does not change until the template has run (NOOP
        folds, live commits, only between steps), and no step sees the layer yet."""
        if early.done:
            return
        early.done = True
        files = module.part("files")
        if not files.is_dir():
            return
        early.layer = self.layers.new()
        try:
            upper_of(early.layer).mkdir()
            stage([Source(files, f"{module.name}/files")], upper_of(early.layer),
                  self.layers.lowers())  # fmt: skip
        except DiscoError as e:  # said by deliver(), if the templates succeed
            early.error = e

    # -- steps ----------------------------------------------------------------------

    def template(self, module: Module, rel: str, early: Early) -> bool:
        """Run a template; its output waits in the view, with the template's mode and its
        directories' modes, to be delivered."""
        templates = module.part("templates")
        try:
            out, fd = self.view.output(module.name, templates, rel)
        except DiscoError as e:
            self.announce()
            self.sink.error(f"{module.name}: {e}")
            return False
        try:
            path = f"{VIEW_AT}/modules/{module.name}/templates/{rel}"
            layer = self.layers.new()  # its writes are discarded with it, by the zygote
            result = self.sandboxed(
                ("bash", path), layer, TEMPLATES, True, stdout=out, discard=True,
                meanwhile=lambda: self.stage_files(module, early),
            )  # fmt: skip
            self.meter.add(record(module.name, "template", rel, result))
            self.downloads(module.name, rel)
            os.fchmod(fd, stat.S_IMODE((templates / rel).stat().st_mode))
        finally:
            os.close(fd)
        if result.returncode != 0:
            self.sink.error(
                f"{module.name}: template {rel} {failure(result, self.options, self.work)};"
                f" /{rel} is left as it was"
            )
            return False
        return True

    def step(
        self, module: Module, name: str, item: str | None, argv: tuple[str, ...], intercept: bool
    ) -> bool:
        layer = self.layers.new()
        result = self.sandboxed(argv, layer, SCRIPTS, intercept and self.options.intercepts)
        self.meter.add(record(module.name, name, item, result))
        self.downloads(module.name, item)
        if result.returncode != 0:
            self.layers.drop(layer)  # a failed step commits nothing, and is stacked under nothing
            self.sink.error(
                f"{module.name}: script {item} {failure(result, self.options, self.work)}"
            )
            return False
        return self.settle(module, item or name, layer, result.copied)

    def settle(
        self, module: Module, label: str, layer: Path, copied: frozenset[tuple[int, int]]
    ) -> bool:
        """A successful step. Live: report its changes and commit them. NOOP: stack it,
        to be reported while the next step runs, then folded under the steps to come.
        `copied`: the files the step copied up from a hard-linked one (disco.engine.links).
        False if its commit failed: that fails the module, as a failed step does."""
        if copied:  # the other names of hard-linked files changed too
            relink(upper_of(layer), self.layers.lowers(), copied, self.exclude)
        if self.options.noop:
            self.layers.stack(module.name, label, layer)
            return True
        said = len(self.outcome.changes)
        changes = self.diff(module.name, label, layer, self.layers.lowers())
        try:
            if self.guard is not None:
                self.guard(module.name, label, changes)
            if changes:
                with self.meter.measure(module.name, "commit", label):
                    commit(self.state.txn, changes, self.options.root, self.options.dance,
                           module.name, label)  # fmt: skip
        except Drifted as e:
            for change in self.outcome.changes[said:]:
                change["failed"] = f"not committed: {e.message}"
            raise
        except DiscoError as e:
            self.uncommitted(module.name, label, said, e)
            return False
        finally:
            self.layers.drop(layer)
        return True

    def downloads(self, module: str, item: str | None) -> None:
        """The packages the host fetched for the step (DESIGN §17): a record of their
        own, apart from the step's, in the report."""
        if self.fetcher is None:
            return
        for note in read_log(self.fetcher.log):
            wall = note.get("wall", 0.0)
            status = note.get("exit", 1)
            self.meter.add(
                Record(
                    module,
                    "download",
                    item,
                    float(wall) if isinstance(wall, float) else 0.0,
                    NO_USAGE,
                    status if isinstance(status, int) else 1,
                )  # fmt: skip
            )

    def uncommitted(self, module: str, label: str, said: int, e: DiscoError) -> None:
        """A commit that failed: its records (from `said` on) say so, and an error."""
        left = (self.state.txn / "journal").exists()  # its undo failed too: recovery's
        how = ("was not undone yet: the next dance or 'disco rollback' undoes it first" if left
               else "nothing of it was applied")  # fmt: skip
        for record in self.outcome.changes[said:]:
            record["failed"] = f"not committed: {e.message}"
        self.sink.error(f"{module}: the commit of {label} failed, {how}: {e}")

    def diff(self, module: str, label: str, layer: Path, lowers: list[Path]) -> list[Change]:
        """The `diff` step: a layer's changes read and said."""
        with self.meter.measure(module, "diff", label):
            changes = self.changes.read(layer, lowers)
            self.changes.say(module, label, changes)
        if self.watch is not None:
            self.watch(module, label, changes)
        return changes

    def sandboxed(
        self,
        argv: tuple[str, ...],
        layer: Path,
        kind: str,
        intercept: bool,
        stdout: Path | None = None,
        discard: bool = False,
        meanwhile: Callable[[], None] | None = None,
    ) -> StepResult:
        """Run a template (TEMPLATES: always under NOOP rules) or a script (SCRIPTS);
        `meanwhile` is done while a template runs."""
        noop = self.options.noop or kind == TEMPLATES
        # The last step's changes are read and reported while this one runs, if its
        # output cannot come between them (a template's goes to a file); else first.
        overlap = stdout is not None
        if not overlap:
            self.layers.fold_pending()
            self.announce()
        lowers = self.layers.stacked() if self.options.noop else ()
        if self.asker is not None:  # what the step before may have left for this one
            self.asker.sweep()
        zygote = self.zygotes[kind]
        zygote.start(
            Step(
                argv,
                root=self.options.root,
                layer=layer,
                lower_layers=lowers,
                mode=zygote.mode,
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
        if meanwhile is not None and overlap:
            meanwhile()
        result = zygote.result()
        self.layers.fold_pending()
        return result


TEMPLATES, SCRIPTS = "templates", "scripts"  # the zygote each kind of step runs in
NO_USAGE = Usage(0.0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # the asker's is not the step's


def template_names(top: Path) -> list[str]:
    """A module's templates: the files and symlinks below its templates/, sorted; a
    symlink to a directory is one (bash refuses to run it) and is never walked into, so
    no directory outside the module is listed."""
    names = []
    for here, dirs, files in os.walk(top):
        for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(here, d)))]:
            path = os.path.join(here, name)
            if os.path.islink(path) or os.path.isfile(path):
                names.append(os.path.relpath(path, top))
    return sorted(names)


def failure(result: StepResult, options: Options, work: Path | None = None) -> str:
    if result.timed_out:
        return (
            f"ran longer than its limit of {options.timeout:g} s and was killed with its"
            " processes (raise --timeout or disco/client/timeout/step)"
        )
    why = f"exited with status {result.returncode}"
    if result.limit:
        return f"{why} after it ran into {result.limit}"
    if work is not None and _full(work):
        size = f"{SANDBOX}/tmpfs_mb = {options.limits.tmpfs_mb}"
        return f"{why}, with the sandbox's layers full (their tmpfs holds {size})"
    return why


def _full(path: Path) -> bool:
    """Whether the tmpfs at `path` has (next to) no room left."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize < 64 * 1024 or st.f_favail == 0


def record(module: str, step: str, item: str | None, result: StepResult) -> Record:
    return Record(module, step, item, result.wall, result.usage, result.returncode)
