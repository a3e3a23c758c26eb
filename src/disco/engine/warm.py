"""A NOOP step's sandbox kept for the next step alike (DESIGN §7, §12; docs/sandbox-notes.md).

A fresh overlay superblock per step pays its mounts, its teardown and, above all, cold
lookups: every path the command opens is looked up anew in each lower layer. Most steps
write nothing (a template's writes are discarded, and most write none; a converged
script writes none). So the zygote keeps the mount namespace it built for a step, with
the overlays' upper and work dirs in a directory of its own (`.warm-TAG` beside the
step's layer, on the same filesystem), and the next step with the same plan is forked
from it: its own locked copy of that namespace shares the overlays' superblocks, and so
their dentry and inode caches.

Kept only while nothing a step could see has changed:
- the writable parts are as the namespace was built: each upper dir disco prepared
  (owner, mode, mtime, ctime, links, entries, xattrs) and the /run tmpfs (the same,
  through a descriptor). Any write through an overlay creates an entry in one of those
  dirs (copy-up) or changes one of them, so a step that wrote anything is seen; its
  upper and work dirs are then handed over to the step's own layer, where disco reads
  them as it reads any step's, and the namespace is dropped;
- the lower layers are unchanged: `Lowers` (lowers.py) watches their filesystems;
- the plan is the same (the layers below, the binds, the root).
Every other mount of the namespace is read-only to a step and locked (its user
namespace does not own them), or shared between steps already (/proc, /sys, /dev).

Imported by the zygote: keep it free of imports beyond the few builtins.
"""

from __future__ import annotations

import os
import select

from disco.engine.leftovers import remove
from disco.engine.lowers import Lower, Lowers, close, overlay_lowers
from disco.engine.syscalls import CLONE_NEWNS, setns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def signature(fd: int) -> tuple[Any, ...]:
    """What a step could change of a directory we made (atime aside)."""
    st = os.fstat(fd)
    names = os.listdir(fd)
    names.sort()
    xattrs = [(n, os.getxattr(fd, n)) for n in os.listxattr(fd)]
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink,
            names, xattrs)  # fmt: skip


def dirs_of(top: str) -> list[int]:
    """Descriptors of `top` and the directories below it (a prepared upper: dirs alone)."""
    fds = [os.open(top, DIR)]
    with os.scandir(top) as entries:
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                fds += dirs_of(e.path)
    return fds


def copy_dirs(src: str, dst: str) -> None:
    """The directories of `src` (dirs alone) made at `dst`, with owner, mode and times."""
    st = os.lstat(src)
    os.mkdir(dst, 0o700)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(dst, st.st_mode & 0o7777)
    with os.scandir(src) as entries:
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                copy_dirs(e.path, os.path.join(dst, e.name))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


class Warm:
    """A step's mount namespace, kept. Built in the step's layer (`home`, where its
    upper/ and work/ are) as any step's; moved to `path`, a directory of ours, once a
    step left it as it was built."""

    def __init__(self, ops: list[Any], path: str, home: str, lowers: list[Lower] | None) -> None:
        self.ops = ops
        self.path = path
        self.home = home
        # Its overlays' lower dirs (lowers.py); None: not to be kept, only unmounted
        # once disco is answered.
        self.lowers = lowers
        self.uses = 0  # steps it served after the one it was built for
        self.cwd = ops[-1][2] if ops and ops[-1][0] == "pivot" else "/"
        # The upper dirs disco made, then /run once built.
        self.dirs = [] if lowers is None else dirs_of(os.path.join(home, "upper"))
        self.ns = -1
        self.marks: list[tuple[Any, ...]] = []

    def unshared(self) -> None:
        """We are in the namespace, before the ops (after them /proc is the steps')."""
        self.ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)

    def built(self) -> None:
        """The namespace is built and we are at its root: remember it as it is."""
        if self.lowers is None:
            return
        try:
            self.dirs.append(os.open("/run", DIR))
        except OSError:
            pass
        self.marks = [signature(fd) for fd in self.dirs]

    def enter(self) -> None:
        setns(self.ns, CLONE_NEWNS)
        os.chdir(self.cwd)
        self.uses += 1

    def clean(self) -> bool:
        """Whether the step left everything a step could write as it was built. Most
        that wrote are told by their times, links or mode alone."""
        try:
            for fd, mark in zip(self.dirs, self.marks):
                st = os.fstat(fd)
                if (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns,
                        st.st_nlink) != mark[:6]:  # fmt: skip
                    return False
            return [signature(fd) for fd in self.dirs] == self.marks
        except OSError:
            return False

    def keep(self, layer: str, discard: bool) -> None:
        """Built in `layer` for its step, which left it clean: move its upper and work
        dirs to our directory, and give the layer back the upper disco made (unless it
        is discarded)."""
        remove(self.path)  # what an earlier zygote may have left
        os.mkdir(self.path, 0o700)
        for d in ("upper", "work"):
            os.rename(os.path.join(layer, d), os.path.join(self.path, d))
        if not discard:
            copy_dirs(os.path.join(self.path, "upper"), os.path.join(layer, "upper"))
        self.home = self.path
        self.marks = [signature(fd) for fd in self.dirs]  # a move changes a ctime

    def close(self) -> None:
        """Drop the namespace: its overlays are unmounted once this returns (the last
        reference is ours: no process is in it)."""
        for fd in self.dirs:
            os.close(fd)
        self.dirs = []
        if self.lowers:
            close(self.lowers)
        if self.ns >= 0:
            os.close(self.ns)
            self.ns = -1

    def hand_over(self, layer: str) -> None:
        """A step wrote: what it wrote is its layer's (upper/, and work/ for the
        copied-up hard links), moved there while its overlays are mounted still but
        no process is left to use them. close() them before the next step (the layer
        may then be a lower layer, which its overlay's upper may not be at once)."""
        if self.home == layer:
            return
        remove(os.path.join(layer, "upper"))  # as disco made it: dirs alone
        remove(os.path.join(layer, "work"))
        for d in ("upper", "work"):
            os.rename(os.path.join(self.home, d), os.path.join(layer, d))
        os.rmdir(self.home)
        self.home = layer

    def discard(self) -> None:
        """Close, and remove what is left of it (not a layer of disco's)."""
        self.close()
        if self.home == self.path:
            remove(self.path)


class Keeper:
    """A zygote's kept namespace (at most one), the ones to unmount once disco is
    answered, and whether keeping pays: a namespace dropped before it served a second
    step is a miss, and after two misses in a row steps are built as before, not kept,
    for 16 steps, then 32, up to 256 (a NOOP dance changes its lower layers at every
    module: nothing is ever used twice; a converged live dance changes nothing)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.warm: Warm | None = None  # kept
        self.current: Warm | None = None  # the running step's
        self.spent: list[Warm] = []
        self.lowers: Lowers | None = None
        self.able = True  # fanotify works here
        self.steps = self.cold_until = self.misses = 0
        self.backoff = 16

    def enter(self, ops: list[Any], fresh: bool) -> bool:
        """Enter the kept namespace if it serves a step of `ops` in a new layer (True),
        else drop it. A layer with something in its upper already (a NOOP shell's) is
        never served by a kept namespace: its upper is not that layer's."""
        self.retire()
        warm = self.warm
        if warm is None:
            return False
        assert self.lowers is not None and warm.lowers is not None
        if not fresh or warm.ops != ops or self.lowers.changed(warm.lowers):
            self.drop()
            return False
        warm.enter()
        self.current = warm
        return True

    def build(self, ops: list[Any], layer: str, fresh: bool) -> Warm:
        """The record of a namespace about to be built for a step in `layer`, watched
        (and so kept if the step leaves it as built) if the layer is new and keeping
        pays."""
        self.retire()
        watched = None
        if fresh and self.keeping():
            if self.lowers is None:
                self.lowers = Lowers()
            watched = self.lowers.watch(overlay_lowers(ops))
            if watched is None:  # no fanotify here: never again
                self.able = False
                self.lowers.close()
            else:
                self.lowers.forget()  # older than what the overlays are about to look up
        place = os.path.join(os.path.dirname(layer), f".warm-{self.tag}")
        self.current = Warm(ops, place, layer, watched)
        return self.current

    def keeping(self) -> bool:
        self.steps += 1
        if self.misses >= 2:  # keeping does not pay here: not for a while
            self.misses = 0
            self.cold_until = self.steps + self.backoff
            self.backoff = min(2 * self.backoff, 256)
            if self.lowers is not None:  # no events for nobody meanwhile
                self.lowers.close()
                self.lowers = None
        return self.able and self.steps >= self.cold_until

    def settle(self, layer: str, discard: bool) -> None:
        """After the step in `layer`: keep its namespace if it left it as built, else
        what it wrote is the layer's; unmounted by tidy()."""
        warm, self.current = self.current, None
        if warm is None:
            return
        if warm.lowers is None:
            self.spent.append(warm)
        elif not warm.clean():
            if warm is self.warm:
                self.warm = None
            warm.hand_over(layer)
            self.spent.append(warm)
            self.missed(warm)
        elif warm.home == layer:
            try:
                warm.keep(layer, discard)
            except OSError:  # e.g. no room left for our dirs: not kept, the layer as it was
                for d in ("upper", "work"):
                    moved, there = os.path.join(warm.path, d), os.path.join(layer, d)
                    if os.path.isdir(moved) and not os.path.lexists(there):
                        os.rename(moved, there)
                warm.home = layer
                self.spent.append(warm)
                return
            self.warm = warm

    def retire(self) -> None:
        """A namespace of a step that never settled (its command was never started)."""
        if self.current is not None and self.current is not self.warm:
            self.current.close()
        self.current = None

    def drop(self) -> None:
        warm, self.warm = self.warm, None
        if warm is not None:
            warm.discard()
            self.missed(warm)

    def missed(self, warm: Warm) -> None:
        if warm.uses:
            self.misses, self.backoff = 0, 16
        else:
            self.misses += 1

    def tidy(self) -> None:
        """Once disco is answered, while it reads the step's changes: unmount what the
        last step used and will not be used again (no process of it is left)."""
        for warm in self.spent:
            warm.close()
        self.spent = []

    def idle(self, req: int) -> None:
        """Until `req` (disco's pipe) is readable: drop the kept namespace as soon as
        something below it changes, so that its unmounting is not on a step's way."""
        warm, lowers = self.warm, self.lowers
        if warm is None or lowers is None or warm.lowers is None:
            return
        poller = select.poll()
        poller.register(req, select.POLLIN)
        poller.register(lowers.fd, select.POLLIN)
        while req not in dict(poller.poll()):
            if lowers.changed(warm.lowers):
                self.drop()
                return

    def close(self) -> None:
        self.retire()
        self.tidy()
        self.drop()
        if self.lowers is not None:
            self.lowers.close()
