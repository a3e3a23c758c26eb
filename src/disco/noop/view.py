"""What a step sees at /var/disco: the merged parameters, a shell disco-param, and where
effects are intercepted the interceptor, its compiled rules (rules.py), the real
binaries it runs and the door to the host's answers (asker.py) (DESIGN §7)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from disco.engine.stack import copy_dir_meta
from disco.errors import DiscoError
from disco.files import NOFOLLOW_DIR
from disco.noop.rules import Rule, compile_rules, intercepted
from disco.tree.params import Tree, write_tree

BIN_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

INSIDE = "/var/disco"  # where the view is shown; the interceptor knows it too
REAL = f"{INSIDE}/real"  # the real binaries' directories, read-only, under the interceptors


# bash's builtins (`compgen -b` of bash 5): only these escape PATH and the shims.
BASH_BUILTINS = frozenset(
    "alias bg bind break builtin caller cd command compgen complete compopt continue declare"
    " dirs disown echo enable eval exec exit export false fc fg getopts hash help history jobs"
    " kill let local logout mapfile popd printf pushd pwd read readarray readonly return set"
    " shift shopt source suspend test times trap true type typeset ulimit umask unalias unset"
    " wait".split()
)


def bash_functions(names: tuple[str, ...]) -> str:
    """BASH_ENV for intercepting bash scripts: the shell builtins among `names` (kill)
    are caught as functions that call the interceptor. Other commands are caught by
    PATH and, called by absolute path or under a PATH of the script's, by the shims; a
    function for each would cost every bash of every step its parsing."""
    builtins = [name for name in names if name in BASH_BUILTINS]
    lines = [f'{name}() {{ {INSIDE}/noop/{name} "$@"; }}' for name in builtins]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class View:
    """The directory shown read-only at /var/disco inside every step of a dance."""

    path: Path

    @property
    def parameters(self) -> Path:
        return self.path / "parameters"

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def noop(self) -> Path:
        return self.path / "noop"

    @property
    def interceptor(self) -> Path:
        return self.noop / ".intercept"

    @property
    def ask(self) -> Path:
        """The asker's FIFOs (asker.py), made only where the host is asked."""
        return self.path / "ask"

    @property
    def bash_env(self) -> Path:
        return self.path / "noop.bash"

    def out(self, module: str) -> Path:
        """Where a module's template outputs wait for delivery."""
        return self.path / "out" / module

    def output(self, module: str, templates: Path, rel: str) -> tuple[Path, int]:
        """An empty file for the output of `module`'s template `rel` (`templates`: its
        templates/), in out(module)/tree with the directories on its way made and given
        the modes of the template's own: the file's path, for the step's stdout, and a
        descriptor of it, to give it the template's mode once written.

        Made from the view's top one directory at a time and never through a symlink,
        whatever the view holds; what is at the file's name already is replaced.
        """
        names = ["out", module, "tree", *rel.split("/")]
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(names[:-1]):
                try:
                    try:
                        step = os.open(name, NOFOLLOW_DIR, dir_fd=fd)
                    except FileNotFoundError:
                        os.mkdir(name, 0o755, dir_fd=fd)
                        step = os.open(name, NOFOLLOW_DIR, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise DiscoError(
                        f"cannot write the output of template {rel}:"
                        f" {'/'.join(names[: i + 1])} in the view is not a directory",
                        "only disco writes its view: something else wrote it during the dance",
                    ) from e
                os.close(fd)
                fd = step
                if i >= 2:  # tree/ and below: as templates/ and below
                    mode = os.stat(templates.joinpath(*names[3 : i + 1])).st_mode
                    os.chmod(fd, stat.S_IMODE(mode))
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                out = os.open(names[-1], flags, 0o600, dir_fd=fd)
            except FileExistsError:  # whatever it is, it goes: never written through
                os.unlink(names[-1], dir_fd=fd)
                out = os.open(names[-1], flags, 0o600, dir_fd=fd)
        finally:
            os.close(fd)
        return self.path.joinpath(*names), out


def build_view(path: Path, rules: tuple[Rule, ...], root: Path, found: Found | None = None) -> View:
    """The view of a dance (or a shell session) over `root`, intercepting by `rules`;
    `found`: find(root, intercepted(rules)) if the caller has it already."""
    view = View(path)
    for directory in (view.parameters, view.bin, view.noop, path / "out", path / "modules"):
        directory.mkdir(parents=True, exist_ok=True)
    data = resources.files("disco.noop").joinpath("data")
    (view.bin / "disco-param").write_bytes(data.joinpath("disco-param").read_bytes())
    view.interceptor.write_bytes(data.joinpath("intercept").read_bytes())
    for target in (view.bin / "disco-param", view.interceptor):
        target.chmod(0o755)
    names = intercepted(rules)
    found = find(root, names) if found is None else found
    for _, inside in real_binds(root, binaries(found)):
        (path / os.path.relpath(inside, INSIDE)).mkdir(parents=True, exist_ok=True)
    real = {name: REAL + p for name, p in locate(found).items()}
    (view.noop / ".rules").write_text(compile_rules(rules, real))
    for name in names:
        (view.noop / name).symlink_to(".intercept")
    view.bash_env.write_text(bash_functions(names))
    return view


def write_parameters(view: View, tree: Tree) -> None:
    """Replace the parameters the steps see."""
    if view.parameters.exists():
        shutil.rmtree(view.parameters)
    view.parameters.mkdir()
    write_tree(view.parameters, tree)


# (command, its file as a path in the root) for each of BIN_DIRS in turn: a root's
# commands looked up once, for the view and for the binaries intercepted.
Found = list[tuple[str, str]]


def find(root: Path, names: tuple[str, ...]) -> Found:
    """Where each of `names` is in `root`'s BIN_DIRS. Symlinks are resolved inside root
    (pidof is killall5, reboot is systemctl)."""
    found = ((name, _in_root(root, d, name)) for d in BIN_DIRS for name in names)
    return [(name, path) for name, path in found if path is not None]


def locate(found: Found) -> dict[str, str]:
    """Each command's file, the first found in BIN_DIRS."""
    first: dict[str, str] = {}
    for name, path in found:
        first.setdefault(name, path)
    return first


def binaries(found: Found) -> list[str]:
    """The files of `found`, each once: intercepted at their absolute paths, so
    `/usr/sbin/service` is caught like `service`."""
    return list(dict.fromkeys(path for _, path in found))


def intercepted_binaries(root: Path, names: tuple[str, ...]) -> list[str]:
    """Absolute paths in `root` of the commands to intercept, each file once."""
    return binaries(find(root, names))


def _in_root(root: Path, directory: str, name: str) -> str | None:
    """DIRECTORY/NAME as a file of `root` (its symlinks resolved inside), or None."""
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, directory, name))
    if candidate.startswith(real_root.rstrip("/") + "/") and os.path.isfile(candidate):
        return "/" + os.path.relpath(candidate, real_root)
    return None


def build_shims(path: Path, view: View, binaries: list[str], root: Path) -> Path:
    """A directory laid out like `root` with the interceptor at each of `binaries`: shown
    as a lower layer over the root, it catches `/usr/sbin/service` with no mount per
    binary. Its directories carry the owner, mode and times of the root's, so that a
    step's copy-up of them reads as unchanged."""
    root = Path(os.path.realpath(root))  # its metadata, not a symlink's to it
    path.mkdir()
    copy_dir_meta(root, path)
    data = view.interceptor.read_bytes()
    for binary in binaries:
        rel = binary.lstrip("/")
        parent = Path(rel).parent
        for part in reversed([parent, *parent.parents][:-1]):
            if not (path / part).is_dir():
                (path / part).mkdir()
                copy_dir_meta(root / part, path / part)
        (path / rel).write_bytes(data)
        (path / rel).chmod(0o755)
        copy_dir_meta(root / parent, path / parent)  # our write changed its times
    return path


def real_binds(root: Path, binaries: list[str]) -> list[tuple[Path, str]]:
    """(source, target) binds showing the directories of the real binaries under REAL,
    from the root itself: the interceptor bound over a binary runs it from there."""
    real_root = os.path.realpath(root)
    dirs = sorted({os.path.dirname(p) for p in binaries})
    return [(Path(real_root, d.lstrip("/")), REAL + d) for d in dirs]
