"""The one exception type for user-facing evaluation problems (METHOD.md §7)."""

from __future__ import annotations


class MetricsError(ValueError):
    """An evaluation problem the user can fix (missing network, bad samples or reference); says how."""


class MetricsWarning(UserWarning):
    """Inputs that give a number but not a meaningful one (e.g. samples and reference of other sizes)."""
