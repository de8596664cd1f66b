"""One rank of ``hvdtrain bench``, started by horovodrun; rank 0 writes the job's results.

Phases run in turn, each with only the Horovod instances it measures alive (an idle Horovod
instance still wakes its background thread every cycle): allreduce with horovod.torch,
horovod.tensorflow and torch.distributed; torch steps and torch's optimizer-state sharding
(``zero``) with horovod.torch and torch.distributed; Keras steps and Keras's optimizer-state
sharding with horovod.tensorflow alone. ``--zero-memory FRAMEWORK MODEL MODE`` runs one model's and
optimizer's memory measurement alone, importing only that framework (a Keras one never imports
torch, a torch one never TensorFlow). ``--device gpu``: each rank works on the GPU of its local
rank, Horovod reduces with NCCL and torch.distributed uses its NCCL backend.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import warnings
from pathlib import Path

from ..core.context import main_process_only

PARTS = ("allreduce", "torch", "keras", "zero")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True, help="rank 0 writes this JSON file")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--sizes", default="4096", help="allreduce sizes in bytes, comma-separated")
    parser.add_argument("--fusion", default="200,65536", help="tensors,bytes each")
    parser.add_argument("--windows", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per rank (test hosts share the machine's cores; default: cores / local "
        "ranks)",
    )
    parser.add_argument(
        "--compression",
        choices=("none", "fp16"),
        default="none",
        help="gradient compression of the steps",
    )
    parser.add_argument(
        "--window-bytes", type=int, default=32 << 20, help="bytes reduced per allreduce window"
    )
    parser.add_argument(
        "--step-iters", type=int, default=10, help="training steps per timed window"
    )
    parser.add_argument(
        "--zero-memory",
        nargs=3,
        metavar=("FRAMEWORK", "MODEL", "MODE"),
        default=None,
        help="only measure this framework's model's and optimizer mode's memory "
        "(zero_step.memory, keras_zero_step.memory), in a process of its own",
    )
    return parser.parse_args(argv)


def _start_torch_distributed(rank: int, size: int, device: str) -> None:
    """A Gloo (NCCL on GPU) group over the same ranks; rank 0 picks the address and port (its host's
    address from horovodrun's rendezvous across hosts, loopback on one) and Horovod shares them."""
    import horovod.torch as hvd
    import torch.distributed as dist

    address = None
    if rank == 0:
        address = (
            os.environ.get("HOROVOD_GLOO_RENDEZVOUS_ADDR", "127.0.0.1")
            if _across_hosts()
            else "127.0.0.1"
        )
        with socket.socket() as sock:
            sock.bind((address, 0))
            port = sock.getsockname()[1]
        address = f"{address}:{port}"
    address, _, port = hvd.broadcast_object(address, root_rank=0, name="bench.port").rpartition(":")
    os.environ.update(MASTER_ADDR=address, MASTER_PORT=port)
    dist.init_process_group("nccl" if device == "gpu" else "gloo", rank=rank, world_size=size)


def _across_hosts() -> bool:
    import horovod.torch as hvd

    return hvd.cross_size() > 1


def _tensorflow_devices(per_rank: int, device: str, local_rank: int) -> None:
    """hvdtrain.keras.init's device setup (CPU split, or this rank's GPU only), made before the
    allreduce phase starts TensorFlow."""
    import tensorflow as tf

    if device == "gpu":
        gpu = tf.config.list_physical_devices("GPU")[local_rank]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
        return
    tf.config.threading.set_intra_op_parallelism_threads(per_rank)
    tf.config.threading.set_inter_op_parallelism_threads(per_rank)


def _zero_memory(args: argparse.Namespace) -> dict:
    """One framework's model's and optimizer mode's memory measurement, with that framework's
    Horovod alone."""
    framework, model, mode = args.zero_memory
    if framework == "keras":
        import hvdtrain.keras as hk

        from . import keras_zero_step

        hk.init(seed=0, threads=args.threads)
        return keras_zero_step.memory(args.quick, model, mode)
    import hvdtrain.torch as ht

    from . import zero_step

    ht.init(seed=0, threads=args.threads)
    return zero_step.memory(args.quick, model, mode)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    parts = args.parts.split(",")
    if args.zero_memory:
        return _write(args.out, _zero_memory(args))
    import horovod.torch as hvd
    import torch
    import torch.distributed as dist

    import hvdtrain.torch as ht

    from .rendezvous import fresh_rendezvous

    ctx = ht.init(seed=0, threads=args.threads)
    share = functools.partial(hvd.broadcast_object, root_rank=0, name="bench.rendezvous")
    if args.device == "gpu" and not ctx.on_gpu:
        raise SystemExit(f"rank {ctx.rank}: --device gpu but torch sees no GPU")
    results = {
        "np": ctx.size,
        "device": args.device,
        "threads_per_rank": torch.get_num_threads(),
        "hosts": hvd.allgather_object(socket.gethostname(), name="bench.hosts"),
        "horovod_env": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith("HOROVOD_")
            and not k.startswith(("HOROVOD_GLOO_RENDEZVOUS", "HOROVOD_HOSTNAME"))
        },
    }
    _start_torch_distributed(ctx.rank, ctx.size, args.device)
    keras_parts = "keras" in parts or "zero" in parts  # each has a Keras phase
    if keras_parts or "allreduce" in parts:
        _tensorflow_devices(torch.get_num_threads(), args.device, ctx.local_rank)
    servers = []
    if "allreduce" in parts and ctx.size > 1:
        import horovod.tensorflow as htf

        from . import allreduce

        servers.append(fresh_rendezvous(ctx.rank, ctx.size, share))
        htf.init()
        sizes = [int(s) for s in args.sizes.split(",")]
        fusion = tuple(int(v) for v in args.fusion.split(","))
        results["allreduce"] = allreduce.run(
            sizes, fusion, args.quick, args.windows, ctx.device, args.window_bytes
        )
        htf.shutdown()
        # no-op for Horovod itself; hands the shared process-set table back to horovod.torch
        hvd.init()
    if "torch" in parts:
        from . import torch_step

        results["torch_steps"] = torch_step.run(
            args.quick, args.windows, ctx.device, args.compression, args.step_iters
        )
    if "zero" in parts:
        from . import zero_step

        results["zero"] = {"torch": zero_step.run(args.quick, args.windows)}
    if keras_parts:
        servers.append(fresh_rendezvous(ctx.rank, ctx.size, share))
    dist.destroy_process_group()
    hvd.shutdown()
    if keras_parts:
        import hvdtrain.keras as hk

        with warnings.catch_warnings():  # TensorFlow's threads were set above, the same way
            warnings.filterwarnings("ignore", message=".*came after TensorFlow started.*")
            hk.init(seed=0)
    if "keras" in parts:
        from . import keras_step

        results["keras_steps"] = keras_step.run(args.quick, args.windows)
    if "zero" in parts:
        from . import keras_zero_step

        results["zero"]["keras"] = keras_zero_step.run(args.quick, args.windows)
    for server in filter(None, servers):
        server.stop()
    _write(args.out, results)


@main_process_only
def _write(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
