"""The one exception type for mistakes a user can fix (bad input, unknown names, missing files).

The CLI prints these as a single line and exits non-zero; anything else is a bug and keeps its traceback.
Messages name a parameter in backquotes, as the Python API and study files spell it (`` `max_length` ``);
the CLI shows the matching flag (``--max-length``) instead, through :func:`quantcal.cli.common.as_flags`.
"""


class QuantcalError(Exception):
    """A user-facing error: the message says what was wrong and what was expected."""
