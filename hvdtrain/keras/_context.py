"""``init``: start Horovod for Keras 3 (TensorFlow backend) and describe the job
in a core ``Context``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ..core import context as core_context
from ..core import failures, slurm, versions

# before Horovod's extension loads: a mismatched build fails inside its import
versions.check("keras")

import horovod.tensorflow as hvd  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ..core.tuning import apply_horovod_defaults  # noqa: E402
from . import internals  # noqa: E402

SUPPORTED_BACKENDS = ("tensorflow",)


def _average(values: Mapping[str, float]) -> dict[str, float]:
    keys = sorted(values)
    if not keys:
        return {}
    tensor = tf.constant([float(values[k]) for k in keys], dtype=tf.float64)
    averaged = hvd.allreduce(tensor, op=hvd.Average, name="hvdtrain.average." + ",".join(keys))
    return dict(zip(keys, averaged.numpy().tolist()))


def _gather(values: Sequence[float]) -> list[list[float]]:
    row = tf.constant([list(values)], dtype=tf.float64)
    return hvd.allgather(row, name=f"hvdtrain.gather.{row.shape[1]}").numpy().tolist()


def _broadcast_object(obj: Any, root_rank: int = 0) -> Any:
    # A fixed name: Horovod's default is the object's type, which differs between the root
    # (the object) and the receivers (usually None), and the ranks would never match up.
    return hvd.broadcast_object(obj, root_rank=root_rank, name="hvdtrain.object")


def _check_backend() -> None:
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"hvdtrain.keras runs Keras 3 on Horovod's TensorFlow ops; KERAS_BACKEND is "
            f"{backend!r}, supported: {', '.join(map(repr, SUPPORTED_BACKENDS))}"
        )


def _configure_devices(local_rank: int, local_size: int, threads: int | None) -> str:
    """One GPU per local rank with memory growth;
    on CPU, split the host's cores between its ranks."""
    gpus = tf.config.list_physical_devices("GPU")
    gpu_index = local_rank % len(gpus) if gpus else None
    try:
        if gpus:
            tf.config.experimental.set_memory_growth(gpus[gpu_index], True)
            tf.config.set_visible_devices(gpus[gpu_index], "GPU")
        else:
            per_rank = core_context.threads_per_rank(local_size, threads)
            tf.config.threading.set_intra_op_parallelism_threads(per_rank)
            tf.config.threading.set_inter_op_parallelism_threads(per_rank)
    except RuntimeError as err:  # TF's runtime already started: the settings can no longer change
        warnings.warn(
            f"hvdtrain.keras.init() came after TensorFlow started, device setup skipped: {err}",
            stacklevel=3,
        )
    return "cpu" if gpu_index is None else f"gpu:{gpu_index}"


def _membership() -> tuple[int, int, int, int]:
    return hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size()


def init(seed: int | None = 0, threads: int | None = None) -> core_context.Context:
    """Initialise Horovod and this worker: one GPU per local rank, CPU threads, seeds.

    Call it before building models. Each rank is seeded with ``seed + rank`` so dropout and
    augmentation differ between ranks; the broadcast in ``callbacks()`` makes initial weights agree.
    """
    _check_backend()
    failures.install()  # one line per rank, not pages of tracebacks, when a peer fails
    apply_horovod_defaults()
    slurm.check_direct_launch()  # srun without a launcher: N lone rank-0 workers
    internals.check()  # a Keras release that moved what hvdtrain.keras relies on: one line
    hvd.init()
    device = _configure_devices(hvd.local_rank(), hvd.local_size(), threads)
    if seed is not None:
        keras.utils.set_random_seed(seed + hvd.rank())
    return core_context.set_current(
        core_context.Context(
            "keras",
            *_membership(),
            device=device,
            broadcast_object=_broadcast_object,
            average=_average,
            gather=_gather,
            membership=_membership,
        )
    )


def current() -> core_context.Context:
    """The job as this worker sees it (rank, size, device...), made by ``init``; a clear error
    when ``init`` was not called."""
    return core_context.current("keras")


def attached() -> core_context.Context:
    """The current context; in a script on Horovod's own API (``hvd.init()``, not ``init``) one made
    for the job Horovod started, leaving its devices and seeds as the script set them."""
    try:
        return current()
    except ValueError:
        device = "gpu:0" if tf.config.list_logical_devices("GPU") else "cpu"
        return core_context.set_current(
            core_context.Context(
                "keras",
                *_membership(),
                device=device,
                broadcast_object=_broadcast_object,
                average=_average,
                gather=_gather,
                membership=_membership,
            )
        )


def average_metrics(values: Mapping[str, float]) -> dict[str, float]:
    """Mean of each metric over all ranks (every rank must call it with the same keys)."""
    return current().average(values)
