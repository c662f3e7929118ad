"""How an error becomes the command line's exit status and its one line on stderr.

0 = ok, 1 = the check or operation failed, 2 = usage error (the command line asked for
something that cannot work), as git, kubectl and docker do; argparse's own errors exit 2.
"""

from __future__ import annotations

from shipyard.errors import ShipyardError, UsageError

USAGE = 2
FAILED = 1


def exit_code(exc: BaseException) -> int | None:
    """2 for a usage error, 1 for a failure; None for an unexpected exception (a bug).

    UsageError (and its subclasses) means the arguments cannot work; pydantic validation
    errors mean a value given was not acceptable; every other ShipyardError and OSErrors
    (permissions, disk full) are failures of the operation.
    """
    from pydantic import ValidationError

    if isinstance(exc, UsageError | ValidationError):
        return USAGE
    if isinstance(exc, ShipyardError | OSError):
        return FAILED
    return None


def error_line(exc: BaseException) -> str:
    """One line that says what went wrong and, where it can, what to do."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:3]
        )
        text = f"invalid {exc.title} ({details}); fix the value given (--debug: traceback)"
    elif isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        text = (
            f"{where}{reason}; check the path, its permissions and free disk space "
            "(--debug: traceback)"
        )
    else:
        text = str(exc)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
