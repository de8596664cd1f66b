"""Issue 15: ZeRO stage 1 (``shard_optimizer_state=True``) for Keras,
against the unsharded optimizer.

The same 83-parameter model as the torch tests (kernels 70, biases 13). AdamW excludes the
biases from weight decay, so its variables fall in two buckets (ceil(70/N) + ceil(13/N) elements
per rank); SGD has one (ceil(83/N)).
"""

import math
import subprocess
import sys

import numpy as np
import pytest

from tests.launch import horovodrun, results

TOLERANCE = 1e-6


@pytest.fixture(scope="module", params=[2, 3])
def suite(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"keras_zero_suite_{request.param}")
    horovodrun("keras_zero.py", "--mode", "suite", np=request.param, out=out, timeout=400)
    return results(out, np=request.param)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sgd-1", "sgd-2", "adamw-1", "adamw-2"])
def test_sharded_training_matches_unsharded(suite, case):
    """SGD with momentum and AdamW, float64, 20 updates with linear LR scaling, warmup,
    global_clipnorm, and accumulation 1 or 2 (Keras's own): the same weights, on every rank."""
    for rank in suite:
        run = rank[case]
        np.testing.assert_allclose(
            run["sharded"]["final"], run["unsharded"]["final"], atol=TOLERANCE, rtol=0
        )
        assert run["sharded"]["final"] == suite[0][case]["sharded"]["final"]
        assert run["sharded"]["iterations"] == run["unsharded"]["iterations"]
        # clipping acted
        assert np.abs(np.subtract(run["unclipped"], run["sharded"]["final"])).max() > 1e-3


@pytest.mark.slow
def test_model_fit_with_sharded_state_matches_unsharded(suite):
    for rank in suite:
        np.testing.assert_allclose(
            rank["fit"]["sharded"], rank["fit"]["unsharded"], atol=TOLERANCE, rtol=0
        )
        assert rank["fit"]["sharded"] == suite[0]["fit"]["sharded"]


@pytest.mark.slow
def test_sum_and_fp16_compression_reduce_as_unsharded(suite):
    """The sharded reduce-scatter (an all-to-all summed on the receiving rank) honours op="sum"
    to 1e-6 and fp16 compression to float16's precision; fp16 changed the weights (it acted)."""
    for rank in suite:
        run = rank["reductions"]
        np.testing.assert_allclose(
            run["op=sum/sharded"], run["op=sum/unsharded"], atol=TOLERANCE, rtol=0
        )
        assert np.abs(np.subtract(run["op=sum/sharded"], run["plain/sharded"])).max() > 1e-3
        np.testing.assert_allclose(
            run["compression=fp16/sharded"], run["compression=fp16/unsharded"], atol=2e-3, rtol=0
        )
        np.testing.assert_allclose(
            run["compression=fp16/sharded"], run["plain/unsharded"], atol=2e-3, rtol=0
        )
        assert run["compression=fp16/sharded"] != run["plain/sharded"]
        assert run == suite[0]["reductions"]


@pytest.mark.slow
def test_each_rank_holds_state_for_its_partition_only(suite):
    size = len(suite)
    for rank in suite:
        adamw, sgd = rank["adamw-2"]["sharded"], rank["sgd-1"]["sharded"]
        weights, biases = math.ceil(70 / size), math.ceil(13 / size)
        # momentum, velocity and the gradient accumulator, per bucket
        assert adamw["slots"] == sorted([weights] * 3 + [biases] * 3)
        assert rank["adamw-2"]["unsharded"]["slots"] == sorted([3, 10, 30, 40] * 3)
        assert sgd["slots"] == [math.ceil(83 / size)]
        # plus iterations (int64) and the learning rate (float64)
        assert adamw["state_bytes"] == 8 * 3 * (weights + biases) + 8 + 8


@pytest.mark.slow
def test_checkpoint_resumes_from_2_sharded_to_1_unsharded_to_3_sharded(tmp_path):
    k = 4
    first, second = tmp_path / "ckpt2", tmp_path / "ckpt1"
    horovodrun(
        "keras_zero.py",
        "--mode",
        "save",
        "--ckpt",
        str(first),
        "--steps",
        str(k),
        np=2,
        out=tmp_path / "a",
    )
    reference = results(tmp_path / "a", np=2)[0]
    assert reference["saved"]["slots"] == [7, 7, 35, 35]
    horovodrun(
        "keras_zero.py",
        "--mode",
        "resume",
        "--ckpt",
        str(first),
        "--out-ckpt",
        str(second),
        "--steps",
        str(k),
        np=1,
        out=tmp_path / "b",
    )
    (one,) = results(tmp_path / "b", np=1)
    assert (
        one["loaded"]["step"] == k
        and one["loaded"]["saved_world_size"] == 2
        and one["loaded"]["iterations"] == k
    )
    assert one["loaded"]["slots"] == [3, 3, 10, 10, 30, 30, 40, 40]  # the full state, as unsharded
    np.testing.assert_array_equal(one["loaded"]["weights"], reference["saved"]["weights"])
    np.testing.assert_allclose(one["continued"], reference["at_2k"], atol=TOLERANCE, rtol=0)
    horovodrun(
        "keras_zero.py",
        "--mode",
        "resume-sharded",
        "--ckpt",
        str(second),
        "--steps",
        str(k),
        np=3,
        out=tmp_path / "c",
    )
    three = results(tmp_path / "c", np=3)
    for rank in three:
        assert rank["loaded"]["step"] == 2 * k and rank["loaded"]["iterations"] == 2 * k
        assert rank["loaded"]["slots"] == [5, 5, 24, 24]
        np.testing.assert_allclose(rank["continued"], reference["at_3k"], atol=TOLERANCE, rtol=0)
        assert rank["continued"] == three[0]["continued"]


REFUSALS = [
    (
        "keras.optimizers.SGD(0.1, clipnorm=1.0)",
        "",
        "hvdtrain: error: shard_optimizer_state=True does not support clipnorm: it clips each "
        "variable by its own norm; use global_clipnorm",
    ),
    (
        "keras.optimizers.SGD(0.1, use_ema=True)",
        "",
        "hvdtrain: error: shard_optimizer_state=True does not support use_ema: it keeps an "
        "average of every variable",
    ),
    (
        "keras.optimizers.SGD(0.1)",
        "import os; os.environ['HOROVOD_ELASTIC'] = '1'",
        "hvdtrain: error: shard_optimizer_state=True is not supported in elastic mode: a worker "
        "that leaves takes its shard of the optimizer state with it; run without --elastic, or "
        "unsharded",
    ),
    (
        "keras.optimizers.SGD(0.1), shard_gradients=True",
        "",
        "hvdtrain: error: shard_gradients=True is not supported with Keras: a Keras step "
        "computes every gradient at once (GradientTape.gradient) before any can be "
        "reduce-scattered; use shard_optimizer_state=True alone",
    ),
]


@pytest.mark.parametrize("optimizer,setup,message", REFUSALS)
def test_refusals_are_one_line(optimizer, setup, message):
    code = (
        f"import keras, hvdtrain.keras as hk\nhk.init()\n{setup}\n"
        f"hk.wrap_optimizer({optimizer}, shard_optimizer_state=True)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == message
