"""Allreduce known tensors with horovod.torch and horovod.tensorflow (eager and in tf.function)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.workers.common import parse_args, report  # noqa: E402

args = parse_args(framework=str)
if args.framework == "torch":
    import horovod.torch as hvd
    import torch

    hvd.init()
    x = torch.arange(4, dtype=torch.float32) + 10 * hvd.rank()
    report(
        args.out,
        hvd.rank(),
        size=hvd.size(),
        input=x.tolist(),
        sum=hvd.allreduce(x, op=hvd.Sum).tolist(),
        average=hvd.allreduce(x, op=hvd.Average).tolist(),
    )
else:
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    x = tf.range(4, dtype=tf.float32) + 10.0 * hvd.rank()
    graph_sum = tf.function(lambda t: hvd.allreduce(t, op=hvd.Sum, name="graph_sum"))
    graph_avg = tf.function(lambda t: hvd.allreduce(t, op=hvd.Average, name="graph_avg"))
    report(
        args.out,
        hvd.rank(),
        size=hvd.size(),
        input=x.numpy().tolist(),
        sum=hvd.allreduce(x, op=hvd.Sum, name="eager_sum").numpy().tolist(),
        average=hvd.allreduce(x, op=hvd.Average, name="eager_avg").numpy().tolist(),
        graph_sum=graph_sum(x).numpy().tolist(),
        graph_average=graph_avg(x).numpy().tolist(),
    )
