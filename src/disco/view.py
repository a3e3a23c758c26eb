"""What a step sees at /var/disco: the merged parameters, a shell disco-param, and in
NOOP the interceptors of commands with outside effects (DESIGN §7)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from disco.params import Tree, write_tree

# Commands whose effects reach outside the sandbox's filesystem: in NOOP they print
# "Would execute" and succeed. What a script does to files is not here: the overlay
# captures it and the report shows it (useradd, crontab, sed -i ...).
DEFAULT_NOOP = (
    # service and init control
    "service systemctl initctl invoke-rc.d rc-service openrc start-stop-daemon telinit"
    " chkconfig update-rc.d hostnamectl timedatectl localectl loginctl machinectl"
    # reboot and power
    " reboot shutdown halt poweroff kexec"
    # signalling processes
    " kill killall killall5 pkill skill"
    # package managers
    " apt apt-get aptitude dpkg yum dnf rpm zypper pacman apk snap flatpak pip pip3 gem npm"
    # kernel modules
    " modprobe insmod rmmod"
    # network clients
    " curl wget ssh scp sftp rsync nc ncat netcat socat telnet ftp"
).split()
BIN_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

INTERCEPTOR = """#!/bin/bash
# disco NOOP: this command would reach outside the dry run.
printf 'warning: Would execute : %s\\n' "${0##*/}${*:+ $*}" >&2
exit 0
"""


def load_noop_list(etc: Path = Path("/etc/disco")) -> tuple[str, ...]:
    """The default list plus one command name per line of etc/noop.d/*.list."""
    names = list(DEFAULT_NOOP)
    for listing in sorted((etc / "noop.d").glob("*.list")):
        for line in listing.read_text(errors="replace").splitlines():
            name = line.split("#", 1)[0].strip()
            if name and "/" not in name and name not in names:
                names.append(name)
    return tuple(names)


def bash_functions(names: tuple[str, ...]) -> str:
    """BASH_ENV for NOOP scripts: shell builtins (kill) are caught as functions too."""
    lines = [
        f"{name}() {{ printf 'warning: Would execute : %s\\n' \"{name}${{*:+ $*}}\" >&2; }}"
        for name in names
        if name.replace("-", "").replace("_", "").isalnum() and "." not in name
    ]
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
    def bash_env(self) -> Path:
        return self.path / "noop.bash"

    def out(self, module: str) -> Path:
        """Where a module's template outputs wait for delivery."""
        return self.path / "out" / module


def build_view(path: Path, noop_names: tuple[str, ...]) -> View:
    view = View(path)
    for directory in (view.parameters, view.bin, view.noop, path / "out", path / "modules"):
        directory.mkdir(parents=True, exist_ok=True)
    script = resources.files("disco").joinpath("data/disco-param").read_bytes()
    (view.bin / "disco-param").write_bytes(script)
    view.interceptor.write_text(INTERCEPTOR)
    for target in (view.bin / "disco-param", view.interceptor):
        target.chmod(0o755)
    for name in noop_names:
        (view.noop / name).symlink_to(".intercept")
    view.bash_env.write_text(bash_functions(noop_names))
    return view


def write_parameters(view: View, tree: Tree) -> None:
    """Replace the parameters the steps see."""
    if view.parameters.exists():
        shutil.rmtree(view.parameters)
    view.parameters.mkdir()
    write_tree(view.parameters, tree)


def intercepted_binaries(root: Path, names: tuple[str, ...]) -> list[str]:
    """Absolute paths in `root` of the commands to intercept, so `/usr/sbin/service`
    is caught like `service`. Symlinks are resolved inside root; each file once."""
    found: dict[str, None] = {}
    real_root = os.path.realpath(root)
    for directory in BIN_DIRS:
        for name in names:
            candidate = os.path.realpath(os.path.join(real_root, directory, name))
            if candidate.startswith(real_root.rstrip("/") + "/") and os.path.isfile(candidate):
                found["/" + os.path.relpath(candidate, real_root)] = None
    return list(found)


def build_shims(path: Path, view: View, binaries: list[str], root: Path) -> Path:
    """A directory laid out like `root` with the interceptor at each of `binaries`: shown
    as a lower layer over the root, it catches `/usr/sbin/service` with no mount per
    binary. Its directories carry the owner, mode and times of the root's, so that a
    step's copy-up of them reads as unchanged."""
    path.mkdir()
    copy_meta(root, path)
    data = view.interceptor.read_bytes()
    for binary in binaries:
        rel = binary.lstrip("/")
        parent = Path(rel).parent
        for part in reversed([parent, *parent.parents][:-1]):
            if not (path / part).is_dir():
                (path / part).mkdir()
                copy_meta(root / part, path / part)
        (path / rel).write_bytes(data)
        (path / rel).chmod(0o755)
        copy_meta(root / parent, path / parent)  # our write changed its times
    return path


def copy_meta(src: Path, dst: Path) -> None:
    st = src.stat()
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, st.st_mode & 0o7777)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
