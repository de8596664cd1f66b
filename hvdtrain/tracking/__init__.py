"""MLflow tracking shared by the torch and Keras adapters: one run per job, never stalling training.

    # every rank, after init():
    tracker = tracking.start(config={...}, checkpoint_dir=ckpt, resume=True)
    tracker.log_params(tracking.training_params(ctx, options, base_lr=0.1, per_rank_batch_size=32))
    tracker.log_step(step, {"loss": loss}, lr=lr, samples=batch_size)   # every rank
    tracker.finish()

A job resumed from ``ckpt``'s checkpoints continues the run that wrote them (``legs``).
Framework-free: ranks talk only through the core ``Context`` the adapter's ``init`` made.
The names below are imported when first used, so ``tracked(enabled=False)`` and the CLI never
import MLflow.
"""

import importlib

_HOMES = {
    "Tracker": "tracker",
    "start": "tracker",
    "tracked": "tracker",
    "sync": "sync",
    "prepare_local_store": "store",
    "training_params": "params",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
