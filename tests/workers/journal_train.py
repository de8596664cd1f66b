"""Worker for tests/test_journal.py: a 2-rank torch job tracked in MLflow that logs the loss every
step, then appends the step to ``<out>/logged<rank>`` once ``log_step`` returned (the step is
logged from then on). It runs until the test kills it."""

import time

import torch

import hvdtrain.torch as ht
from hvdtrain import tracking
from tests.workers.common import parse_args


def main():
    args = parse_args(experiment=str, steps=int)
    ctx = ht.init(seed=0)
    model = torch.nn.Linear(4, 1)
    optimizer = ht.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.01), model)
    tracker = tracking.start(
        config={"steps": args.steps}, experiment=args.experiment, spill_dir=args.out / "journal"
    )
    data = torch.Generator().manual_seed(ctx.rank)
    with open(args.out / f"logged{ctx.rank}", "a") as logged:
        for step in range(args.steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(
                model(torch.randn(8, 4, generator=data)), torch.ones(8, 1)
            )
            loss.backward()
            optimizer.step()
            tracker.log_step(step, {"loss": loss.item()})
            logged.write(f"{step}\n")
            logged.flush()
            time.sleep(0.05)
    tracker.finish()


if __name__ == "__main__":
    main()
