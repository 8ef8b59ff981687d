"""EPG: pixel-space generative modelling via self-supervised pre-training.

`epg.load(path)` returns a Pipeline (`.sample`, `.encode`); see `epg.api`. Imported lazily, so that the
command line's `--help` does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Pipeline", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from epg import api

        return getattr(api, name)
    raise AttributeError(f"module 'epg' has no attribute {name!r}")
