"""Data-parallel Keras 3 (TensorFlow backend) on Horovod's TensorFlow collectives.

    import hvdtrain.keras as hk
    hk.init(seed=0)
    model.compile(optimizer=hk.wrap_optimizer(keras.optimizers.Adam(1e-3)), loss=...)
    model.fit(hk.shard_dataset(dataset).batch(64), callbacks=hk.callbacks(), verbose=1)

Importing this package imports TensorFlow and Keras, never torch.
"""

from ..core.checkpoint import CheckpointError
from ._context import average_metrics, current, init
from .callbacks import broadcast_model, callbacks
from .checkpoint import CheckpointCallback, load_checkpoint, save_checkpoint
from .data import shard, shard_dataset
from .fit import fit
from .optimizer import wrap_optimizer

__all__ = [
    "CheckpointCallback",
    "CheckpointError",
    "average_metrics",
    "broadcast_model",
    "callbacks",
    "current",
    "fit",
    "init",
    "load_checkpoint",
    "save_checkpoint",
    "shard",
    "shard_dataset",
    "wrap_optimizer",
]
