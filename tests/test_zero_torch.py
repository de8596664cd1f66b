"""Issues 15 and 27: ZeRO stage 1 (``shard_optimizer_state=True``) and stage 2
(``shard_gradients=True``) for torch, against the unsharded optimizer.

The model has 83 parameters in two param groups (weights 70, biases 13): neither 2 nor 3 workers
divide them. Buckets are per group, so each rank's shard holds ceil(70/N) + ceil(13/N) elements.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

from tests import docs_table
from tests.launch import horovodrun, results

GROUPS = (70, 13)
TOLERANCE = 1e-6


def shard_numel(size: int) -> int:
    return sum(math.ceil(n / size) for n in GROUPS)


@pytest.fixture(scope="module", params=[2, 3])
def suite(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"zero_suite_{request.param}")
    horovodrun("torch_zero.py", "--mode", "suite", np=request.param, out=out, timeout=300)
    return results(out, np=request.param)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["sgd-1", "sgd-2", "adamw-1", "adamw-2", "sgd-1-stage2", "adamw-2-stage2"]
)
def test_sharded_training_matches_unsharded(suite, case):
    """SGD with momentum and AdamW, float64, 20 steps with linear LR scaling, warmup, a StepLR
    scheduler, clipping, and accumulation 1 or 2: the same weights, on every rank; stage 2 too."""
    first = suite[0][case]
    for rank in suite:
        run = rank[case]
        np.testing.assert_allclose(
            run["sharded"]["final"], run["unsharded"]["final"], atol=TOLERANCE, rtol=0
        )
        # all-gathered: bit-identical on every rank
        assert run["sharded"]["final"] == first["sharded"]["final"]
        assert (
            run["sharded"]["sharded"]
            and not run["unsharded"]["sharded"]
            and run["sharded"]["is_instance"]
        )
        # scheduler and LR scaling saw the same steps
        assert run["sharded"]["lr"] == run["unsharded"]["lr"]
        # clipping acted
        assert np.abs(np.subtract(run["unclipped"], run["sharded"]["final"])).max() > 1e-3
        # after zero_grad the parameters' grads: stage 1's zeroed views; stage 2 and torch: None
        assert run["unsharded"]["grads_kept"] == [False] * 4
        assert run["sharded"]["grads_kept"] == [not case.endswith("stage2")] * 4


@pytest.mark.slow
def test_each_rank_holds_state_for_its_partition_only(suite):
    size = len(suite)
    for rank in suite:
        adamw, sgd = rank["adamw-2"], rank["sgd-2"]
        assert adamw["unsharded"]["state"] == {"exp_avg": 83, "exp_avg_sq": 83}
        assert adamw["sharded"]["state"] == {
            "exp_avg": shard_numel(size),
            "exp_avg_sq": shard_numel(size),
        }
        assert adamw["sharded"]["state_entries"] == len(GROUPS)  # one shard per bucket
        assert sgd["unsharded"]["state"] == {"momentum_buffer": 83}
        assert sgd["sharded"]["state"] == {"momentum_buffer": shard_numel(size)}
        # Per-element state plus one step per entry, all float64 (the worker's default dtype).
        assert adamw["sharded"]["state_bytes"] == 2 * 8 * shard_numel(size) + 8 * len(GROUPS)


@pytest.mark.slow
def test_fp16_compression_reduces_the_same_gradients(suite):
    """fp16 rounds each rank's gradient before the reduction in both paths: close, not bit-equal."""
    for rank in suite:
        for case in ("adamw-fp16", "adamw-fp16-stage2"):
            run = rank[case]
            np.testing.assert_allclose(
                run["sharded"]["final"], run["unsharded"]["final"], atol=1e-3, rtol=0
            )
            assert run["sharded"]["final"] == suite[0][case]["sharded"]["final"]


@pytest.mark.slow
def test_a_gradient_changed_after_backward_is_refused_in_one_line(suite):
    """The reduce-scatter starts in backward: a later change of a gradient would be lost on some
    ranks; the step refuses, and the next one trains."""
    row = docs_table.row(
        "a gradient changed between loss.backward() and opt.step() under shard_optimizer_state=True"
    )
    for rank in suite:
        assert rank["changed"] == {
            "message": row.answer.removeprefix("hvdtrain: error: "),
            "trained_after": True,
        }
        # a model wrapped again trains as a fresh copy of it: the first wrap's hooks are gone
        assert rank["rewrapped"] == {"same": True, "trained": True}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_bf16_parameters_train_on_fp32_master_shards(suite, stage):
    """ZeRO's usual setting: bf16 parameters and gradients, fp32 master shards and AdamW state;
    the same weights as an fp32 master model stepped unsharded from the same bf16 gradients."""
    for rank in suite:
        run = rank[f"bf16-stage{stage}"]
        assert run["param_dtypes"] == ["torch.bfloat16"]
        assert run["dtypes"] == ["torch.float32"]  # the moments
        np.testing.assert_allclose(run["weights"], run["reference"], atol=0, rtol=0)
        assert run["trained"]
        # checkpoints carry the fp32 masters, which hold bits the bf16 weights lost
        assert run["saved_keys"] == ["exp_avg", "exp_avg_sq", "hvdtrain_master", "step"]
        assert run["master_differs_from_weights"] and run["masters_restored"]


@pytest.mark.slow
def test_amp_overflow_on_one_shard_skips_the_step_on_every_rank(suite):
    for rank in suite:
        found = rank["overflow"]
        # skipped everywhere, though only rank 0's shard saw the inf
        assert found["weights"][0] == found["before"]
        assert found["scales"] == [512.0, 512.0]  # halved once, then a clean step
        assert (
            found["weights"][1] != found["before"]
            and found["weights"][1] == suite[0]["overflow"]["weights"][1]
        )


@pytest.mark.slow
def test_checkpoint_resumes_from_2_sharded_to_1_unsharded_to_3_sharded(tmp_path):
    """Saved sharded at 2 workers (the full state, gathered), loaded unsharded at 1 worker, saved
    again, loaded sharded at 3: each leg continues the uninterrupted 2-worker trajectory."""
    k = 4
    first, second = tmp_path / "ckpt2", tmp_path / "ckpt1"
    horovodrun(
        "torch_zero.py",
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
    assert reference["saved"]["state"] == {"exp_avg": shard_numel(2), "exp_avg_sq": shard_numel(2)}
    horovodrun(
        "torch_zero.py",
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
        not one["sharded"] and one["loaded"]["step"] == k and one["loaded"]["saved_world_size"] == 2
    )
    # the full state, as unsharded
    assert one["loaded"]["state"] == {"exp_avg": 83, "exp_avg_sq": 83}
    assert one["loaded"]["adam_steps"] == [float(k)]
    np.testing.assert_array_equal(one["loaded"]["weights"], reference["saved"]["weights"])
    np.testing.assert_allclose(one["continued"], reference["at_2k"], atol=TOLERANCE, rtol=0)
    horovodrun(
        "torch_zero.py",
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
        assert (
            rank["sharded"]
            and rank["loaded"]["step"] == 2 * k
            and rank["loaded"]["saved_world_size"] == 1
        )
        assert rank["loaded"]["state"] == {"exp_avg": shard_numel(3), "exp_avg_sq": shard_numel(3)}
        assert rank["loaded"]["adam_steps"] == [float(2 * k)]
        # StepLR (5 steps) crossed a boundary since
        assert rank["loaded"]["lr"] == one["loaded"]["lr"] * 0.7
        np.testing.assert_allclose(rank["continued"], reference["at_3k"], atol=TOLERANCE, rtol=0)
        assert rank["continued"] == three[0]["continued"]


REFUSALS = [
    (
        "import os; os.environ['HOROVOD_ELASTIC'] = '1'",
        {},
        "hvdtrain: error: shard_optimizer_state=True is not supported in elastic mode: a worker "
        "that leaves takes its shard of the optimizer state with it; run without --elastic, or "
        "unsharded",
    ),
    (
        "",
        {"op": "adasum"},
        "ValueError: shard_optimizer_state=True needs op 'average' or 'sum': Adasum combines "
        "whole gradients, which a reduce-scatter never holds",
    ),
    (
        "",
        {"shard_optimizer_state": 1},
        "ValueError: shard_optimizer_state must be True or False, got 1",
    ),
    (
        "",
        {"shard_optimizer_state": False, "shard_gradients": True},
        "ValueError: shard_gradients=True needs shard_optimizer_state=True: a rank keeps only the "
        "gradients of the parameters it updates",
    ),
]


@pytest.mark.parametrize("setup,kwargs,message", REFUSALS)
def test_refusals_are_one_line(setup, kwargs, message):
    code = (
        f"import torch, hvdtrain.torch as ht\nht.init()\n{setup}\nm = torch.nn.Linear(2, 1)\n"
        "ht.wrap_optimizer(torch.optim.SGD(m.parameters(), lr=0.1), m, "
        f"**{{'shard_optimizer_state': True, **{kwargs!r}}})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == message
