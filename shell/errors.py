"""Error root of the shell. Every expected failure is a ShellError with a stable `code` and the
process exit status a script sees, so neither people nor scripts ever get a traceback.

Node-side failures (`node.errors`) are translated at one place, `shell.session`, so the rest of
the shell only knows these classes.
"""

from __future__ import annotations

# Same values as `quantian-node ctl`, so scripts can treat both alike.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_UNAUTHORISED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130


class ShellError(Exception):
    code = "shell_error"
    exit_status = EXIT_FAILURE


class UsageError(ShellError):
    """Bad arguments or an unknown shell command; the message includes the usage line."""

    code = "usage"
    exit_status = EXIT_USAGE


class Unreachable(ShellError):
    """The node could not be dialled, or did not answer in time."""

    code = "unreachable"
    exit_status = EXIT_UNREACHABLE


class Unauthorised(ShellError):
    """Our key has no operator certificate, or the node refused it."""

    code = "not_authorised"
    exit_status = EXIT_UNAUTHORISED


class NotServed(ShellError):
    """The node does not serve that command: that part of the pipeline is absent or not built yet."""

    code = "unknown_command"


class CommandFailed(ShellError):
    """The node ran the command and refused it (bad request, not found, unavailable ...)."""

    def __init__(self, remote_code: str, message: str) -> None:
        self.code = remote_code
        super().__init__(message)
