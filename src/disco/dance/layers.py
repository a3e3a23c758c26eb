"""The layers of a dance's steps: made, stacked, reported and folded (DESIGN §7, §12).

A NOOP step's layer is stacked over what the steps before it would have written
(`below`, all of them folded into one layer), and is read and reported while the next
step runs: until then it is pending, under a fixed name so that every step's sandbox
is planned alike. Live, a step's layer lies on the root alone and is committed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from disco.engine.sandbox import upper_of
from disco.engine.stack import copy_dir_meta, fold
from disco.errors import DiscoError
from disco.run import run

# Reads a layer over its lowers and reports its changes: (module, label, layer, lowers).
Reporter = Callable[[str, str, Path, "list[Path]"], object]


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
class Early:
    """A module's files/ staged into its delivery's layer while its first template runs
    (Dance.stage_files): the layer, or what went wrong, said once the templates have run."""

    layer: Path | None = None
    error: DiscoError | None = None
    done: bool = False


class Layers:
    def __init__(
        self,
        work: Path,
        root: Path,
        noop: bool,
        remove: Callable[[Path], None],
        report: Reporter,
        seed: Path | None = None,
    ) -> None:
        self.work = work
        self.root = root
        self.remove = remove  # the NOOP zygote removes a layer before its next step
        self.report = report
        self.count = 0
        # NOOP: what the steps so far would have written, folded into one layer, and the
        # last step's layer over it until it is reported (Pending).
        self.below: Path | None = None
        self.pending: Pending | None = None
        if noop:  # what the steps would have written, from the first on
            self.below = work / "layers" / "below"
            if seed is not None:  # what earlier modules would have written (dance.Split)
                self.below.mkdir(parents=True)
                run(["cp", "-a", "--", str(seed), str(upper_of(self.below))])
            else:
                upper_of(self.below).mkdir(parents=True)
                copy_dir_meta(root, upper_of(self.below))

    def new(self) -> Path:
        """A fresh layer directory: the zygote makes its work/, disco its upper/."""
        self.count += 1
        path = self.work / "layers" / str(self.count)
        path.mkdir(parents=True)
        return path

    def drop(self, layer: Path) -> None:
        """A layer done with: the NOOP zygote removes it before its next step."""
        self.remove(layer)

    def stacked(self) -> tuple[Path, ...]:
        pending = () if self.pending is None else (self.pending.shown,)
        return pending + (() if self.below is None else (self.below,))

    def lowers(self) -> list[Path]:
        """What a step's layer lies on: the NOOP steps so far (the pending one on top),
        then the target root."""
        return [upper_of(x) for x in self.stacked()] + [self.root]

    def stack(self, module: str, label: str, layer: Path) -> None:
        """A NOOP step's layer, pending (the step before is folded by now). Stacked under
        a name of its own, as the layer below is: the next step's sandbox is then planned
        as the one before it was (Zygote.plan). A symlink, not a rename: the zygote is
        removing the step's work dir meanwhile."""
        shown, new = self.work / "layers" / "pending", self.work / "layers" / ".pending"
        os.symlink(layer.name, new)
        os.replace(new, shown)
        self.pending = Pending(module, label, layer, shown)

    def report_pending(self) -> None:
        """Read and report the pending step's changes (the view below it stays as it was)."""
        p = self.pending
        if p is None or p.reported:
            return
        p.reported = True
        self.report(p.module, p.label, p.layer, self.lowers()[1:])

    def fold_pending(self) -> None:
        """Report the pending step if not yet done, then fold its layer under the steps
        to come (nothing may be mounted over the layers meanwhile)."""
        if self.pending is None:
            return
        self.report_pending()
        layer, self.pending = self.pending.layer, None
        assert self.below is not None  # NOOP
        fold(upper_of(layer), upper_of(self.below), self.root)
        self.drop(layer)
