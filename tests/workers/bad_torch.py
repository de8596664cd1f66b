"""Worker for tests/test_bad_input.py: a tiny hvdtrain.torch job fed bad checkpoints, a bad
checkpoint directory, a full disk or NaN data.

Modes: ``save`` trains ``--epochs`` from scratch with a checkpoint per epoch in ``--ckpt``;
``resume`` only loads ``--ckpt``; ``continue`` resumes from ``--ckpt`` and trains up to
``--epochs``; ``nan`` trains one clean epoch (a checkpoint), then continues with a NaN in one
sample, reporting the checkpoint directory as it was before; ``empty`` trains on no data;
``unequal`` on per-rank loaders of 8 and 7 batches (not ``distributed_loader``'s); ``plain``
with the torch optimizer itself, not ``wrap_optimizer``'s; ``rank0save``: Horovod's idiom in a
loop of one's own, ``save_checkpoint`` on rank 0 only; ``shrunk``: a mid-epoch checkpoint resumed
with less training data; ``rebatched``: one resumed with another batch size; ``oversized``: a
batch larger than a rank's share and a warmup longer than the job.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

import hvdtrain.torch as ht
from tests.workers.bad_common import args as parse
from tests.workers.bad_common import limit_file_size, recorded, snapshot

args = parse()
ctx = ht.init(seed=0)
width = args.width or 8
model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
if args.mode != "plain":
    optimizer = ht.wrap_optimizer(optimizer, model, warmup_steps=100 * (args.mode == "oversized"))
inputs = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))


def train(
    inputs: torch.Tensor, epochs: int, resume: bool, every: int | None = None, batch_size: int = 8
) -> None:
    dataset = TensorDataset(inputs, inputs.sum(dim=1, keepdim=True))
    if args.mode == "unequal":  # each rank its own loader: 64 and 56 samples
        loader = DataLoader(Subset(dataset, range(64 - 8 * ctx.rank)), batch_size=batch_size)
    else:
        loader = ht.distributed_loader(dataset, batch_size=batch_size)
    ht.fit(
        model,
        optimizer,
        torch.nn.MSELoss(),
        loader,
        epochs=epochs,
        checkpoint_dir=args.ckpt,
        checkpoint_every=every,
        resume=resume,
        progress=False,
        log_every=1,
    )


limit_file_size(ctx.rank, args.fsize)
with recorded(args.out, ctx.rank) as report:
    if args.mode == "resume":
        print(f"resumed at step {ht.load_checkpoint(args.ckpt, model, optimizer).step}", flush=True)
    elif args.mode == "rank0save":
        for step in range(1, 3):  # rank 1 goes on to step 2's allreduce, rank 0 saves alone
            model(inputs).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            if ctx.is_main:
                ht.save_checkpoint(args.ckpt, model, optimizer, step=step, epoch=0)
    elif args.mode == "shrunk":  # a mid-epoch checkpoint, resumed on a quarter of the data
        train(inputs, 1, resume=False, every=2)  # step 2: 32 samples into epoch 1 of 4 steps
        if ctx.is_main:  # rank 0 alone reads checkpoints: the others need not wait for this
            for path in Path(args.ckpt).glob("step-00000004.*"):
                path.unlink()
        train(inputs[:16], 1, resume=True)
    elif args.mode == "rebatched":  # a mid-epoch checkpoint, resumed with another batch size
        train(inputs, 1, resume=False, every=3)  # step 3: 48 samples into epoch 1 of 4 steps
        if ctx.is_main:
            for path in Path(args.ckpt).glob("step-00000004.*"):
                path.unlink()
        train(inputs, 1, resume=True, batch_size=10)  # global batches of 20: 40 skipped
    elif args.mode == "empty":
        train(inputs[:0], args.epochs, resume=False)
    elif args.mode == "oversized":
        train(inputs, 1, resume=False, batch_size=5000)
    elif args.mode == "nan":
        train(inputs, 1, resume=False)
        report["before"] = snapshot(args.ckpt) if ctx.is_main else None
        inputs[5, 0] = float("nan")  # one sample: one rank's loss goes NaN first
        train(inputs, args.epochs, resume=True)
    else:
        train(inputs, args.epochs, resume=args.mode == "continue")
