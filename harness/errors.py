"""Exceptions that the command line turns into one clear line (no traceback).

Raise :class:`HarnessError` (or a subclass) for anything a user can fix: bad input, missing files,
corrupt checkpoints. Anything else is a bug and keeps its traceback.
"""


class HarnessError(Exception):
    """A problem the user can act on; its message is shown as one line."""


class UnknownNameError(HarnessError, KeyError):
    """A name not found in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(HarnessError, ValueError):
    """An invalid setting (out of range, wrong type)."""


class DataError(HarnessError):
    """A dataset root without the expected files, or files in the wrong format."""


class CheckpointError(HarnessError):
    """A checkpoint that cannot be read (corrupt, truncated, wrong format)."""


class DivergenceError(HarnessError):
    """Training produced a non-finite loss."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its type's name when it has none), cut at ``limit``:
    what a one-line error quotes of the exception behind it."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
