"""PyTorch side of MLflow tracking: log the trained model with ``mlflow.pytorch``."""
from __future__ import annotations

import mlflow.pytorch
import torch

from ..core.context import main_process_only
from ..tracking import Tracker
from ..tracking.models import log_model as _log_flavor_model


@main_process_only
def log_model(tracker: Tracker, model: torch.nn.Module, input_example: torch.Tensor, name: str = "model",
              registered_model_name: str | None = None) -> str | None:
    """Log ``model`` to the job's run (rank 0), signature inferred from ``input_example`` and the
    model's output on it. Returns the model URI, or None (with a warning) if it could not be logged."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model(input_example)
    model.train(was_training)
    return _log_flavor_model(tracker, mlflow.pytorch, "pytorch_model", model, input_example.cpu().numpy(),
                             output.cpu().numpy(), name=name, registered_model_name=registered_model_name)
