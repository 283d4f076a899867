"""The one exception type that the command line turns into a single ``error:`` line."""

from __future__ import annotations


class CimptError(Exception):
    """A user-facing error: bad config, bad file, bad data. The message is one line."""


class ConfigError(CimptError):
    """A config key is unknown, has the wrong type, or is inconsistent with another key."""


def first_line(exc: BaseException) -> str:
    """What went wrong, in one line, for a ``CimptError`` message: an OS error's reason
    ("No space left on device"), else the first line of the message, else the type's name."""
    text = getattr(exc, "strerror", None) or str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]
