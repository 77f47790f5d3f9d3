"""The one exception type for user mistakes.

The CLI prints an AnnotError as a single line and exits non-zero, without a traceback; anything
else escaping is a bug in annot and keeps its traceback.
"""


class AnnotError(Exception):
    """A problem with the user's input: the message names the file, the field and the fix."""


def where(path, field: str | None = None, line: int | None = None) -> str:
    """Format the 'file[:line]: field:' prefix used by every error message."""
    out = str(path)
    if line is not None:
        out += f":{line}"
    if field:
        out += f": {field}"
    return out
