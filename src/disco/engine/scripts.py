"""A module's script checked before it runs: a `#!` line naming an interpreter the target
lacks (or ending in a carriage return) is an error that names the module, the script and
the interpreter, not an exit status 127 from somewhere inside the sandbox; a `#!` line
that bash will ignore (the script is not executable) is a warning."""

from __future__ import annotations

import os
from pathlib import Path


def interpreter_problem(script: Path, root: Path, module: str) -> str | None:
    """Why `script` cannot start in `root`, or None. Only an executable script with a `#!`
    line runs as itself (dance.command); the interpreter is looked up in the target."""
    if not os.access(script, os.X_OK):
        return None
    first = _first_line(script)
    if not first.startswith(b"#!"):
        return None
    if first.rstrip(b"\n").endswith(b"\r"):
        return (
            f"{module}: script {script.name}: its #! line ends in a carriage return (CRLF, a"
            " Windows line end), so the kernel looks for an interpreter whose name ends in"
            " \\r; convert the script's line ends (dos2unix, or sed -i 's/\\r$//')"
        )
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


def ignored_interpreter(script: Path, module: str) -> str | None:
    """A warning when `script` has a `#!` line naming another interpreter than a shell but
    is not executable: it runs with bash (dance.command), which its #! does not say."""
    if os.access(script, os.X_OK):
        return None
    first = _first_line(script)
    words = [os.fsdecode(w) for w in first[2:].split()] if first.startswith(b"#!") else []
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
    if not words or os.path.basename(words[0]) in ("bash", "sh"):
        return None
    return (
        f"{module}: script {script.name} is not executable, so bash runs it, not its #!"
        f" interpreter {words[0]}; make it executable (chmod +x) on the server"
    )


def _first_line(script: Path) -> bytes:
    with script.open("rb") as f:
        return f.readline(4096)
