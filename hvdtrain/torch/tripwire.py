"""The torch side of ``core.tripwire``: per-parameter sums after an optimizer step, and the causes
that fit ``hvdtrain.torch.wrap_optimizer``'s allreduce path."""

from __future__ import annotations

import torch

from ..core import tripwire
from ._context import current

CAUSES = tripwire.Causes(
    not_reduced="the optimizer stepped without hvdtrain's gradient allreduce (step() inside "
    "skip_synchronize() with no synchronize() before it, or a Horovod release whose "
    "DistributedOptimizer no longer reduces in synchronize())",
    diverged="a rank changed its weights outside the optimizer step, or its update did not use "
    "the averaged gradients",
)


def after_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    step: int,
    reduced: bool,
    every: int,
    causes: tripwire.Causes = CAUSES,
) -> None:
    """At a due step (collective): check that every rank reduced and holds the same ``params``."""
    ctx = current()
    if ctx.size == 1 or not tripwire.due(step, every):
        return
    names = getattr(optimizer, "_parameter_names", {})  # Horovod's names, for the message only
    with torch.no_grad():  # float64 accumulators, no float64 copies of the parameters
        sums = torch.stack([p.sum(dtype=torch.float64) for p in params]).tolist()
        magnitudes = torch.stack(
            [torch.linalg.vector_norm(p, 1, dtype=torch.float64) for p in params]
        ).tolist()
    tripwire.check(
        ctx,
        step,
        reduced,
        sums,
        magnitudes,
        [names.get(p, f"parameter {i}") for i, p in enumerate(params)],
        causes,
    )


def after_unwrapped_step(optimizer: torch.optim.Optimizer, step: int, every: int) -> None:
    """``ht.fit``'s tripwire for an optimizer ``wrap_optimizer`` did not make (its own check never
    runs): Horovod's ``DistributedOptimizer`` averages gradients in ``synchronize`` and is checked
    for weights that drift apart; a plain torch optimizer averages nothing, so every rank would
    train its own model with no error, and the first check stops the job naming the fix."""
    kind = type(optimizer).__name__
    causes = tripwire.Causes(
        not_reduced=f"ht.fit got a plain {kind} optimizer: pass "
        "ht.wrap_optimizer(optimizer, model), which averages the gradients at every step",
        diverged=CAUSES.diverged,
    )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    after_step(optimizer, params, step, hasattr(optimizer, "synchronize"), every, causes)
