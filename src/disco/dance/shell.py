"""The NOOP sandbox session of disco-fs-* and disco-sh-* (DESIGN §7): the seed's dry-run
shell, kept between commands. One overlay layer over a target root, that every
disco-sh-shell and disco-sh-exec writes into under NOOP rules and disco-fs-diff reports
as a dance reports a step. It lives on a tmpfs mounted in the host's mount namespace, so
it outlasts the command that made it (not a reboot):

    STATE/shell/             the tmpfs (mode 0700), mounted by disco-fs-mount
        session.json         {"root": "/", "node": "web1.example.com"}
        layer/upper/         what the session wrote, laid out like the root
        view/                what the sandbox shows at /var/disco (disco-fs-init)
    STATE/shell.lock         held by the command using the session: one at a time

Each command mounts the layer anew in a sandbox of its own (run_step): between commands
only the tmpfs is mounted. disco-fs-diff only reads the layer: it may run beside a shell.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from disco.client.lock import hold
from disco.client.state import State, load_limits
from disco.dance.environment import (
    VIEW_AT,
    command,
    hidden_state,
    noop_binds,
    parameters,
    step_env,
)
from disco.engine.change_text import content_diff, header
from disco.engine.changes import DEFAULT_EXCLUDE, load_sensitive, read_changes
from disco.engine.mounts import mount_tmpfs
from disco.engine.runner import run_step
from disco.engine.sandbox import Bind, Mode, Step, upper_of
from disco.errors import EXIT_LOCKED, DiscoError
from disco.noop.asker import asking
from disco.noop.rules import load_rules
from disco.noop.view import View, build_view, intercepted_binaries, write_parameters
from disco.run import run
from disco.tree.modules import Module, load_module
from disco.tree.names import is_name
from disco.tree.order import order

# The interactive shell's startup file: the root's own, then NOOP's functions for the
# builtins (BASH_ENV is read by non-interactive shells only), and a prompt that says so.
BASHRC = f"""\
# disco-sh-shell: an interactive bash in the NOOP sandbox
[ -f ~/.bashrc ] && . ~/.bashrc
. {VIEW_AT}/noop.bash
PS1="(disco NOOP) ${{PS1-\\u@\\h:\\w\\$ }}"
"""


@dataclass(frozen=True)
class Session:
    state: State
    root: Path  # the target root, a real path
    node: str

    @property
    def path(self) -> Path:
        return where(self.state)

    @property
    def layer(self) -> Path:
        return self.path / "layer"

    @property
    def view(self) -> View:
        return View(self.path / "view")

    @property
    def hidden(self) -> tuple[str, ...]:
        return hidden_state(self.state.root, self.root)


def where(state: State) -> Path:
    return state.root / "shell"


# ---- the session's life ----


def mount(state: State, root: Path, node: str) -> tuple[Session, list[str]]:
    """Mount a new session's tmpfs and build its view; see init() for the list returned."""
    state.create()
    with _one_at_a_time(state):
        path = where(state)
        if os.path.ismount(path):
            raise DiscoError(
                f"a NOOP session is already mounted at {path}",
                "go on using it, or discard it first with 'disco-fs-unmount'",
            )
        path.mkdir(mode=0o700, exist_ok=True)
        try:
            mount_tmpfs(path, load_limits(state.params()).tmpfs_mb)
        except OSError as e:
            raise DiscoError(f"cannot mount a tmpfs at {path}: {e.strerror}", "run as root") from e
        session = Session(state, Path(os.path.realpath(root)), node)
        try:
            upper_of(session.layer).mkdir(parents=True)
            return init(session, node)
        except BaseException:
            _unmount(path)
            raise


@contextmanager
def opened(state: State) -> Iterator[Session]:
    """The mounted session, for this command alone until the block ends."""
    _mounted(state)  # no session: say so before making a lock file
    with _one_at_a_time(state):
        yield load(state)


def load(state: State) -> Session:
    path = _mounted(state)
    try:
        data = json.loads((path / "session.json").read_text())
        return Session(state, Path(data["root"]), str(data["node"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DiscoError(
            f"the NOOP session at {path} is damaged ({e})", "discard it with 'disco-fs-unmount'"
        ) from None


def init(session: Session, node: str | None = None) -> tuple[Session, list[str]]:
    """(Re)build what the sandbox shows at /var/disco: the parameters of the session's
    node (from now on `node`, if given) over the defaults of the fetched modules, in
    dance order, as a dance shows them. Returns the session and those modules' names."""
    if node is not None:
        session = replace(session, node=node)
        data = {"root": str(session.root), "node": session.node}
        (session.path / "session.json").write_text(json.dumps(data) + "\n")
    modules = fetched_modules(session.state)
    if session.view.path.exists():
        shutil.rmtree(session.view.path)
    view = build_view(session.view.path, load_rules(_config(session)), session.root)
    write_parameters(view, parameters(session.state, session.node, modules))
    (view.path / "exec").mkdir()  # where disco-sh-exec shows its script
    (view.path / "shell.bashrc").write_text(BASHRC)
    if os.path.realpath(session.root) == "/":  # the interceptor asks the host (asker.py)
        (view.path / "on-host").touch()
    return session, [module.name for module in modules]


def unmount(state: State) -> Path:
    """Discard the session (a damaged one too): unmount its tmpfs, remove the directory."""
    path = _mounted(state)
    with _one_at_a_time(state):
        _unmount(path)
    return path


# ---- running in the sandbox ----


def shell_argv(interactive: bool) -> tuple[str, ...]:
    """bash -i on a terminal; else a bash that reads its commands from stdin."""
    if interactive:
        return ("bash", "--rcfile", f"{VIEW_AT}/shell.bashrc", "-i")
    return ("bash",)


def run_script(session: Session, script: Path, args: Sequence[str], stdin: int = 0) -> int:
    """Run a script of the host in the sandbox, shown read-only at /var/disco/exec/NAME."""
    if not script.is_file():
        raise DiscoError(f"cannot run {script}: not a file", "give the path of a script")
    inside = f"{VIEW_AT}/exec/{script.name}"
    mount_point = _view(session).path / "exec" / script.name
    mount_point.touch()
    try:
        argv = (*command(script, inside), *args)
        return run_in(session, argv, stdin, (Bind(script.resolve(), inside),))
    finally:
        mount_point.unlink()


def run_in(
    session: Session, argv: Sequence[str], stdin: int | None = 0, binds: Sequence[Bind] = ()
) -> int:
    """Run `argv` in the session's sandbox, writing into its layer; the exit status
    (128+N when killed by signal N). Output goes to ours; stdin is `stdin` (None: none)."""
    view = _view(session)
    names = tuple(sorted(n for n in os.listdir(view.noop) if not n.startswith(".")))
    shown = [Bind(view.path, VIEW_AT)]
    if session.state.modules.is_dir():
        shown.append(Bind(session.state.modules, f"{VIEW_AT}/modules"))
    shown += binds
    shown += noop_binds(view, intercepted_binaries(session.root, names), session.root)
    env = step_env(session.node, noop=True, intercept=True)
    step = Step(
        tuple(argv),
        root=session.root,
        layer=session.layer,
        mode=Mode.NOOP,
        env=env,
        hostname=session.node,
        hide=session.hidden,
        binds=tuple(shown),
        stdin=stdin,
    )
    with asking(view.ask) if os.path.realpath(session.root) == "/" else nullcontext():
        status = run_step(step, load_limits(session.state.params())).returncode
    return 128 - status if status < 0 else status


# ---- what it changed ----


def report(session: Session, style: str = "normal") -> list[tuple[str, str]]:
    """What the session's layer changes in its root, as a dance reports a step: each
    change's header line and its content diff ("" if none)."""
    exclude = (*DEFAULT_EXCLUDE, *session.hidden)
    changes = read_changes(
        upper_of(session.layer),
        [session.root],
        exclude=exclude,
        sensitive=load_sensitive(_config(session)),
    )
    return [(header(change), content_diff(change, style)) for change in changes]


# ---- what the view shows ----


def fetched_modules(state: State) -> list[Module]:
    """The modules in the state (those of the last dance), in dance order."""
    found: dict[str, Module] = {}
    if state.modules.is_dir():
        for name in sorted(os.listdir(state.modules)):
            if is_name(name) and (state.modules / name).is_dir():
                found[name] = load_module(state.modules / name, name)
    try:
        names = order(found)
    except DiscoError as e:
        raise DiscoError(
            f"cannot order the modules in {state.modules}: {e.message}",
            "fetch them again with 'disco dance'",
        ) from None
    return [found[name] for name in names]


def _config(session: Session) -> Path:
    """noop.d/ and sensitive.d/, as for a dance: those of the system being configured."""
    return session.root / "etc/disco"


def _view(session: Session) -> View:
    if not session.view.noop.is_dir():  # an init that failed half-way
        raise DiscoError(f"the NOOP session at {session.path} has no view", "run disco-fs-init")
    return session.view


def _mounted(state: State) -> Path:
    path = where(state)
    if not os.path.ismount(path):
        raise DiscoError(f"no NOOP session is mounted at {path}", "run 'disco-fs-mount' first")
    return path


@contextmanager
def _one_at_a_time(state: State) -> Iterator[None]:
    """Two commands must never mount the same layer at once: overlayfs leaves that
    undefined, and each step empties the layer's work dir."""
    with ExitStack() as stack:
        try:
            stack.enter_context(hold(state.root / "shell.lock"))
        except DiscoError as e:
            if e.status != EXIT_LOCKED:
                raise
            raise DiscoError(
                f"the NOOP session at {where(state)} is in use by another disco command",
                "wait for it to end (exit its shell), then try again",
                EXIT_LOCKED,
            ) from None
        yield


def _unmount(path: Path) -> None:
    run(["umount", str(path)])
    path.rmdir()
