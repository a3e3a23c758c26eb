"""The one exception type for errors a user can act on."""

from __future__ import annotations

from collections.abc import Sequence

# Exit statuses shared by every command (DESIGN §10).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3


class DiscoError(Exception):
    """An error caused by input or environment, printed as one `error:` line.

    `message` names the thing that is wrong, `hint` says what to do about it.
    """

    def __init__(self, message: str, hint: str = "", status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(DiscoError):
    """Bad arguments on the command line."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, EXIT_USAGE)


class CommandError(DiscoError):
    """A program run by disco exited non-zero or could not be started."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        super().__init__(f"{argv[0]} exited with status {returncode}: {last}")
