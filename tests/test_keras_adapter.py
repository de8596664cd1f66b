"""hvdtrain.keras on real Horovod (2 ranks, Gloo) against plain single-process Keras.

Three horovodrun launches: ``keras_train.py`` runs every training check and writes a first
checkpoint on 2 ranks; ``keras_checkpoint.py`` then resumes it on 1 rank and that one on 2 ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.launch import REPO, horovodrun, results

ATOL = 1e-5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keras_ckpt") / "checkpoints"


@pytest.fixture(scope="module")
def train(tmp_path_factory, ckpt) -> list[dict]:
    out = tmp_path_factory.mktemp("keras_train")
    proc = horovodrun("keras_train.py", "--ckpt", str(ckpt), out=out)
    ranks = results(out)
    for report in ranks:
        report.update(out=out, stdout=proc.stdout)
    return ranks


@pytest.mark.slow
def test_sparse_embedding_gradients_average_like_one_process(train):
    for rank in train:
        assert rank["sparse"]["moved"] > 1e-3
        assert rank["sparse"]["max_diff"] < ATOL


@pytest.mark.slow
def test_worked_example_reaches_kernel_2_2(train):
    assert [r["worked_example"] for r in train] == [pytest.approx(2.2, abs=1e-12)] * 2


@pytest.mark.slow
def test_only_rank_0_prints_progress(train):
    lines = train[0]["stdout"].splitlines()
    assert any(line.startswith("[0]<stdout>:1/1 - ") and "loss:" in line for line in lines)
    assert not any(line.startswith("[1]<stdout>:") for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("check", ["sgd", "adam", "accumulation"])
def test_fit_matches_one_process_on_the_global_batch(train, check):
    # sgd: base LR 0.05 scaled linearly to 0.1 vs one process at 0.1; adam: no scaling;
    # accumulation: 2 micro-batches of 4 per rank vs one process with batch 16, momentum SGD.
    for report in train:
        assert report[check]["diff"] < ATOL
        assert report[check]["micro_steps"] == 20
    assert train[0][check]["weights"] == train[1][check]["weights"]


@pytest.mark.slow
def test_accumulation_updates_only_every_second_batch(train):
    assert [r["accumulation"]["first_micro_step_diff"] for r in train] == [0.0, 0.0]
    assert all(r["sgd"]["first_micro_step_diff"] > 0 for r in train)


@pytest.mark.slow
def test_fp16_compression_rounds_gradients_but_stays_close(train):
    for report in train:
        assert 0 < report["fp16"]["diff"] < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("check", ["loop_apply_gradients", "loop_apply"])
def test_custom_training_loops_average_gradients(train, check):
    assert [r[check]["diff"] < ATOL for r in train] == [True, True]


@pytest.mark.slow
def test_warmup_ramps_from_base_to_scaled_lr(train):
    for report in train:
        assert report["warmup"]["diff"] < ATOL
        assert report["warmup"]["lr_after"] == pytest.approx(0.1)  # the scaled LR, warmup undone


@pytest.mark.slow
def test_ranks_with_different_seeds_hold_identical_weights(train):
    rank0, rank1 = (r["seeds_and_metrics"] for r in train)
    assert np.max(np.abs(np.subtract(rank0["initial"], rank1["initial"]))) > 0.1
    assert rank0["first_batch"] == rank1["first_batch"]
    assert rank0["final"] == rank1["final"]


@pytest.mark.slow
def test_callbacks_after_averaging_see_the_mean_over_ranks(train):
    rank0, rank1 = (r["seeds_and_metrics"] for r in train)
    for epoch in range(2):
        local0, local1 = rank0["local"][epoch], rank1["local"][epoch]
        assert local0["loss"] != pytest.approx(local1["loss"])
        for metric in ("loss", "mae"):
            mean = (local0[metric] + local1[metric]) / 2
            assert rank0["seen"][epoch][metric] == pytest.approx(mean, abs=1e-12)
            assert rank1["seen"][epoch][metric] == rank0["seen"][epoch][metric]
            assert rank0["history"][metric][epoch] == rank0["seen"][epoch][metric]


@pytest.mark.slow
def test_uneven_data_gives_equal_steps_and_covers_every_sample(train):
    rank0, rank1 = (r["uneven"] for r in train)
    for key in ("ids", "dataset"):
        assert len(rank0[key]) == len(rank1[key]) == 501
        assert set(rank0[key]) | set(rank1[key]) == set(range(1001))
    for key in ("ids_drop", "dataset_drop"):
        assert len(rank0[key]) == len(rank1[key]) == 500
        assert not set(rank0[key]) & set(rank1[key])
    assert [r["fit_steps"] for r in (rank0, rank1)] == [51, 51]
    assert [r["fit_steps_dataset"] for r in (rank0, rank1)] == [51, 51]


@pytest.mark.slow
def test_misuse_is_refused_with_a_clear_error(train):
    messages = train[0]["refusals"]
    assert messages == train[1]["refusals"]
    assert "wrap_optimizer" in messages["unwrapped"]
    assert "jit_compile=False" in messages["jit"]
    assert "LearningRateSchedule" in messages["schedule"]
    assert "not built" in messages["built"]
    assert "already wrapped" in messages["twice"]


@pytest.mark.slow
def test_adapter_does_not_import_torch(train):
    assert [r["torch_imported"] for r in train] == [False, False]


@pytest.mark.slow
def test_wrapped_model_saves_as_a_plain_keras_file(train):
    import keras

    path = train[0]["out"] / "model.keras"
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    optimizer = config["compile_config"]["optimizer"]
    assert (optimizer["module"], optimizer["class_name"]) == ("keras.optimizers", "Adam")
    assert "hvdtrain" not in json.dumps(config)

    saved = train[0]["saved"]
    model = keras.saving.load_model(path)
    weights = np.concatenate([np.ravel(w) for w in model.get_weights()])
    np.testing.assert_array_equal(weights, saved["weights"])
    assert int(model.optimizer.iterations.numpy()) == saved["iterations"] == 2
    assert model.optimizer.gradient_accumulation_steps == 2
    assert (
        float(model.optimizer.learning_rate.numpy())
        == pytest.approx(saved["learning_rate"])
        == 0.02
    )
    probe = model.predict(np.array(saved["probe_x"]), verbose=0).ravel()
    np.testing.assert_allclose(probe, saved["probe_y"], atol=1e-12)


@pytest.mark.slow
def test_checkpoint_resumes_on_another_world_size(train, ckpt, tmp_path):
    first = [r["checkpoint"] for r in train]
    assert [r["meta"] for r in first] == [None, None]  # empty directory: a fresh start
    _assert_truncated_copy_fails_everywhere(first)

    horovodrun("keras_checkpoint.py", "--ckpt", str(ckpt), np=1, out=tmp_path / "one")
    (one,) = results(tmp_path / "one", np=1)
    assert one["meta"] == {
        "step": first[0]["saved_step"],
        "epoch": 0,
        "world_size": 2,
        "config": {"saved_by_size": 2},
        "base_lrs": [pytest.approx(0.01)],
    }
    _assert_same_state(one["loaded"], first[0]["saved"])
    assert first[0]["saved"]["learning_rate"] == pytest.approx(0.02)  # Adam 0.01, linear, 2 ranks
    assert one["loaded"]["learning_rate"] == pytest.approx(0.01)  # re-scaled for 1 rank

    horovodrun("keras_checkpoint.py", "--ckpt", str(ckpt), np=2, out=tmp_path / "two")
    two = results(tmp_path / "two")
    for report in two:
        assert report["meta"]["step"] == one["saved_step"] and report["meta"]["world_size"] == 1
        assert report["meta"]["epoch"] == 1
        _assert_same_state(report["loaded"], one["saved"])
        assert report["loaded"]["learning_rate"] == pytest.approx(0.02)
    _assert_truncated_copy_fails_everywhere(two)


def _assert_same_state(loaded: dict, saved: dict) -> None:
    for got, want in zip(
        loaded["weights"] + loaded["optimizer"], saved["weights"] + saved["optimizer"]
    ):
        np.testing.assert_array_equal(got, want)
    assert len(loaded["optimizer"]) == len(saved["optimizer"]) > 1


def _assert_truncated_copy_fails_everywhere(ranks: list[dict]) -> None:
    for report in ranks:
        assert report["truncated_error"] is not None
        assert report["truncated_error"].startswith(report["truncated_path"])


@pytest.mark.parametrize(
    "argument, allowed",
    [
        ({"lr_scaling": "cubic"}, "'linear', 'sqrt', 'none'"),
        ({"compression": "int8"}, "'none', 'fp16'"),
        ({"op": "max"}, "'average', 'sum', 'adasum'"),
    ],
)
def test_bad_arguments_list_the_allowed_values(argument, allowed):
    import keras

    import hvdtrain.keras as hk

    with pytest.raises(ValueError, match=f"allowed: {allowed}"):
        hk.wrap_optimizer(keras.optimizers.SGD(0.1), **argument)
    with pytest.raises(ValueError, match="accumulation_steps must be >= 1"):
        hk.wrap_optimizer(keras.optimizers.SGD(0.1), accumulation_steps=0)


def test_non_keras3_optimizer_is_a_type_error():
    import tensorflow as tf

    import hvdtrain.keras as hk

    for optimizer in ("adam", tf.compat.v1.train.GradientDescentOptimizer(0.1)):
        with pytest.raises(TypeError, match="needs a Keras 3 optimizer"):
            hk.wrap_optimizer(optimizer)


def test_other_keras_backend_fails_at_init_naming_the_supported_one():
    code = (
        "import hvdtrain.keras as hk\ntry:\n    hk.init()\nexcept ValueError as err:\n"
        "    print(err)\n"
    )
    env = {
        **os.environ,
        "KERAS_BACKEND": "torch",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "KERAS_BACKEND is 'torch', supported: 'tensorflow'" in proc.stdout
