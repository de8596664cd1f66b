"""PyTorch side of MLflow tracking: log the trained model with ``mlflow.pytorch`` (imported when
a model is logged)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..core.on_main import on_main

if TYPE_CHECKING:
    from ..tracking import Tracker


def log_model(
    tracker: Tracker,
    model: torch.nn.Module,
    input_example: torch.Tensor,
    name: str = "model",
    registered_model_name: str | None = None,
) -> str | None:
    """Collective: rank 0 logs ``model`` to the job's run, signature inferred from ``input_example``
    and the model's output on it, while the other ranks wait with it (``on_main``: a long upload
    is no hang). Returns the model URI on rank 0, or None (with a warning) if it could not be
    logged; None on the other ranks."""
    import mlflow.pytorch

    from ..tracking.models import log_model as log_flavor_model

    def log() -> str | None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            output = model(input_example)
        model.train(was_training)
        return log_flavor_model(
            tracker,
            mlflow.pytorch,
            "pytorch_model",
            model,
            input_example.cpu().numpy(),
            output.cpu().numpy(),
            name=name,
            registered_model_name=registered_model_name,
        )

    return on_main(tracker.ctx, log, "logging the model")
