"""The one exception type that the command line turns into a single ``error:`` line."""

from __future__ import annotations


class CimptError(Exception):
    """A user-facing error: bad config, bad file, bad data. The message is one line."""


class ConfigError(CimptError):
    """A config key is unknown, has the wrong type, or is inconsistent with another key."""
