"""What a dance is given (Options, a plan's Split, a Guard and a Watch on each step's
changes) and what it gives back (its Outcome, or Drifted when a saved plan no longer
holds)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from disco.engine.cgroups import Limits
from disco.engine.changes import Change
from disco.errors import DiscoError

EXIT_DRIFTED = 5  # `disco dance --plan`: the node is no longer what the plan was made on


class Drifted(DiscoError):
    """A step's changes differ from the plan's: it is not committed, nothing after runs."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, EXIT_DRIFTED)


# (module, step, its changes): a live step's changes before their commit; raises Drifted
# to refuse them. A Watch sees every step's changes, live or NOOP, once read.
Guard = Callable[[str, str, "list[Change]"], None]
Watch = Callable[[str, str, "list[Change]"], None]


@dataclass(frozen=True)
class Split:
    """Where a NOOP dance's modules are cut in two (a plan's shared prefix): the layer
    that the first `index` modules would write, as one folded directory at `below`
    (its upper/). A dance given it to `save` copies it there before module `index`
    runs; a dance given it to `resume` starts from it, at module `index`, with the
    modules of `failed` failed before it."""

    index: int
    below: Path
    failed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Options:
    noop: bool
    root: Path = Path("/")
    diff: str = "normal"
    etc: Path | None = None  # noop.d/ and sensitive.d/: ROOT/etc/disco unless given
    timeout: float | None = None  # seconds a template or script may run
    dance: str = ""  # the dance's id in `disco history`: its commits' undo logs go there
    effects: str | None = None  # live: "run" or "intercept"; None: run on /, else intercept
    limits: Limits = field(default_factory=Limits.defaults)  # of a sandboxed step
    state: Path | None = None  # the state to hide from steps, if not the dance's (a plan's)
    packages: str | None = None  # disco/client/noop/packages: "fetch" (§17) or "intercept"

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

    @property
    def package_mode(self) -> str:
        """How a NOOP step's package installs go: as the setting says, else as live's would
        (on the running system apt runs; on another root it is intercepted by default)."""
        return self.packages or ("fetch" if self.on_host else "intercept")


@dataclass
class Outcome:
    changes: list[dict[str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
