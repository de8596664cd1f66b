"""Learning-rate rules for data parallelism, shared by both adapters.

With N workers the global batch is N times larger, so the LR is scaled up (Goyal et al., 2017:
linear; Krizhevsky, 2014: sqrt). A large scaled LR is unstable in the first steps, so warmup
ramps it linearly from the single-worker (base) LR to the scaled LR.
"""

from __future__ import annotations

import math

from .options import DistributedOptions, LRScaling, ReduceOp


def lr_scale_factor(options: DistributedOptions, size: int, local_size: int, on_gpu: bool) -> float:
    """Factor applied to the user's base LR for a job of ``size`` workers."""
    if options.op is ReduceOp.ADASUM:
        # Adasum adapts the effective step itself; Horovod scales by local size only where
        # it combines with NCCL's local averaging (on GPU).
        return float(local_size) if on_gpu else 1.0
    if options.lr_scaling is LRScaling.LINEAR:
        return float(size)
    if options.lr_scaling is LRScaling.SQRT:
        return math.sqrt(size)
    return 1.0


def warmup_multiplier(step: int, warmup_steps: int, scale: float) -> float:
    """Multiplier on the *scaled* LR at optimizer step ``step`` (0-based).

    Step 0 runs at the base LR (multiplier 1/scale), step ``warmup_steps`` and later at the
    scaled LR (multiplier 1). It multiplies whatever LR the user's scheduler set, so the two
    compose.
    """
    if warmup_steps <= 0 or step >= warmup_steps or scale == 1.0:
        return 1.0
    progress = step / warmup_steps
    return (1.0 + (scale - 1.0) * progress) / scale
