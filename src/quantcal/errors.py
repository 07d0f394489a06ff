"""The one exception type for mistakes a user can fix (bad input, unknown names, missing files).

The CLI prints these as a single line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class QuantcalError(Exception):
    """A user-facing error: the message says what was wrong and what was expected."""
