"""What a ``fit`` is about to do, said once by rank 0 before training where it is not what the
arguments suggest. Shared by both adapters' ``fit``.

Two requests train, but not as asked, and used to pass without a word: a batch size larger than a
worker's share of an epoch (each epoch is then one step of the share: ``--batch-size 5000`` on 100
samples and 2 workers trains in steps of 50), and a warmup longer than the job (the learning rate
never reaches the scaled value the user chose the world size for). Notices, not errors: a short
smoke test of a real configuration does both on purpose.
"""

from __future__ import annotations

from .context import Context, say_on_main
from .lr import lr_scale_factor, warmup_multiplier
from .options import DistributedOptions


def say_if_unexpected(
    ctx: Context,
    options: DistributedOptions | None,
    *,
    caller: str,
    batch_size: int,
    samples_per_rank: int,
    batches_per_epoch: int,
    epochs: int,
) -> None:
    """Rank 0's warnings about the job ``caller`` is about to train (``options``: the wrapped
    optimizer's, None for an optimizer hvdtrain did not wrap)."""
    if batch_size > samples_per_rank > 0:
        say_on_main(
            f"hvdtrain: warning: {caller}: the batch size {batch_size} is larger than a worker's "
            f"{samples_per_rank} samples per epoch: every epoch is one step of {samples_per_rank} "
            "samples per worker"
        )
    if options is None or not options.warmup_steps:
        return
    updates = epochs * batches_per_epoch // options.accumulation_steps
    scale = lr_scale_factor(options, ctx.size, ctx.local_size, ctx.on_gpu)
    if options.warmup_steps > updates and scale != 1.0:
        last = warmup_multiplier(max(updates - 1, 0), options.warmup_steps, scale) * scale
        say_on_main(
            f"hvdtrain: warning: {caller}: warmup_steps={options.warmup_steps} is longer than the "
            f"job's {updates} optimizer step{'' if updates == 1 else 's'}: its last step runs at "
            f"{last:.3g} x the base learning rate, never at the scaled {scale:g} x"
        )
