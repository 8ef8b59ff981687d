"""The one exception type for user-facing data problems."""

from __future__ import annotations


class DataError(ValueError):
    """A data problem the user can fix (wrong path, missing files, bad format); the message says how."""
