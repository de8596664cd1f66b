"""What hvdtrain's safety nets cost a training step: the data-parallel tripwire (``core.tripwire``)
and the tracking journal (``tracking.journal``).

Their cost is far below the noise of a whole step on a shared machine, so the difference of two
step times could not show it. Instead each piece is timed by itself, in windows interleaved with
windows of whole training steps in the same processes (the benchmark MLP, 6.3 M parameters, 64
samples per rank), and each window gives the cost as a fraction of that window's step time; the
figures are the median, min and max of those fractions over the windows.

* tripwire: per step, the hook that finds no check due (torch: ``after_step``; Keras: the
  callback counting batches down to the next due step, plus the in-graph allreduce counter);
  per check, reading the counters, the checksums and the allgather, ``DEFAULT_EVERY`` steps
  apart. Cost at the default interval: hook + counter + check / interval.
* journal (rank 0): ``Sender.put`` of a step's metrics record with the journal minus without it
  (the record written and flushed before it is queued), once per step: logging every step, the
  worst case. The tracking server is down, so the sender thread only waits to retry.

    hvdtrain run -np 2 hvdtrain/bench/overhead.py --framework torch [--windows 15] [--out DIR]
    hvdtrain run -np 2 hvdtrain/bench/overhead.py --framework keras
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hvdtrain.bench import shapes
from hvdtrain.core import tripwire
from hvdtrain.core.context import main_process_only

NEVER = 10**12  # an interval no benchmark reaches: the tripwire finds no check due


def _seconds(operation: Callable[[], object], times: int) -> float:
    started = time.perf_counter()
    for _ in range(times):
        operation()
    return (time.perf_counter() - started) / times


def fractions(step: list[float], cost: list[float]) -> dict[str, float]:
    """Window by window, ``cost`` over ``step``: median, min and max."""
    ratios = [c / s for c, s in zip(cost, step)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def measure(
    windows: int,
    step: Callable[[], object],
    steps: int,
    pieces: dict[str, Callable[[], float]],
    barrier: Callable[[], None],
) -> dict[str, list[float]]:
    """Per window: seconds per training step, then each piece's seconds (each returns its own)."""
    found: dict[str, list[float]] = {"step": [], **{name: [] for name in pieces}}
    _seconds(step, 3)  # warm-up
    for _ in range(windows):
        barrier()
        found["step"].append(_seconds(step, steps))
        for name, piece in pieces.items():
            barrier()
            found[name].append(piece())
    return found


def summary(found: dict[str, list[float]], per_step: dict[str, list[float]]) -> dict:
    """Medians of the raw timings, and the cost fractions of step time."""
    return {
        "median_s": {name: statistics.median(values) for name, values in found.items()},
        "fraction_of_step": {
            name: fractions(found["step"], cost) for name, cost in per_step.items()
        },
    }


def torch_part(windows: int, steps: int) -> dict:
    import horovod.torch as hvd
    import torch
    from torch import nn

    import hvdtrain.torch as ht
    from hvdtrain.torch.tripwire import after_step

    ctx = ht.init(seed=0)
    shape = shapes.mlp_shape(quick=False)
    model = nn.Sequential(
        nn.Linear(shape.inputs, shape.hidden),
        nn.ReLU(),
        nn.Linear(shape.hidden, shape.hidden),
        nn.ReLU(),
        nn.Linear(shape.hidden, shape.classes),
    )
    optimizer = ht.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), model)
    params = optimizer.hvdtrain_policy.parameters(optimizer)
    optimizer.hvdtrain_policy.tripwire_every = (
        NEVER  # whole steps without a check: the check is timed apart
    )
    inputs, targets = (
        torch.randn(shape.batch, shape.inputs),
        torch.randint(0, shape.classes, (shape.batch,)),
    )

    def step() -> float:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    with tempfile.TemporaryDirectory() as tmp:
        journaled, memory = _sender(Path(tmp) / "run.jsonl"), _sender(None)
        record = _metrics_record()
        pieces = {
            "hook, no check due": lambda: _seconds(
                lambda: after_step(optimizer, params, 2, True, tripwire.DEFAULT_EVERY), 1000
            ),
            "check": lambda: _seconds(
                lambda: after_step(
                    optimizer, params, tripwire.DEFAULT_EVERY, True, tripwire.DEFAULT_EVERY
                ),
                3,
            ),
            "put with journal": lambda: (
                _seconds(lambda: journaled.put(record), 200) if ctx.is_main else 0.0
            ),
            "put in memory": lambda: (
                _seconds(lambda: memory.put(record), 200) if ctx.is_main else 0.0
            ),
        }
        found = measure(
            windows,
            step,
            steps,
            pieces,
            lambda: hvd.allreduce(torch.zeros(1), name="bench.overhead.barrier"),
        )
        for sender in (journaled, memory):
            sender.close(timeout=1)
    every = tripwire.DEFAULT_EVERY
    default = [
        hook + check / every for hook, check in zip(found["hook, no check due"], found["check"])
    ]
    journal = [a - b for a, b in zip(found["put with journal"], found["put in memory"])]
    return summary(
        found,
        {
            f"tripwire at every={every}": default,
            "tripwire check every step": found["check"],
            "journal, logging every step": journal,
        },
    )


def _sender(journal: Path | None):
    """Rank 0's sender for a tracking server that is down: every record stays with it."""
    from mlflow.tracking import MlflowClient

    from hvdtrain.tracking.records import RunSpec
    from hvdtrain.tracking.sender import Sender

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return Sender(
        MlflowClient(f"http://127.0.0.1:{port}"),
        RunSpec(experiment="overhead"),
        journal,
        retry_interval=600,
        max_retry_interval=600,
    )


def _metrics_record() -> dict:
    """What ``tracker.log_step`` queues for a step: loss, LR and samples/s."""
    from hvdtrain.tracking.records import metrics_record

    return metrics_record({"loss": 2.302585, "lr": 0.001, "samples_per_sec": 1234.5}, 120)


def keras_part(windows: int, steps: int) -> dict:
    import horovod.tensorflow as hvd
    import tensorflow as tf

    import hvdtrain.keras as hk
    from hvdtrain.bench.keras_step import _mlp
    from hvdtrain.keras.tripwire import Tripwire

    hk.init(seed=0)
    make, batch, loss, make_optimizer, _ = _mlp(quick=False)
    model = make()
    model.compile(optimizer=hk.wrap_optimizer(make_optimizer()), loss=loss, jit_compile=False)
    callbacks = hk.callbacks()
    for callback in callbacks:
        if isinstance(callback, Tripwire):
            callback.every = NEVER  # whole steps without a check: the check is timed apart
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    # traced, broadcast
    model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0, callbacks=callbacks)

    def window_of_steps() -> None:
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=callbacks)

    hook, check = Tripwire(), Tripwire()
    hook.every, check.every = tripwire.DEFAULT_EVERY, 1
    for callback in (hook, check):
        callback.set_model(model)
        callback.on_train_begin()

    def no_check_due() -> None:
        hook._batches_left = 2  # counting down to a due step
        hook.on_train_batch_end(0)

    def due_check() -> None:
        step, reductions = check._counters()
        # as if this batch made an update
        check._since, check._batches_left = ((step - 1, reductions - 1), 1)
        check.on_train_batch_end(0)

    counter = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def thousand_adds():
        for _ in range(1000):
            counter.assign_add(1)

    thousand_adds()  # traced
    pieces = {
        "hook, no check due": lambda: _seconds(no_check_due, 1000),
        "counter add": lambda: _seconds(thousand_adds, 3) / 1000,
        "check": lambda: _seconds(due_check, 3),
    }
    found = measure(
        windows,
        window_of_steps,
        1,
        pieces,
        lambda: hvd.allreduce(tf.zeros([1]), op=hvd.Sum, name="bench.overhead.barrier"),
    )
    # a window of fit steps, per step
    found["step"] = [seconds / steps for seconds in found["step"]]
    every = tripwire.DEFAULT_EVERY
    default = [
        h + a + c / every
        for h, a, c in zip(found["hook, no check due"], found["counter add"], found["check"])
    ]
    return summary(
        found, {f"tripwire at every={every}": default, "tripwire check every step": found["check"]}
    )


@main_process_only
def _write(out: Path, framework: str, found: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"overhead-{framework}.json").write_text(json.dumps(found, indent=1))
    print(
        f"{framework}: median step {found['median_s']['step'] * 1000:.1f} ms; "
        + ", ".join(
            f"{name} {seconds * 1e6:.1f} us"
            for name, seconds in found["median_s"].items()
            if name != "step"
        )
    )
    for name, value in found["fraction_of_step"].items():
        print(
            f"  {name:<32} {value['median']:.5%} of a step  (min {value['min']:.5%}, max "
            f"{value['max']:.5%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["torch", "keras"], required=True)
    parser.add_argument("--windows", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="training steps per window")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    found = (torch_part if args.framework == "torch" else keras_part)(args.windows, args.steps)
    _write(args.out, args.framework, found)


if __name__ == "__main__":
    main()
