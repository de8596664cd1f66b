"""Allreduce of float32 tensors: horovod.torch, horovod.tensorflow and torch.distributed (Gloo;
NCCL on GPU) in the same processes, window by window, plus the tensor-fusion effect on many small
tensors. On GPU the tensors live on each rank's GPU and a window ends when the GPU is done.

Every backend sums (torch.distributed's only mode; Horovod's Average would add a scaling pass).
The four fp16 rows send half the bytes: Horovod's ``Compression.fp16`` in torch, hvdtrain's fp16
compressor (``hvdtrain.torch.compression``: a reused float16 buffer, decompressed in place),
Horovod's ``Compression.fp16`` in TensorFlow (what ``hvdtrain.keras`` sends with
``compression="fp16"``) and torch.distributed on a float16 copy (what DDP's
``fp16_compress_hook`` does); the report counts the float32 bytes they reduce, so their bandwidth
is the effective one a compressed gradient allreduce gets.
"""

from __future__ import annotations

from collections.abc import Callable

import horovod.tensorflow as htf
import horovod.torch as ht
import tensorflow as tf
import torch
import torch.distributed as dist

from ..core.options import Compression
from ..torch.collectives import wait
from ..torch.compression import COMPRESSORS
from .timing import Plan, timed, windows

HVD_TORCH = "horovod.torch"
HVD_TORCH_QUIET = "horovod.torch, hvdtrain's wait"
HVD_TF = "horovod.tensorflow"
TORCH_DIST = "torch.distributed"
HVD_TORCH_FP16 = "horovod.torch, fp16, hvdtrain's wait"
HVDTRAIN_FP16 = "horovod.torch, hvdtrain's fp16"
HVD_TF_FP16 = "horovod.tensorflow, fp16"
TORCH_DIST_FP16 = "torch.distributed, fp16 copy"
BACKENDS = (
    HVD_TORCH,
    HVD_TORCH_QUIET,
    HVD_TF,
    TORCH_DIST,
    HVD_TORCH_FP16,
    HVDTRAIN_FP16,
    HVD_TF_FP16,
    TORCH_DIST_FP16,
)


WINDOW_BYTES = 32 << 20


def plan_for(
    size_bytes: int, quick: bool, window_count: int, window_bytes: int = WINDOW_BYTES
) -> Plan:
    """About ``window_bytes`` reduced per window, 1 to 50 operations (less across rate-limited
    test hosts, where a 64 MB allreduce takes seconds)."""
    iters = 2 if quick else max(1, min(50, window_bytes // size_bytes))
    return Plan(warmup=iters, windows=window_count, iters=iters)


def _gpu_sync(device: str) -> Callable[[], None] | None:
    """Wait for both frameworks' queued GPU work (None on CPU, where every op is synchronous)."""
    if device == "cpu":
        return None
    return lambda: (torch.cuda.synchronize(), tf.test.experimental.sync_devices())


def _tf_device(device: str) -> str:
    return "/CPU:0" if device == "cpu" else "/GPU:0"  # the rank's one visible GPU


def size_contenders(size_bytes: int, device: str = "cpu") -> dict[str, Callable[[int], float]]:
    n = size_bytes // 4
    name = f"bench.allreduce.{size_bytes}"
    hvd_tensor, quiet_tensor, dist_tensor, fp16_tensor, own_fp16, dist_fp16 = (
        torch.zeros(n, device=device) for _ in range(6)
    )
    with tf.device(_tf_device(device)):
        tf_tensor, tf_fp16_tensor = tf.zeros([n]), tf.zeros([n])

    def tf_allreduce(tensor, op_name, compression=htf.Compression.none):
        with tf.device(_tf_device(device)):
            return htf.allreduce(tensor, op=htf.Sum, name=op_name, compression=compression)

    # what Horovod's DistributedOptimizer does with a compressor, waited for by hvdtrain
    def compressed_allreduce(compressor, tensor, op_name):
        compressed, context = compressor.compress(tensor)
        return compressor.decompress(
            wait(ht.allreduce_async_(compressed, op=ht.Sum, name=op_name)), context
        )

    hvdtrain_fp16 = COMPRESSORS[Compression.FP16]

    def dist_as_fp16():  # DDP's fp16_compress_hook: reduce a float16 copy, copy the result back
        half = dist_fp16.to(torch.float16)
        dist.all_reduce(half)
        dist_fp16.copy_(half)

    sync = _gpu_sync(device)
    return {
        HVD_TORCH: timed(lambda: ht.allreduce_(hvd_tensor, op=ht.Sum, name=name), sync),
        HVD_TORCH_QUIET: timed(
            lambda: wait(ht.allreduce_async_(quiet_tensor, op=ht.Sum, name=name + "q")), sync
        ),
        HVD_TF: timed(lambda: tf_allreduce(tf_tensor, name), sync),
        TORCH_DIST: timed(lambda: dist.all_reduce(dist_tensor), sync),
        HVD_TORCH_FP16: timed(
            lambda: compressed_allreduce(ht.Compression.fp16, fp16_tensor, name + "h"), sync
        ),
        HVDTRAIN_FP16: timed(
            lambda: compressed_allreduce(hvdtrain_fp16, own_fp16, name + "c"), sync
        ),
        HVD_TF_FP16: timed(
            lambda: tf_allreduce(tf_fp16_tensor, name + "t", htf.Compression.fp16), sync
        ),
        TORCH_DIST_FP16: timed(dist_as_fp16, sync),
    }


def fusion_contenders(
    count: int, size_bytes: int, device: str = "cpu"
) -> dict[str, Callable[[int], float]]:
    n = size_bytes // 4

    def tensors():
        return [torch.zeros(n, device=device) for _ in range(count)]

    one_by_one, fused, grouped, quiet, dist_each, dist_flat = (tensors() for _ in range(6))
    with tf.device(_tf_device(device)):
        tf_tensors = [tf.zeros([n]) for _ in range(count)]
    sync = _gpu_sync(device)

    def on_tf_device(operation):
        def run():
            with tf.device(_tf_device(device)):
                return operation()

        return run

    def hvd_fused():
        handles = [
            ht.allreduce_async_(t, op=ht.Sum, name=f"bench.fused.{i}") for i, t in enumerate(fused)
        ]
        for handle in handles:
            ht.synchronize(handle)

    def hvd_fused_quiet():
        handles = [
            ht.allreduce_async_(t, op=ht.Sum, name=f"bench.quiet.{i}") for i, t in enumerate(quiet)
        ]
        for handle in handles:
            wait(handle)

    def dist_flattened():
        flat = torch.cat(dist_flat)
        dist.all_reduce(flat)
        for tensor, part in zip(dist_flat, flat.split(n)):
            tensor.copy_(part)

    return {
        f"{HVD_TORCH} one by one": timed(
            lambda: [
                ht.allreduce_(t, op=ht.Sum, name=f"bench.each.{i}")
                for i, t in enumerate(one_by_one)
            ],
            sync,
        ),
        f"{HVD_TORCH} async, fused by Horovod": timed(hvd_fused, sync),
        f"{HVD_TORCH} async, fused, hvdtrain's wait": timed(hvd_fused_quiet, sync),
        f"{HVD_TORCH} grouped_allreduce": timed(
            lambda: ht.grouped_allreduce_(grouped, op=ht.Sum, name="bench.grouped"), sync
        ),
        f"{HVD_TF} one by one": timed(
            on_tf_device(
                lambda: [
                    htf.allreduce(t, op=htf.Sum, name=f"bench.each.{i}")
                    for i, t in enumerate(tf_tensors)
                ]
            ),
            sync,
        ),
        f"{HVD_TF} grouped_allreduce": timed(
            on_tf_device(
                lambda: htf.grouped_allreduce(tf_tensors, op=htf.Sum, name="bench.grouped")
            ),
            sync,
        ),
        f"{TORCH_DIST} one by one": timed(lambda: [dist.all_reduce(t) for t in dist_each], sync),
        f"{TORCH_DIST} flattened": timed(dist_flattened, sync),
    }


def run(
    sizes: list[int],
    fusion: tuple[int, int],
    quick: bool,
    window_count: int,
    device: str = "cpu",
    window_bytes: int = WINDOW_BYTES,
) -> dict:
    """Every rank's seconds per allreduce in each window, all-gathered:
    ``{"sizes": ..., "fusion": ...}``."""
    by_size = {
        size: windows(
            size_contenders(size, device),
            plan_for(size, quick, window_count, window_bytes),
            dist.barrier,
        )
        for size in sizes
    }
    count, size_bytes = fusion
    fused = windows(
        fusion_contenders(count, size_bytes, device),
        plan_for(count * size_bytes, quick, window_count, window_bytes),
        dist.barrier,
    )
    mine = {"sizes": {str(s): t for s, t in by_size.items()}, "fusion": fused}
    return {
        "per_rank": ht.allgather_object(mine, name="bench.allreduce.results"),
        "fusion_shape": {"tensors": count, "tensor_bytes": size_bytes},
    }
