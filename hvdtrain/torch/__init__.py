"""PyTorch front-end: make a single-process training script data-parallel on Horovod.

import hvdtrain.torch as ht
ctx = ht.init(seed=0)
loader = ht.distributed_loader(dataset, batch_size=32)
opt = ht.wrap_optimizer(torch.optim.AdamW(model.parameters(), 1e-3), model)
"""

from ..core.checkpoint import CheckpointError
from ._context import average_metrics, current, init
from .checkpoint import load_checkpoint, save_checkpoint
from .data import distributed_loader, set_epoch, to_device
from .fit import History, eval_loader, evaluate, fit
from .optimizer import broadcast_state, current_lr, wrap_optimizer

__all__ = [
    "init",
    "current",
    "average_metrics",
    "wrap_optimizer",
    "broadcast_state",
    "current_lr",
    "distributed_loader",
    "set_epoch",
    "to_device",
    "eval_loader",
    "evaluate",
    "fit",
    "History",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
]
