"""Errors that a user can fix: the commands print them as one line and exit 2, no traceback.

Raise `UserError` (or a subclass) when the input is wrong: a config key, a file, a record, a
weights file for another model, an argument out of range. The message names the culprit and
says what was expected, e.g. ``UserError("train.lr must be > 0, got -0.05 (configs/x.yaml)")``.
Anything else that escapes a command is a bug of ours and keeps its traceback.

Both subclass the built-in they refine (ValueError, FileNotFoundError), so library callers that
catch those keep working.
"""


class UserError(ValueError):
    """Wrong input from the user; the message names the culprit and what was expected."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (or a glob matched nothing)."""
