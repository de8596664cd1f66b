"""What hvdtrain's safety nets cost a training step: the data-parallel tripwire (``core.tripwire``)
and the tracking journal (``tracking.journal``).

Measured the way ``hvdtrain bench`` measures: in the same processes, the same model and batch
(the benchmark MLP, 6.3 M parameters, 64 samples per rank), contenders taking turns window by
window in rotated order; each figure is a ratio of two contenders in the same window, given as
median, min and max over the windows. A claim holds where the whole min-max range does.

* tripwire, torch and Keras: steps with the tripwire's check every step, and with it never due
  (its per-step bookkeeping only), against steps with the tripwire taken out; the cost at the
  default interval is the check's cost divided by the interval, plus the bookkeeping.
* journal (torch): a step that logs its loss (``tracker.log_step``, every step: the worst case)
  with the journal, against the same without a journal; the tracking server is down, so every
  record stays in the journal (or in memory) and the sender thread only waits to retry.

    hvdtrain run -np 2 hvdtrain/bench/overhead.py --framework torch [--windows 15] [--out DIR]
    hvdtrain run -np 2 hvdtrain/bench/overhead.py --framework keras
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from hvdtrain.bench import models
from hvdtrain.bench.timing import Plan, timed, windows
from hvdtrain.core import tripwire
from hvdtrain.core.context import main_process_only

OFF, BOOKKEEPING, EVERY_STEP = "tripwire out", "tripwire never due", "tripwire every step"
NEVER = 10 ** 12  # an interval no benchmark reaches


def spread(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Window-by-window ratios: median, min, max."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def tripwire_figures(per_op: dict[str, list[float]]) -> dict:
    """The tripwire's cost per step, relative to a step without it."""
    check = spread(per_op[EVERY_STEP], per_op[OFF])
    book = spread(per_op[BOOKKEEPING], per_op[OFF])
    default = {k: book[k] + (check[k] - 1) / tripwire.DEFAULT_EVERY for k in check}
    return {"step_s_median": statistics.median(per_op[OFF]), "check_every_step": check, "bookkeeping": book,
            f"default_every_{tripwire.DEFAULT_EVERY}": default}


def torch_part(plan: Plan) -> dict:
    import horovod.torch as hvd
    import torch
    from torch import nn

    import hvdtrain.torch as ht
    import hvdtrain.torch.optimizer as adapter
    from hvdtrain.tracking.store import bound_http_calls

    ctx = ht.init(seed=0)
    shape = models.mlp_shape(quick=False)
    model = nn.Sequential(nn.Linear(shape.inputs, shape.hidden), nn.ReLU(), nn.Linear(shape.hidden, shape.hidden),
                          nn.ReLU(), nn.Linear(shape.hidden, shape.classes))
    optimizer = ht.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), model)
    inputs, targets = torch.randn(shape.batch, shape.inputs), torch.randint(0, shape.classes, (shape.batch,))
    policy, after_step = optimizer.hvdtrain_policy, adapter.after_step

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss

    def configured(every: int | None):
        def run() -> None:
            adapter.after_step = after_step if every is not None else (lambda *args: None)
            policy.tripwire_every = every if every is not None else NEVER
            step()
        return timed(run)

    barrier = lambda: hvd.allreduce(torch.zeros(1), name="bench.overhead.barrier")  # noqa: E731
    per_op = windows({OFF: configured(None), BOOKKEEPING: configured(NEVER), EVERY_STEP: configured(1)}, plan,
                     barrier)
    adapter.after_step, policy.tripwire_every = after_step, tripwire.interval()
    found = {"tripwire": tripwire_figures(per_op)}

    bound_http_calls()
    with tempfile.TemporaryDirectory() as tmp:
        dead = f"http://127.0.0.1:{_free_port()}"
        trackers = {name: _tracker(ctx, dead, Path(tmp) / "run.jsonl" if journal else None)
                    for name, journal in (("with journal", True), ("without journal", False))}
        per_op = windows({name: timed(lambda t=t: t.log_step(0, {"loss": float(step())}))
                          for name, t in trackers.items()}, plan, barrier)
        for tracker in trackers.values():
            tracker.finish(timeout=1)
    found["journal"] = {"step_s_median": statistics.median(per_op["without journal"]),
                        "with_vs_without": spread(per_op["with journal"], per_op["without journal"])}
    return found


def _tracker(ctx, uri: str, journal: Path | None):
    """A tracker of a run on a server that is down; rank 0's sends nothing, keeping every record."""
    from mlflow.tracking import MlflowClient

    from hvdtrain.tracking import Tracker
    from hvdtrain.tracking.records import RunSpec
    from hvdtrain.tracking.sender import Sender

    sender = Sender(MlflowClient(uri), RunSpec(experiment="overhead"), journal, retry_interval=60,
                    max_retry_interval=60) if ctx.is_main else None
    return Tracker(ctx, None, sender)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keras_part(plan: Plan) -> dict:
    import horovod.tensorflow as hvd
    import keras
    import tensorflow as tf

    import hvdtrain.keras as hk
    from hvdtrain.bench.keras_step import _fit_contender, _mlp
    from hvdtrain.keras.tripwire import Tripwire

    hk.init(seed=0)
    make, batch, loss, make_optimizer, _ = _mlp(quick=False)
    model = make()
    model.compile(optimizer=hk.wrap_optimizer(make_optimizer()), loss=loss, jit_compile=False)
    shipped = hk.callbacks()
    without = [cb for cb in shipped if not isinstance(cb, Tripwire)]
    never, every = Tripwire(), Tripwire()
    never.every, every.every = NEVER, 1
    per_op = windows({OFF: _fit_contender(model, batch, without),
                      BOOKKEEPING: _fit_contender(model, batch, [*without, never]),
                      EVERY_STEP: _fit_contender(model, batch, [*without, every])}, plan,
                     lambda: hvd.allreduce(tf.zeros([1]), op=hvd.Sum, name="bench.overhead.barrier"))
    found = {"tripwire": tripwire_figures(per_op)}
    # The allreduce counter in the traced step (in every contender above): one int64 add.
    counter = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def thousand_adds():
        for _ in range(1000):
            counter.assign_add(1)

    thousand_adds()  # traced
    started = time.perf_counter()
    thousand_adds()
    found["tripwire"]["counter_add_s"] = (time.perf_counter() - started) / 1000
    return found


@main_process_only
def _write(out: Path, framework: str, found: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"overhead-{framework}.json").write_text(json.dumps(found, indent=1))
    for part, figures in found.items():
        print(f"{framework} {part}: median step {figures['step_s_median'] * 1000:.1f} ms")
        for name, value in figures.items():
            if isinstance(value, dict):
                print(f"  {name:<28} x{value['median']:.4f}  (min {value['min']:.4f}, max {value['max']:.4f})")
            elif name != "step_s_median":
                print(f"  {name:<28} {value * 1e6:.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["torch", "keras"], required=True)
    parser.add_argument("--windows", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per window")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    plan = Plan(warmup=5, windows=args.windows, iters=args.steps)
    found = (torch_part if args.framework == "torch" else keras_part)(plan)
    _write(args.out, args.framework, found)


if __name__ == "__main__":
    main()
