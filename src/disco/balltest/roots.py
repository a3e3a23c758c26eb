"""Scratch roots for ball tests (DESIGN §14, §16): a fresh overlay per scenario over this
machine's root, over a directory, or over an unpacked image, with daemons held back."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from disco.engine.syscalls import CLONE_NEWNS, unshare
from disco.errors import CommandError, DiscoError, UsageError
from disco.run import run

FROZEN = ("etc", "home", "srv")  # this machine's trees copied for its clones: small, and busy
POLICY_RC_D = "#!/bin/sh\n# disco test: daemons are held back, as in a chroot.\nexit 101\n"


@dataclass(frozen=True)
class Source:
    """What the scratch roots are made of: `host` (this machine's /), `dir` or `image`."""

    kind: str
    path: Path

    def describe(self) -> str:
        if self.kind == "host":
            return "an overlay clone of this machine's root"
        what = "directory" if self.kind == "dir" else "image"
        return f"an overlay over the {what} {self.path}"


@dataclass(frozen=True)
class Scratch:
    """One scenario's scratch root: `root` is the overlay of `upper` over `lower`; `home`
    holds its server and client state, beside the root, never in it."""

    home: Path
    root: Path
    upper: Path
    lower: Path


def source(root: str | None, image: str | None) -> Source:
    if root is not None:
        path = Path(root).absolute()
        if not path.is_dir():
            raise UsageError(f"--root {root} is not a directory", "give the root to test over")
        if path == Path("/"):
            return Source("host", path)
        return Source("dir", path)
    if image is not None:
        path = Path(image).absolute()
        if not path.is_file():
            raise UsageError(
                f"--image {image} is not a file",
                "give a tarball of a root: what 'docker export' or 'mmdebstrap' writes",
            )
        return Source("image", path)
    return Source("host", Path("/"))


class Roots:
    """Makes scratch roots under one tmpfs. Without `keep`, in a mount namespace of our own,
    so that every mount goes with this process whatever happens; with `keep`, in this
    machine's namespace, left for a post-mortem."""

    def __init__(self, source: Source, keep: bool) -> None:
        self.source = source
        self.keep = keep
        self.stack = ExitStack()
        self.base = Path()
        self.lower = Path()  # what a fresh root shows, to read
        self.layers = ""  # its lower layers, as overlayfs takes them
        self.count = 0

    def __enter__(self) -> Roots:
        if not self.keep:
            unshare(CLONE_NEWNS)
            mount("--make-rprivate", "/")
        self.base = Path(tempfile.mkdtemp(prefix="disco-test-"))
        if not self.keep:
            self.stack.callback(shutil.rmtree, self.base, ignore_errors=True)
        try:
            mount("-t", "tmpfs", "-o", "mode=0700", "disco-test", str(self.base))
            self.unmount_later(self.base)
            self.lower = self.prepare_lower()
        except BaseException:  # __exit__ is not called for a failed __enter__
            self.stack.close()
            if self.keep:  # nothing kept of a run that did not start
                run(["umount", "-R", "--lazy", str(self.base)], check=False)
                shutil.rmtree(self.base, ignore_errors=True)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stack.close()

    def unmount_later(self, path: Path) -> None:
        if not self.keep:
            self.stack.callback(run, ["umount", "--lazy", str(path)], check=False)

    def prepare_lower(self) -> Path:
        if self.source.kind == "dir":
            self.layers = str(self.source.path)
            return self.source.path
        lower = self.base / "lower"
        lower.mkdir()
        if self.source.kind == "host":
            return self.clone_host(lower)
        try:
            tar = ["tar", "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*"]
            run([*tar, "-f", str(self.source.path), "-C", str(lower)])
        except CommandError as e:
            raise DiscoError(
                f"--image {self.source.path}: cannot unpack it: {first_line(e.stderr)}",
                "give a tarball of a root: what 'docker export' or 'mmdebstrap' writes",
            ) from None
        if not (lower / "etc").is_dir() or not (lower / "usr").is_dir():
            raise DiscoError(
                f"--image {self.source.path} holds no root (no etc/ and usr/ at its top)",
                "give a tarball of a whole root: 'docker export', or 'mmdebstrap SUITE FILE.tar'",
            )
        self.layers = str(lower)
        return lower

    def clone_host(self, view: Path) -> Path:
        """This machine's root filesystem (not /proc, /sys, /tmp's mounts: what overlayfs
        sees of lowerdir=/ anyway) under a copy of the trees that change while it runs:
        other programs add users to /etc while the scenarios dance, and a lower layer that
        changes under an overlay is undefined. `view` shows the two merged, read-only, to
        compare a rollback against."""
        host, frozen = self.base / "host", self.base / "frozen"
        host.mkdir()
        mount("--bind", "/", str(host))
        self.unmount_later(host)
        mount("-o", "remount,bind,ro", str(host))
        frozen.mkdir()
        for name in FROZEN:
            if (host / name).is_dir():
                run(["cp", "-a", "--", str(host / name), str(frozen / name)])
                os.setxattr(frozen / name, "trusted.overlay.opaque", b"y")
        # The layers' top directory is the root directory of every clone: /'s own.
        st = os.stat(host)
        os.chown(frozen, st.st_uid, st.st_gid)
        os.chmod(frozen, st.st_mode & 0o7777)
        os.utime(frozen, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.layers = f"{frozen}:{host}"
        mount("-t", "overlay", "-o", f"ro,lowerdir={self.layers}", "disco-test", str(view))
        self.unmount_later(view)
        return view

    def fresh(self) -> Scratch:
        """A new scratch root, the same as every other made by this run."""
        self.count += 1
        home = self.base / str(self.count)
        upper, work, root = home / "up", home / "wk", home / "root"
        for d in (upper, work, root):
            d.mkdir(parents=True)
        options = f"lowerdir={self.layers},upperdir={upper},workdir={work},index=on"
        mount("-t", "overlay", "-o", options, "disco-test", str(root))
        self.unmount_later(root)
        hold_back_daemons(root)
        return Scratch(home, root, upper, self.lower)


def hold_back_daemons(root: Path) -> None:
    sbin = root / "usr" / "sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    policy = sbin / "policy-rc.d"
    if not policy.exists():
        policy.write_text(POLICY_RC_D)
        os.chmod(policy, 0o755)


def mount(*args: str) -> None:
    try:
        run(["mount", *args])
    except CommandError as e:
        raise DiscoError(
            f"cannot make a scratch root: mount {' '.join(args)}: {e.stderr.strip()}",
            "disco test needs root and overlayfs (DESIGN §14)",
        ) from None


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else "no message"
