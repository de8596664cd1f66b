"""Rank 1 leaves after three allreduces while rank 0 goes on calling them: ``raise`` raises an
error with a slow exit after it (an exit handler sleeps 3 s, as an MLflow flush can), so rank 0's
exit, "another worker failed", tends to reach the launcher first; ``exit`` leaves with status 0."""

import atexit
import sys
import time

import horovod.torch as hvd
import torch

import hvdtrain.torch as ht

ctx = ht.init()
for _ in range(3):
    hvd.allreduce(torch.ones(1), name="warmup")
if ctx.rank == 1:
    if sys.argv[1] == "raise":
        atexit.register(time.sleep, 3)
        raise ValueError("a bug on rank 1")
    sys.exit(0)
for _ in range(600):
    hvd.allreduce(torch.ones(1), name="step")
    time.sleep(0.05)
