"""The exception types for problems the user can act on.

The CLI prints an AnnotError as a single line, without a traceback, and exits with its exit_code:
2 for bad input (a wrong file, field or option: nothing was started), 1 for a failure during the
work (training diverged, the run is taken by another process, a judge that stopped answering).
Anything else escaping is a bug in annot and keeps its traceback.
"""


class AnnotError(Exception):
    """A problem with the user's input: the message names the file, the field and the fix."""

    exit_code = 2


class RunFailed(AnnotError):
    """The work started and failed (e.g. a NaN loss): the run is marked failed, never complete."""

    exit_code = 1


class RunTaken(AnnotError):
    """Another annot process holds the run directory's lock (see annot.lock)."""

    exit_code = 1


def where(path, field: str | None = None, line: int | None = None) -> str:
    """Format the 'file[:line]: field:' prefix used by every error message."""
    out = str(path)
    if line is not None:
        out += f":{line}"
    if field:
        out += f": {field}"
    return out
