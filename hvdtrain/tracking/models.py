"""Log the trained model to the job's run through an MLflow flavor (``mlflow.pytorch``,
``mlflow.keras``), with a signature and input example so it can be served and validated.

Model logging is one large upload, run by rank 0 on its own thread while the other ranks wait
with it (the adapters' ``log_model``, through ``core.on_main``); a failure (server down) is a
warning, never a crash.
"""

from __future__ import annotations

import tempfile
from types import ModuleType
from typing import Any

import mlflow
import numpy as np
from mlflow.models import Model, infer_signature
from mlflow.tracking import MlflowClient

from ..core.context import main_process_only
from .legs import log
from .tracker import Tracker


@main_process_only
def log_model(
    tracker: Tracker,
    flavor: ModuleType,
    model_arg: str,
    model: Any,
    input_example: np.ndarray,
    output: np.ndarray,
    name: str = "model",
    registered_model_name: str | None = None,
    save_first: bool = False,
) -> str | None:
    """``flavor``'s ``save_model(<model_arg>=model, ...)`` logged under
    ``name``; returns the model URI.

    ``Model.log`` is what ``mlflow.<flavor>.log_model`` calls; it is used directly because it takes
    the run id, so the run need not be MLflow's (process-global) active run. ``save_first`` saves
    into a directory made beforehand and logs it as the run's artifacts, for flavors whose
    ``save_model`` cannot create its own directory with an input example (``mlflow.keras``,
    mlflow/mlflow#16183); the model URI is then ``runs:/<run id>/<name>``.
    """
    run_id = tracker.sending_run_id
    if run_id is None:
        log.warning(
            "hvdtrain: model %r not logged: the MLflow run does not exist (server unreachable)",
            name,
        )
        return None
    signature = infer_signature(input_example, output)
    try:
        if not save_first:
            return Model.log(
                artifact_path=None,
                name=name,
                flavor=flavor,
                run_id=run_id,
                signature=signature,
                input_example=input_example,
                registered_model_name=registered_model_name,
                **{model_arg: model},
            ).model_uri
        with tempfile.TemporaryDirectory() as tmp:
            flavor.save_model(
                path=tmp, signature=signature, input_example=input_example, **{model_arg: model}
            )
            MlflowClient().log_artifacts(run_id, tmp, name)
        uri = f"runs:/{run_id}/{name}"
        if registered_model_name:
            mlflow.register_model(uri, registered_model_name)
        return uri
    except Exception as err:  # noqa: BLE001 - tracking failures never crash training
        log.warning("hvdtrain: model %r not logged to MLflow: %s", name, str(err)[:300])
        return None
