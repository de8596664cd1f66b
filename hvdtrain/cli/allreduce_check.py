"""One rank of ``hvdtrain doctor``'s live check:
allreduce known values, exit 1 if a result is wrong.

    python -m hvdtrain.cli.allreduce_check torch|tensorflow [cpu|gpu]

On ``gpu`` each rank's tensors live on its own GPU (local rank), so Horovod reduces them with NCCL.
"""

from __future__ import annotations

import sys


def check_torch(device: str) -> list[str]:
    import horovod.torch as hvd
    import torch

    hvd.init()
    if device == "gpu":
        torch.cuda.set_device(hvd.local_rank())
    value = torch.full((1024,), float(hvd.rank() + 1), device="cuda" if device == "gpu" else "cpu")
    return _compare(
        hvd.size(),
        {
            "sum": float(hvd.allreduce(value, op=hvd.Sum)[0]),
            "average": float(hvd.allreduce(value, op=hvd.Average)[0]),
        },
    )


def check_tensorflow(device: str) -> list[str]:
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    if device == "gpu":
        gpus = tf.config.list_physical_devices("GPU")
        tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")
    with tf.device("/GPU:0" if device == "gpu" else "/CPU:0"):
        value = tf.fill([1024], float(hvd.rank() + 1))
        in_graph = tf.function(lambda t: hvd.allreduce(t, op=hvd.Sum, name="doctor_graph"))
        return _compare(
            hvd.size(),
            {
                "sum": float(hvd.allreduce(value, op=hvd.Sum, name="doctor_sum")[0]),
                "average": float(hvd.allreduce(value, op=hvd.Average, name="doctor_avg")[0]),
                "sum in tf.function": float(in_graph(value)[0]),
            },
        )


def _compare(size: int, got: dict[str, float]) -> list[str]:
    total = size * (size + 1) / 2
    want = {"sum": total, "average": total / size, "sum in tf.function": total}
    return [f"{k}: got {v}, want {want[k]}" for k, v in got.items() if abs(v - want[k]) > 1e-6]


if __name__ == "__main__":
    device = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    errors = {"torch": check_torch, "tensorflow": check_tensorflow}[sys.argv[1]](device)
    for error in errors:
        print(f"allreduce error: {error}", file=sys.stderr)
    sys.exit(1 if errors else 0)
