"""The three stages' losses as objectives for the one training engine (METHOD.md §3–§5)."""

from __future__ import annotations

from epg.objectives.base import Objective
from epg.objectives.consistency import ConsistencyObjective
from epg.objectives.diffusion import DiffusionObjective
from epg.objectives.pretrain import PretrainObjective

__all__ = ["ConsistencyObjective", "DiffusionObjective", "Objective", "PretrainObjective"]
