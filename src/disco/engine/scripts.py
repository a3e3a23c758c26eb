"""A module's script checked before it runs: a `#!` line naming an interpreter the target
lacks is an error that names the module, the script and the interpreter, not an exit
status 127 from somewhere inside the sandbox."""

from __future__ import annotations

import os
from pathlib import Path


def interpreter_problem(script: Path, root: Path, module: str) -> str | None:
    """Why `script` cannot start in `root`, or None. Only an executable script with a `#!`
    line runs as itself (dance.command); the interpreter is looked up in the target."""
    if not os.access(script, os.X_OK):
        return None
    with script.open("rb") as f:
        first = f.readline(4096)
    if not first.startswith(b"#!"):
        return None
    words = first[2:].split()
    if not words:
        return f"{module}: script {script.name} has an empty #! line; name an interpreter"
    interpreter = os.fsdecode(words[0])
    if not interpreter.startswith("/"):
        return (
            f"{module}: script {script.name}: #! names '{interpreter}', not an absolute path;"
            " write e.g. #!/bin/bash or #!/usr/bin/env python3"
        )
    inside = root / interpreter.lstrip("/")
    if not os.path.exists(inside):  # the target's own symlinks (/bin -> usr/bin) resolve
        where = "" if str(root) == "/" else f" in {root}"
        return (
            f"{module}: script {script.name}: its interpreter {interpreter} does not exist{where};"
            " install it, or fix the #! line"
        )
    return None
