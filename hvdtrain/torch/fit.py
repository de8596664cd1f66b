"""An optional ``fit`` loop for users who want one: every piece of ``hvdtrain.torch`` wired together."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..core.context import main_process_only
from ._context import current
from .checkpoint import load_checkpoint, save_checkpoint
from .data import set_epoch, to_device
from .optimizer import current_lr

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class History:
    """Per-epoch metrics averaged over all ranks (identical on every rank)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    global_step: int = 0

    def __getitem__(self, name: str) -> list[float]:
        return [e[name] for e in self.epochs if name in e]


def eval_loader(dataset: Dataset, batch_size: int, **loader_kwargs) -> DataLoader:
    """This rank's share of an evaluation set: every sample exactly once across ranks (no padding).

    Evaluation runs no collective per batch, so unequal shard sizes cannot stall it.
    """
    ctx = current()
    return DataLoader(Subset(dataset, range(ctx.rank, len(dataset), ctx.size)), batch_size=batch_size,
                      shuffle=False, **loader_kwargs)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, loss_fn: Callable, metrics: Mapping[str, Metric] = (),
             device: str | None = None) -> dict[str, float]:
    """Sample-weighted loss and metrics over all ranks' shards of an evaluation set."""
    ctx = current()
    device = device or ctx.device
    model.eval()
    sums = {"loss": 0.0, **{name: 0.0 for name in metrics}}
    count = 0
    for inputs, targets in loader:
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        outputs = model(inputs)
        n = len(targets)
        sums["loss"] += float(loss_fn(outputs, targets)) * n
        for name, metric in dict(metrics).items():
            sums[name] += float(metric(outputs, targets)) * n
        count += n
    model.train()
    averaged = ctx.average({**sums, "_count": count})
    return {name: value / max(averaged["_count"], 1e-12) for name, value in averaged.items() if name != "_count"}


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, train_loader: DataLoader, *,
        epochs: int, val_loader: DataLoader | None = None, metrics: Mapping[str, Metric] | None = None,
        scheduler: Any = None, scheduler_interval: str = "epoch", checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None, resume: bool = False, tracker: Any = None, log_every: int = 10,
        config: dict | None = None, amp: bool = False, progress: bool = True) -> History:
    """Train ``model`` with an optimizer from ``wrap_optimizer`` on a ``distributed_loader``.

    Logs the rank-averaged loss, LR and global samples/s every ``log_every`` steps and per-epoch
    metrics (``epoch_loss``, ``val_<metric>``) to ``tracker`` (an ``hvdtrain.tracking`` tracker);
    checkpoints every epoch and every ``checkpoint_every`` steps; with ``resume`` continues from
    the newest valid checkpoint in ``checkpoint_dir`` on any world size. Only rank 0 shows a
    progress bar. A last accumulation group cut short by the epoch's end is still divided by
    ``accumulation_steps``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"unknown scheduler_interval {scheduler_interval!r}; allowed: 'epoch', 'step'")
    ctx = current()
    metrics = dict(metrics or {})
    accumulation = getattr(getattr(optimizer, "hvdtrain_options", None), "accumulation_steps", 1)
    use_amp = amp and ctx.on_gpu
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    history = History()
    start_epoch, skip_batches = 0, 0
    if resume and checkpoint_dir is not None:
        meta = load_checkpoint(checkpoint_dir, model, optimizer, scheduler)
        if meta is not None:
            history.global_step = meta.step
            start_epoch = meta.epoch
            # Preserve the data position across world sizes: count global samples, not local steps.
            skip_batches = meta.extra.get("epoch_samples", 0) // (train_loader.batch_size * ctx.size)

    model.train()
    for epoch in range(start_epoch, epochs):
        set_epoch(train_loader, epoch)
        bar = tqdm(total=len(train_loader), desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and ctx.is_main),
                   initial=skip_batches, leave=False, mininterval=1.0)
        loss_sum, loss_count, window_loss, window_batches, window_samples = 0.0, 0, 0.0, 0, 0
        batches = iter(train_loader)
        for _ in range(skip_batches):
            next(batches)
        for index, (inputs, targets) in enumerate(batches, start=skip_batches):
            inputs, targets = to_device(inputs, ctx.device), to_device(targets, ctx.device)
            with torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext():
                loss = loss_fn(model(inputs), targets)
            (scaler.scale(loss) if scaler else loss).backward()
            boundary = (index + 1) % accumulation == 0 or index + 1 == len(train_loader)
            if boundary:
                _step(optimizer, scaler)
                optimizer.zero_grad()
                history.global_step += 1
                if scheduler is not None and scheduler_interval == "step":
                    scheduler.step()
            loss_value = float(loss.detach())
            loss_sum, loss_count = loss_sum + loss_value, loss_count + 1
            window_loss, window_batches, window_samples = window_loss + loss_value, window_batches + 1, \
                window_samples + len(targets)
            bar.update()
            if boundary and history.global_step % log_every == 0:
                local = {"loss": window_loss / window_batches}  # the steps since the last log
                averaged = (tracker.log_step(history.global_step, local, lr=current_lr(optimizer),
                                             samples=window_samples) if tracker is not None else ctx.average(local))
                bar.set_postfix(loss=f"{averaged['loss']:.4f}")
                window_loss, window_batches, window_samples = 0.0, 0, 0
            if checkpoint_dir is not None and checkpoint_every and boundary \
                    and history.global_step % checkpoint_every == 0:
                epoch_samples = (index + 1) * train_loader.batch_size * ctx.size
                save_checkpoint(checkpoint_dir, model, optimizer, scheduler, step=history.global_step, epoch=epoch,
                                config=config, extra={"epoch_samples": epoch_samples})
        bar.close()
        skip_batches = 0
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        epoch_metrics = {"loss": ctx.average({"loss": loss_sum / max(loss_count, 1)})["loss"]}
        if val_loader is not None:
            epoch_metrics.update({f"val_{k}": v for k, v in evaluate(model, val_loader, loss_fn, metrics).items()})
        history.epochs.append({"epoch": epoch + 1, **epoch_metrics})
        if tracker is not None:
            tracker.log_epoch(epoch, epoch_metrics)
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, model, optimizer, scheduler, step=history.global_step, epoch=epoch + 1,
                            config=config, extra={"epoch_samples": 0})
        if progress:
            _print_epoch(epoch, epochs, epoch_metrics)
    return history


@main_process_only
def _print_epoch(epoch: int, epochs: int, metrics: Mapping[str, float]) -> None:
    print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


def _step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is None:
        optimizer.step()
        return
    # AMP: allreduce first, unscale the averaged gradients, then step without a second allreduce.
    optimizer.synchronize()
    scaler.unscale_(optimizer)
    with optimizer.skip_synchronize():
        scaler.step(optimizer)
    scaler.update()
