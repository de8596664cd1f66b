"""MLflow tracking shared by the torch and Keras adapters: one run per job, never stalling training.

    tracker = tracking.start(config={...}, checkpoint_dir=ckpt, resume=True)  # every rank, after init()
    tracker.log_params(tracking.training_params(ctx, options, base_lr=0.1, per_rank_batch_size=32))
    tracker.log_step(step, {"loss": loss}, lr=lr, samples=batch_size)   # every rank
    tracker.finish()

A job resumed from ``ckpt``'s checkpoints continues the run that wrote them (``legs``).
Framework-free: ranks talk only through the core ``Context`` the adapter's ``init`` made.
"""
from .params import training_params
from .spill import sync
from .store import prepare_local_store
from .tracker import Tracker, start, tracked

__all__ = ["Tracker", "prepare_local_store", "start", "sync", "tracked", "training_params"]
