"""Shared fixtures: the real commands, run as a user would, on state in a temporary folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

Run = Callable[..., subprocess.CompletedProcess[str]]

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def disco_as_nobody(world: Path) -> list[str]:
    """argv that runs this checkout's `disco` as nobody. A checkout may sit under a
    directory only root enters (and its venv's python with it): the package is copied
    into `world` (a directory nobody can read, removed by the caller) and run by the
    system's python3, as an installed disco runs on the standard library alone."""
    package = Path(__file__).resolve().parent.parent / "src" / "disco"
    shutil.copytree(package, world / "py" / "disco", ignore=shutil.ignore_patterns("__pycache__"))
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    return [*AS_NOBODY, "env", f"PYTHONPATH={world / 'py'}", python, "-s", "-m", "disco"]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def cmd(state: Path) -> Run:
    """Run an installed disco command with DISCO_STATE pointing at the test's state dir."""

    def run(
        *argv: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "DISCO_STATE": str(state), "NO_COLOR": "1", **(env or {})}
        refuse_live_dance_on_this_machine(argv, full_env)
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=full_env,
            check=False,
        )

    return run


def refuse_live_dance_on_this_machine(argv: tuple[str, ...], env: dict[str, str]) -> None:
    """A live dance in a test targets a scratch root, never this machine's /."""
    if argv[0] != "disco" or "dance" not in argv or {"--help", "--version"} & set(argv):
        return
    noop = "--noop" in argv or bool(env.get("NOOP"))
    root = argv[argv.index("--root") + 1] if "--root" in argv else "/"
    if not noop and os.path.realpath(root) == "/":
        pytest.fail(f"a live dance on the real root: {argv}; use --noop or --root")


DEEP = ("/etc",)  # what the test modules could write to
SHALLOW = ("/", "/root", "/var", "/var/lib", "/usr/local")  # and any new name beside them


def fingerprint() -> str:
    """A hash of every name, type, mode, owner and content under DEEP, and of the entries
    of SHALLOW: proof that a NOOP dance on the real root left it as it was."""
    digest = hashlib.sha256()

    def add(path: str) -> None:
        st = os.lstat(path)
        digest.update(f"{path} {st.st_mode} {st.st_uid} {st.st_gid} {st.st_size}\n".encode())
        if os.path.isfile(path) and not os.path.islink(path) and os.access(path, os.R_OK):
            digest.update(Path(path).read_bytes())

    for top in SHALLOW:
        for name in sorted(os.listdir(top)):
            add(os.path.join(top, name))
    for top in DEEP:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                add(os.path.join(dirpath, name))
    return digest.hexdigest()


@pytest.fixture
def real_root_unchanged() -> Iterator[None]:
    """For tests that dance NOOP on the real root: it must be as it was."""
    before = fingerprint()
    yield
    assert fingerprint() == before, "a NOOP dance changed the real root"


def assert_one_error(result: subprocess.CompletedProcess[str], status: int, *names: str) -> None:
    """Exit `status`, and exactly one `error:` line on stderr naming every one of `names`."""
    lines = result.stderr.splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], lines[0]


def tree_snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under `root` with its mode and content, to prove nothing changed."""
    snapshot: dict[str, tuple[int, bytes]] = {}
    if not root.exists():
        return snapshot
    for path in sorted(root.rglob("*")):
        if path.name == "lock":
            continue
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        snapshot[str(path.relative_to(root))] = (st.st_mode, data)
    return snapshot


SERVICE_STUB = """#!/bin/sh
# A stand-in for service(8) on a scratch root: the seed's host had postgresql running.
echo "service $*: done"
"""


SKELETON = ("usr", "etc", "var/lib", "var/tmp", "root", "tmp", "home", "srv")


def scratch_skeleton(root: Path, extra: tuple[str, ...] = ()) -> Path:
    """The directories of a small machine (and `extra` ones), the host's user database,
    hosts and nsswitch.conf in its own /etc, and the merged-/usr links (/bin -> usr/bin)."""
    for d in (*SKELETON, *extra):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    for name in ("passwd", "group", "shadow", "hosts", "nsswitch.conf"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/", name)
        if host.is_symlink():
            (root / name).symlink_to(os.readlink(host))
    return root


@pytest.fixture
def scratch_root(tmp_path: Path) -> Iterator[Path]:
    """A small machine to dance on live: the host's /usr bound read-only, its own /etc,
    /var, /root and /tmp, and its own /usr/local/sbin with a `service` stub."""
    root = scratch_skeleton(tmp_path / "root")
    local = tmp_path / "usr-local"
    (local / "sbin").mkdir(parents=True)
    (local / "sbin" / "service").write_text(SERVICE_STUB)
    (local / "sbin" / "service").chmod(0o755)
    mounted: list[Path] = []
    try:
        for source, target in (("/usr", root / "usr"), (str(local), root / "usr/local")):
            subprocess.run(["mount", "--bind", source, str(target)], check=True)
            mounted.append(target)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield root
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)
