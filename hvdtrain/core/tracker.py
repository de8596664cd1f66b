"""What training calls on a tracker: the contract between ``fit``, elastic training and
``hvdtrain.tracking.Tracker`` (the one implementation), typed here in the framework-free core so the
adapters depend on the contract, not on MLflow's side of it.

``log_step`` and ``log_epoch`` are collectives (every rank calls them at the same points and gets
the rank-averaged metrics back); the others are rank 0's to send, and a no-op elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .context import Context


class TrainingTracker(Protocol):
    ctx: Context

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_step(
        self,
        step: int,
        metrics: Mapping[str, float],
        *,
        lr: float | None = None,
        samples: int | None = None,
    ) -> dict[str, float]: ...

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, float]: ...

    def log_membership(self, step: int, size: int) -> None: ...
