"""2-rank torch job tracked in MLflow: a linear model trained with a plain loop and the tracker.

``--mode normal`` also logs the model. ``--mode outage`` waits at step 10 for the test to stop
the server (``<out>/stopped``) and, after the loop, for it to come back (``<out>/restarted``)
unless ``--no-restart``; the waits are not part of the timed steps.
"""

import time
from pathlib import Path

import torch

import hvdtrain.torch as ht
from hvdtrain import tracking
from hvdtrain.torch.tracking import log_model
from tests.workers.common import parse_args, report

BASE_LR, BATCH = 0.05, 8


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)


def main():
    args = parse_args(mode=str, steps=int, step_sleep=float, experiment=str, no_restart=int)
    ctx = ht.init(seed=0)
    data = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 4, generator=data)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
    model = torch.nn.Linear(4, 1)
    optimizer = ht.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=BASE_LR), model)

    tracker = tracking.start(
        config={"model": {"kind": "linear", "inputs": 4}, "db_password": "hunter2"},
        experiment=args.experiment,
        run_name=f"torch-{args.mode}",
        tags={"suite": "hvdtrain"},
        spill_dir=args.out / "spill",
    )
    tracker.log_params(
        tracking.training_params(
            ctx, optimizer.hvdtrain_options, base_lr=BASE_LR, per_rank_batch_size=BATCH
        )
    )
    losses, log_seconds, loop_seconds = [], [], 0.0
    for step in range(args.steps):
        if args.mode == "outage" and step == 10:
            (args.out / f"ready{ctx.rank}").touch()
            wait_for(args.out / "stopped")
        started = time.perf_counter()
        rows = slice(
            (step * 2 + ctx.rank) * BATCH % 256, (step * 2 + ctx.rank) * BATCH % 256 + BATCH
        )
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs[rows]), targets[rows])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        before_log = time.perf_counter()
        tracker.log_step(step, {"loss": loss.item()}, lr=ht.current_lr(optimizer), samples=BATCH)
        log_seconds.append(time.perf_counter() - before_log)
        time.sleep(args.step_sleep or 0)
        loop_seconds += time.perf_counter() - started
    tracker.log_epoch(0, {"loss": sum(losses) / len(losses), "val_loss": losses[-1]})

    predictions, model_uri = None, None
    if args.mode == "normal":
        model_uri = log_model(tracker, model, inputs[:5], registered_model_name="hvdtrain-torch")
        predictions = model(inputs[:5]).detach().flatten().tolist()
    if args.mode == "outage" and not args.no_restart:
        wait_for(args.out / "restarted")
    started = time.perf_counter()
    spill = tracker.finish()
    report(
        args.out,
        ctx.rank,
        run_id=tracker.run_id,
        losses=losses,
        loop_seconds=loop_seconds,
        max_log_seconds=max(log_seconds),
        finish_seconds=time.perf_counter() - started,
        spill=str(spill) if spill else None,
        model_uri=model_uri,
        predictions=predictions,
        weights=model.weight.detach().flatten().tolist(),
    )


if __name__ == "__main__":
    main()
