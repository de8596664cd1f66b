"""An optional ``fit`` loop for users who want one:
every piece of ``hvdtrain.torch`` wired together."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..core import elastic, plan, tripwire
from ..core.context import main_process_only
from ..core.elastic import Position
from ..core.guards import UnsupportedError, check_finite
from ..core.sharding import check_steps_per_epoch
from ..core.tracker import TrainingTracker
from ..tracking.params import training_params
from . import zero
from ._context import current
from .checkpoint import load_checkpoint, save_checkpoint
from .data import EvalShard, set_epoch, to_device
from .elastic import TorchSnapshot
from .elastic import run as elastic_run
from .optimizer import BASE_LR, current_lr
from .tripwire import after_unwrapped_step

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class History:
    """Per-epoch metrics averaged over all ranks (identical on every rank)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    global_step: int = 0
    # Samples (all ranks) this call trained: 0 for a resumed job with nothing left to train, whose
    # evaluation and throughput would repeat or invent the earlier job's.
    samples_trained: int = 0

    def __getitem__(self, name: str) -> list[float]:
        return [e[name] for e in self.epochs if name in e]


def eval_loader(dataset: Dataset, batch_size: int, **loader_kwargs) -> DataLoader:
    """This rank's share of an evaluation set: every sample exactly once across ranks (no padding).

    Evaluation runs no collective per batch, so unequal shard sizes cannot stall it.
    """
    return DataLoader(
        dataset, batch_size=batch_size, sampler=EvalShard(len(dataset)), **loader_kwargs
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: Callable,
    metrics: Mapping[str, Metric] = (),
    device: str | None = None,
) -> dict[str, float]:
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
    return {
        name: value / max(averaged["_count"], 1e-12)
        for name, value in averaged.items()
        if name != "_count"
    }


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    train_loader: DataLoader,
    *,
    epochs: int,
    val_loader: DataLoader | None = None,
    metrics: Mapping[str, Metric] | None = None,
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    tracker: TrainingTracker | None = None,
    log_every: int = 10,
    config: dict | None = None,
    amp: bool = False,
    progress: bool = True,
    commit_every: int | None = None,
) -> History:
    """Train ``model`` with an optimizer from ``wrap_optimizer`` on a ``distributed_loader``.

    Logs the rank-averaged loss, LR and global samples/s every ``log_every`` steps and per-epoch
    metrics (``epoch_loss``, ``val_<metric>``) to ``tracker`` (an ``hvdtrain.tracking`` tracker),
    with the data-parallel params of the run (``tracking.training_params``: world size, scaled LR,
    global batch size...);
    checkpoints every epoch and every ``checkpoint_every`` steps; with ``resume`` continues from
    the newest valid checkpoint in ``checkpoint_dir`` on any world size. Only rank 0 shows a
    progress bar. A last accumulation group cut short by the epoch's end is still divided by
    ``accumulation_steps``.

    In elastic mode (``hvdtrain run --elastic``) training survives workers leaving and joining:
    it rolls back to the last commit (each epoch, each checkpoint and every ``commit_every``
    steps), re-shards the data, re-scales the LR and logs the new ``world_size`` to ``tracker``.
    """
    if epochs < 1:
        raise UnsupportedError(f"epochs must be >= 1, got {epochs}")
    if scheduler_interval not in ("epoch", "step"):
        raise UnsupportedError(
            f"unknown scheduler_interval {scheduler_interval!r}; allowed: 'epoch', 'step'"
        )
    loop = _Loop(
        model,
        optimizer,
        loss_fn,
        train_loader,
        epochs=epochs,
        val_loader=val_loader,
        metrics=dict(metrics or {}),
        scheduler=scheduler,
        step_scheduler=scheduler_interval == "step",
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        tracker=tracker,
        log_every=log_every,
        config=config,
        amp=amp,
        progress=progress,
        commit_every=commit_every,
    )
    options = getattr(optimizer, "hvdtrain_options", None)
    if tracker is not None and options is not None:
        tracker.log_params(
            training_params(
                current(),
                options,
                base_lr=optimizer.param_groups[0][BASE_LR],
                per_rank_batch_size=train_loader.batch_size,
            )
        )
    position = elastic.starting_position(
        current(),
        checkpoint_dir,
        resume,
        lambda: load_checkpoint(checkpoint_dir, model, optimizer, scheduler),
    )
    nothing_left = elastic.say_if_nothing_left(position, epochs, checkpoint_dir)
    if tracker is not None and not nothing_left:
        tracker.log_membership(position.step, current().size)
    if not elastic.enabled():
        return loop.train(position, commit=lambda: None)
    return elastic_run(
        lambda state: loop.train(state.position, commit=state.commit),
        TorchSnapshot(model, optimizer, scheduler),
        position,
        on_membership=elastic.report_membership(tracker),
    )


class _Loop:
    """``fit``'s training loop; ``train`` starts at a ``Position`` and calls ``commit`` where a
    restart may resume from (a no-op outside elastic mode)."""

    def __init__(
        self,
        model,
        optimizer,
        loss_fn,
        train_loader,
        *,
        epochs,
        val_loader,
        metrics,
        scheduler,
        step_scheduler,
        checkpoint_dir,
        checkpoint_every,
        tracker,
        log_every,
        config,
        amp,
        progress,
        commit_every,
    ):
        self.model, self.optimizer, self.loss_fn, self.train_loader = (
            model,
            optimizer,
            loss_fn,
            train_loader,
        )
        self.epochs, self.val_loader, self.metrics = epochs, val_loader, metrics
        self.scheduler, self.step_scheduler = scheduler, step_scheduler
        self.checkpoint_dir, self.checkpoint_every, self.tracker = (
            checkpoint_dir,
            checkpoint_every,
            tracker,
        )
        self.log_every, self.config, self.progress, self.commit_every = (
            log_every,
            config,
            progress,
            commit_every,
        )
        self.accumulation = getattr(
            getattr(optimizer, "hvdtrain_options", None), "accumulation_steps", 1
        )
        self.use_amp = amp and current().on_gpu
        # Not from wrap_optimizer: its own tripwire is missing, so the loop runs one.
        self.unwrapped = not hasattr(optimizer, "hvdtrain_policy")
        self.tripwire_every = tripwire.interval()
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.samples_trained = 0

    def train(self, position: Position, commit: Callable[[], None]) -> History:
        ctx = current()
        self.model.train()
        checked = False
        while position.epoch < self.epochs:
            epoch = position.epoch
            set_epoch(self.train_loader, epoch)
            if not checked:  # after set_epoch: an elastic restart re-shards there
                check_steps_per_epoch(
                    ctx,
                    len(self.train_loader),
                    caller="ht.fit",
                    unit="batches",
                    remedy="build the loader with ht.distributed_loader (an equal share per rank)",
                )
                plan.say_if_unexpected(
                    ctx,
                    getattr(self.optimizer, "hvdtrain_options", None),
                    caller="ht.fit",
                    batch_size=self.train_loader.batch_size or 0,  # None: the user's batch_sampler
                    samples_per_rank=len(self.train_loader.sampler),
                    batches_per_epoch=len(self.train_loader),
                    epochs=self.epochs,
                )
                checked = True
            skip = position.batches_done(
                self.train_loader.batch_size * ctx.size, len(self.train_loader)
            )
            bar = tqdm(
                total=len(self.train_loader),
                desc=f"epoch {epoch + 1}/{self.epochs}",
                initial=skip,
                disable=not (self.progress and ctx.is_main),
                leave=False,
                mininterval=1.0,
            )
            loss_sum, loss_count, window_loss, window_batches, window_samples = 0.0, 0, 0.0, 0, 0
            batches = iter(self.train_loader)
            for _ in range(skip):
                next(batches)
            for index, (inputs, targets) in enumerate(batches, start=skip):
                inputs, targets = to_device(inputs, ctx.device), to_device(targets, ctx.device)
                with (
                    torch.autocast("cuda", dtype=torch.float16)
                    if self.use_amp
                    else contextlib.nullcontext()
                ):
                    loss = self.loss_fn(self.model(inputs), targets)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                boundary = (index + 1) % self.accumulation == 0 or index + 1 == len(
                    self.train_loader
                )
                if boundary:
                    _step(self.optimizer, self.scaler)
                    self.optimizer.zero_grad()
                    position.step += 1
                    if self.unwrapped:
                        after_unwrapped_step(self.optimizer, position.step, self.tripwire_every)
                    if self.scheduler is not None and self.step_scheduler:
                        self.scheduler.step()
                loss_value = float(loss.detach())
                loss_sum, loss_count = loss_sum + loss_value, loss_count + 1
                window_loss, window_batches = window_loss + loss_value, window_batches + 1
                window_samples += len(targets)
                self.samples_trained += len(targets) * ctx.size  # every rank an equal share
                bar.update()
                if not boundary:
                    continue
                logged = position.step % self.log_every == 0
                if logged:
                    local = {"loss": window_loss / window_batches}  # the steps since the last log
                    averaged = (
                        self.tracker.log_step(
                            position.step,
                            local,
                            lr=current_lr(self.optimizer),
                            samples=window_samples,
                        )
                        if self.tracker is not None
                        else ctx.average(local)
                    )
                    check_finite(averaged, position.step)
                    bar.set_postfix(loss=f"{averaged['loss']:.4f}")
                    window_loss, window_batches, window_samples = 0.0, 0, 0
                position.epoch_samples = (index + 1) * self.train_loader.batch_size * ctx.size
                checkpoint = (
                    bool(self.checkpoint_every) and position.step % self.checkpoint_every == 0
                )
                if checkpoint:
                    if not logged:  # never checkpoint diverged weights
                        check_finite(ctx.average({"loss": loss_value}), position.step)
                    self._checkpoint(position)
                if checkpoint or (self.commit_every and position.step % self.commit_every == 0):
                    commit()
            bar.close()
            if self.scheduler is not None and not self.step_scheduler:
                self.scheduler.step()
            epoch_metrics = {"loss": ctx.average({"loss": loss_sum / max(loss_count, 1)})["loss"]}
            if self.val_loader is not None:
                epoch_metrics.update(
                    {
                        f"val_{k}": v
                        for k, v in evaluate(
                            self.model, self.val_loader, self.loss_fn, self.metrics
                        ).items()
                    }
                )
            position.epochs.append({"epoch": epoch + 1, **epoch_metrics})
            if self.tracker is not None:
                self.tracker.log_epoch(epoch, epoch_metrics)
            check_finite(epoch_metrics, position.step)
            position.epoch, position.epoch_samples = epoch + 1, 0
            self._checkpoint(position)
            if self.progress:
                _print_epoch(epoch, self.epochs, epoch_metrics)
            commit()
        return History(
            epochs=list(position.epochs),
            global_step=position.step,
            samples_trained=self.samples_trained,
        )

    def _checkpoint(self, position: Position) -> None:
        """Collective: rank 0 saves while the others wait with it (``save_checkpoint``)."""
        if self.checkpoint_dir is not None:
            save_checkpoint(
                self.checkpoint_dir,
                self.model,
                self.optimizer,
                self.scheduler,
                step=position.step,
                epoch=position.epoch,
                config=self.config,
                extra={"epoch_samples": position.epoch_samples},
            )


@main_process_only
def _print_epoch(epoch: int, epochs: int, metrics: Mapping[str, float]) -> None:
    print(
        f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
        flush=True,
    )


def _step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is None:
        optimizer.step()
        return
    # AMP: allreduce first, unscale the averaged gradients, then step without a second allreduce.
    optimizer.synchronize()
    scaler.unscale_(optimizer)
    if zero.is_sharded(optimizer):
        zero.agree_on_overflow(optimizer, scaler)
    with optimizer.skip_synchronize():
        scaler.step(optimizer)
    scaler.update()
