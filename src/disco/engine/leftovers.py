"""What a step leaves behind, dealt with by the zygote (DESIGN §7, §8): its work dir and
the layers disco is done with (removed), the files its overlays copied up from a
hard-linked one (found, for links.py), and, live, the processes of a step when disco
dies (killed by a watchdog).

Imported by the zygote: keep it free of imports beyond the few builtins.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C half: no enum (see zygote.py)
import os
import time


def watchdog(procs: str) -> None:
    """Start a watchdog that outlives us: once we are gone (killed with disco, or at the
    end), it kills whatever is left in the steps' cgroup (`procs`, which we join next),
    so a live step never outlives its dance. Not our child (a double fork, before we
    become a subreaper): our reaping never meets it. We hold its pipe; it nothing else."""
    read, write = os.pipe2(os.O_CLOEXEC)
    middle = os.fork()
    if middle:
        os.close(read)
        os.waitpid(middle, 0)
        return
    try:
        os.close(write)
        if os.fork():
            return
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        for n in range(3):
            os.dup2(null, n)
        os.closerange(3, read)  # disco's pipes to us above all: they must end with us
        os.closerange(read + 1, 1 << 20)
        os.read(read, 1)  # end of file: the zygote is gone
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(procs) as f:
                pids = [int(p) for p in f.read().split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
    finally:
        os._exit(0)


def copied_links(work: str) -> list[tuple[int, int]]:
    """(dev, inode) of the files the step's overlays copied up from a hard-linked lower
    file: with index=on overlayfs links each to an entry of its work dir's index/
    (links.py gives the layer their other names)."""
    found = []
    for d in os.listdir(work):
        if not d.isdigit():  # a mount point, not an overlay's work dir
            continue
        try:
            entries = os.scandir(os.path.join(work, d, "index"))
        except OSError:
            continue
        with entries:
            for e in entries:
                st = e.stat(follow_symlinks=False)
                if e.is_file(follow_symlinks=False):
                    found.append((st.st_dev, st.st_ino))
    return found


def remove(path: str) -> None:
    """Remove a tree of a layer (no mount is ever under one in our namespace)."""
    try:
        entries = os.scandir(path)
    except NotADirectoryError:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    with entries:
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                remove(e.path)
            else:
                os.unlink(e.path)
    os.rmdir(path)


def remove_all(paths: list[str]) -> None:
    """remove() each of `paths` that is given; what cannot be removed is left."""
    for path in filter(None, paths):
        try:
            remove(path)
        except OSError:
            pass
