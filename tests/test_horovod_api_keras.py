"""Issue 24: Horovod's own TensorFlow 2 and Keras APIs run unchanged on Keras 3
with hvdtrain's build.

One horovodrun launch (``workers/horovod_api_keras.py``, which also runs ``horovod_api_tf.py``)
trains with each API as Horovod's docs write it, on 2 ranks, against single-process Keras on the
global batch.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.launch import horovodrun, results

ATOL = 1e-10


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("horovod_api")
    proc = horovodrun("horovod_api_keras.py", out=out, timeout=600, plain_horovodrun=True)
    found = results(out)
    found[0]["stdout"] = proc.stdout
    return found


FIT_CHECKS = [
    "sgd_momentum",
    "adam_standalone",
    "predivide",
    "sum",
    "sparse",
    "sparse_as_dense",
    "passes_averaged",
    "passes_summed",
]


@pytest.mark.slow
@pytest.mark.parametrize("check", FIT_CHECKS)
def test_distributed_optimizer_matches_one_process_on_the_global_batch(ranks, check):
    # sgd_momentum: 2 epochs, rank 1 starting from other weights (BroadcastGlobalVariablesCallback);
    # adam_standalone: horovod.keras; sum: op=Sum is one process at twice the LR; passes_summed:
    # backward_passes_per_step=2 without averaging the two is one process at twice the LR.
    for rank in ranks:
        assert rank[check]["diff"] < ATOL, rank[check]["diff"]
        # the user's optimizer class: model.save writes a plain one
        assert rank[check]["same_class"]
    assert ranks[0][check]["weights"] == ranks[1][check]["weights"]


@pytest.mark.slow
def test_backward_passes_update_every_second_batch(ranks):
    # 12 batches per rank, 6 updates: Keras counts updates in ``iterations`` when it accumulates.
    assert [r["passes_averaged"]["iterations"] for r in ranks] == [6, 6]
    assert [r["sgd_momentum"]["iterations"] for r in ranks] == [12, 12]


@pytest.mark.slow
def test_fp16_compression_rounds_gradients_but_stays_close(ranks):
    for rank in ranks:
        assert 1e-9 < rank["fp16"]["diff"] < 1e-3
    assert ranks[0]["fp16"]["weights"] == ranks[1]["fp16"]["weights"]


@pytest.mark.slow
def test_metric_average_callback_gives_the_mean_over_ranks(ranks):
    local = np.array([r["metric_average"]["local"] for r in ranks])
    assert not np.allclose(local[0], local[1])
    for rank in ranks:
        np.testing.assert_allclose(
            rank["metric_average"]["averaged"], local.mean(axis=0), rtol=0, atol=1e-12
        )


@pytest.mark.slow
def test_lr_warmup_follows_horovods_ramp_with_momentum_correction(ranks):
    warmup = ranks[0]["warmup"]
    size, steps, epochs, initial = 2, 6, 2, warmup["initial_lr"]
    # Horovod's formula: lr(e) = initial / size * (e * (size - 1) / warmup_epochs + 1), at e =
    # epoch + (batch + 1) / steps_per_epoch; unchanged after the warmup epochs.
    ramp = [
        initial / size * ((e + (b + 1) / steps) * (size - 1) / epochs + 1)
        for e in range(epochs)
        for b in range(steps)
    ]
    np.testing.assert_allclose(warmup["lrs"], ramp + [ramp[-1]] * steps, rtol=1e-12)
    np.testing.assert_allclose(
        warmup["logged_lr"], [ramp[steps - 1], ramp[-1], ramp[-1]], rtol=1e-12
    )
    for rank in ranks:
        assert rank["warmup"]["diff"] < ATOL, rank["warmup"]["diff"]
    assert ranks[0]["warmup"]["weights"] == ranks[1]["warmup"]["weights"]
    assert "finished gradual learning rate warmup to 0.1" in ranks[0]["stdout"]


@pytest.mark.slow
def test_lr_schedule_callback_sets_each_epochs_lr(ranks):
    # multiplier 0.5 from start_epoch 1, staircase: epoch 0 untouched, then 0.01 * 0.5 ** (epoch -
    # 1).
    for rank in ranks:
        np.testing.assert_allclose(rank["schedule"], [0.01, 0.01, 0.005, 0.0025], rtol=1e-6)


@pytest.mark.slow
def test_load_model_restores_a_distributed_optimizer_with_its_state(ranks):
    for rank in ranks:
        found = rank["load_model"]
        assert (found["class"], found["state_restored"]) == ("Adam", True)
        # load_model(compression=fp16) rounds the continued training's gradients
        assert 1e-9 < found["diff"] < 1e-3


@pytest.mark.slow
def test_horovod_script_without_distributed_optimizer_is_stopped_by_the_tripwire(ranks):
    for rank in ranks:
        assert rank["plain_optimizer"].startswith(
            "DataParallelError: data parallelism is off at step 1: rank 1 "
            "holds different weights from rank 0"
        )


@pytest.mark.slow
def test_unsupported_options_are_refused_in_one_line(ranks):
    found = ranks[0]["refusals"]
    assert "groups=" in found["groups"] and "remove the argument" in found["groups"]
    assert "already wrapped" in found["twice"]
    assert "PartialDistributedGradientTape" in found["local_var"]


@pytest.mark.slow
def test_distributed_gradient_tape_with_first_batch_broadcast(ranks):
    for rank in ranks:
        assert rank["tape"]["diff"] < ATOL, rank["tape"]["diff"]
        assert rank["tape"]["start_diff"] > 0.1  # the ranks really started apart
    assert ranks[0]["tape"]["weights"] == ranks[1]["tape"]["weights"]


@pytest.mark.slow
def test_partial_distributed_gradient_tape_keeps_local_layers_local(ranks):
    for rank in ranks:
        assert rank["partial_tape"]["shared_diff"] < 1e-12
        assert rank["partial_tape"]["local_diff"] < 1e-12


@pytest.mark.slow
def test_collectives_take_keras_variables(ranks):
    for rank in ranks:
        found = rank["collectives"]
        assert found["allreduce"] == [1.5, 1.5]
        assert found["grouped"] == [[1.5, 1.5], [15.0, 15.0, 15.0]]
        assert found["grouped_traced"] == [[3.0, 3.0], [30.0, 30.0, 30.0]]
        assert found["allgather"] == [1.0, 1.0, 2.0, 2.0]
        assert found["broadcast"] == [[2.0, 2.0], [20.0, 20.0, 20.0]]


@pytest.mark.slow
def test_elastic_keras_state_rolls_back_to_the_commit_and_goes_on(ranks):
    for rank in ranks:
        found = rank["elastic"]
        assert found["attempts"] == 2
        assert found["restored_diff"] == 0.0
        assert found["diff"] < ATOL, found["diff"]
    assert ranks[0]["elastic"]["weights"] == ranks[1]["elastic"]["weights"]
