"""Worker for tests/test_bad_input.py: a tiny hvdtrain.torch job fed bad checkpoints, a bad
checkpoint directory, a full disk or NaN data.

Modes: ``save`` trains ``--epochs`` from scratch with a checkpoint per epoch in ``--ckpt``;
``resume`` only loads ``--ckpt``; ``continue`` resumes from ``--ckpt`` and trains up to
``--epochs``; ``nan`` trains one clean epoch (a checkpoint), then continues with a NaN in one
sample, reporting the checkpoint directory as it was before.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

import hvdtrain.torch as ht
from tests.workers.bad_common import args as parse
from tests.workers.bad_common import limit_file_size, recorded, snapshot

args = parse()
ctx = ht.init(seed=0)
width = args.width or 8
model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
optimizer = ht.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.05), model)
inputs = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))


def train(inputs: torch.Tensor, epochs: int, resume: bool) -> None:
    loader = ht.distributed_loader(
        TensorDataset(inputs, inputs.sum(dim=1, keepdim=True)), batch_size=8
    )
    ht.fit(
        model,
        optimizer,
        torch.nn.MSELoss(),
        loader,
        epochs=epochs,
        checkpoint_dir=args.ckpt,
        resume=resume,
        progress=False,
        log_every=1,
    )


limit_file_size(ctx.rank, args.fsize)
with recorded(args.out, ctx.rank) as report:
    if args.mode == "resume":
        print(f"resumed at step {ht.load_checkpoint(args.ckpt, model, optimizer).step}", flush=True)
    elif args.mode == "nan":
        train(inputs, 1, resume=False)
        report["before"] = snapshot(args.ckpt) if ctx.is_main else None
        inputs[5, 0] = float("nan")  # one sample: one rank's loss goes NaN first
        train(inputs, args.epochs, resume=True)
    else:
        train(inputs, args.epochs, resume=args.mode == "continue")
