"""Issue 3: hvdtrain.torch on 2 ranks reproduces single-process training,
resumes on any world size."""

import math
import subprocess
import sys

import numpy as np
import pytest

from tests.launch import horovodrun, results

ATOL = 1e-5


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_suite")
    horovodrun("torch_adapter.py", "--mode", "suite", out=out)
    return results(out)


@pytest.mark.slow
def test_worked_example_of_data_parallel_sgd(suite):
    assert suite[0]["worked"]["local_grad"] == pytest.approx(-10)
    assert suite[1]["worked"]["local_grad"] == pytest.approx(-14)
    for rank in suite:
        assert rank["worked"]["w"] == pytest.approx(2.2)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sgd", "adamw", "adamw_accum2"])
def test_two_ranks_equal_one_process_on_the_full_batch(suite, case):
    r0, r1 = suite[0][case], suite[1][case]
    assert not np.allclose(r0["before_wrap"], r1["before_wrap"])  # seeds differed per rank
    np.testing.assert_array_equal(r0["after_wrap"], r1["after_wrap"])  # broadcast made them equal
    np.testing.assert_array_equal(r0["final"], r1["final"])  # and they stayed equal
    np.testing.assert_allclose(r0["final"], r0["reference"], atol=ATOL, rtol=0)
    assert not np.allclose(r0["final"], r0["after_wrap"], atol=1e-3)  # training really moved them


@pytest.mark.slow
def test_fp16_compression_equals_horovods_without_a_new_gradient(suite):
    for rank in suite:
        ours, theirs = rank["fp16"]["hvdtrain"], rank["fp16"]["horovod"]
        assert ours["grads"] == theirs["grads"]  # bit for bit, every step
        assert ours["final"] == theirs["final"]
        for step in ours["grads"]:  # reduced in float16: each value survives a float16 round trip
            for grad in step:
                values = np.array(grad, dtype=np.float32)
                np.testing.assert_array_equal(values.astype(np.float16).astype(np.float32), values)
        # decompressed into the gradient backward made; Horovod's decompress makes a new one
        assert ours["kept_storage"] == [[True] * 4] * 3
        assert theirs["kept_storage"] == [[False] * 4] * 3
    assert suite[0]["fp16"]["hvdtrain"]["grads"] == suite[1]["fp16"]["hvdtrain"]["grads"]


@pytest.mark.slow
def test_float16_allreduce_sums_as_float32_rounded_to_float16(suite):
    """Horovod's Gloo sums float16 with F16C kernels (a checked edit of the build): the same bits as
    converting to float32, adding and rounding back, in the 8-wide part and the 5-element tail."""
    for rank in suite:
        inputs = np.array(rank["fp16"]["float16_sum"]["inputs"], dtype=np.float32)
        expected = inputs.sum(axis=0).astype(np.float16).astype(np.float32)  # two ranks: one add
        assert rank["fp16"]["float16_sum"]["summed"] == expected.tolist()
        assert inputs.shape == (2, 37)


@pytest.mark.slow
def test_fp16_compression_around_a_reducescatter(suite):
    """A reduce-scatter's shard is smaller than the compressed input: a new float32 tensor, the
    input left alone, the float16 buffer back in the pool for the next compress."""
    for rank in suite:
        shard = rank["fp16"]["shard"]
        assert len(shard["hvdtrain"]) == 5
        assert shard["hvdtrain"] == shard["horovod"]
        assert shard["dtype"] == "torch.float32"
        assert shard["input_unchanged"] is True
        assert shard["buffer_reused"] is True


@pytest.mark.slow
@pytest.mark.parametrize("scaling,scale", [("linear", 2.0), ("sqrt", math.sqrt(2)), ("none", 1.0)])
@pytest.mark.parametrize("warmup", [0, 4])
@pytest.mark.parametrize("with_scheduler", [False, True])
def test_lr_scaling_and_warmup_step_by_step(suite, scaling, scale, warmup, with_scheduler):
    base = 0.1
    want = []
    for step in range(6):
        ramp = (1 + (scale - 1) * step / warmup) / scale if warmup and step < warmup else 1.0
        want.append(base * scale * ramp * (0.5**step if with_scheduler else 1.0))
    got = suite[0]["lr"][f"{scaling}-{warmup}-{with_scheduler}"]
    np.testing.assert_allclose(got["applied"], want, rtol=1e-9)
    np.testing.assert_allclose(got["reported"], want, rtol=1e-9)
    assert got["applied"][0] == pytest.approx(
        base * (0.5**0) * (1 / scale if warmup else 1) * scale
    )


@pytest.mark.slow
def test_uneven_dataset_gives_every_rank_the_same_steps(suite):
    r0, r1 = suite[0]["uneven"], suite[1]["uneven"]
    assert r0["samples"] == r1["samples"] == 501  # ceil(1001 / 2): padded, never short
    assert r0["batches"] == r1["batches"] == 51
    assert r0["steps"] == r1["steps"] == 2 * 51
    assert r0["loss"] == r1["loss"]  # epoch loss is averaged over ranks


@pytest.mark.slow
@pytest.mark.parametrize("save_np,resume_np", [(2, 1), (1, 2)])
def test_resume_on_another_world_size(tmp_path, save_np, resume_np):
    ckpt = tmp_path / "ckpt"
    horovodrun(
        "torch_adapter.py",
        "--mode",
        "save",
        "--ckpt",
        str(ckpt),
        "--steps",
        "5",
        np=save_np,
        out=tmp_path / "save",
    )
    saved = results(tmp_path / "save", np=save_np)[0]
    horovodrun(
        "torch_adapter.py",
        "--mode",
        "resume",
        "--ckpt",
        str(ckpt),
        "--steps",
        "5",
        np=resume_np,
        out=tmp_path / "resume",
    )
    resumed = results(tmp_path / "resume", np=resume_np)
    for rank in resumed:
        loaded = rank["loaded"]
        assert loaded["step"] == 5 and loaded["saved_world_size"] == save_np
        np.testing.assert_array_equal(loaded["weights"], saved["saved"]["weights"])
        assert loaded["lr"] == pytest.approx(saved["saved"]["lr"])  # StepLR state came back too
        assert loaded["adam_steps"] == [5.0]  # AdamW state restored, no phantom steps
        # Same global batch, lr_scaling="none": the resumed run follows the uninterrupted one.
        np.testing.assert_allclose(rank["continued"], saved["continued"], atol=ATOL, rtol=0)
        # With linear scaling the restored LR is re-scaled to this job's world size.
        assert rank["linear_lr"] == pytest.approx(0.01 * 0.5 * resume_np)
        assert "does not fit this model or optimizer" in rank["mismatch"]  # on every rank: no hang


@pytest.mark.slow
def test_truncated_checkpoint_names_the_file_on_every_rank(tmp_path):
    ckpt = tmp_path / "ckpt"
    horovodrun(
        "torch_adapter.py",
        "--mode",
        "save",
        "--ckpt",
        str(ckpt),
        "--steps",
        "2",
        np=1,
        out=tmp_path / "save",
    )
    payload = ckpt / "step-00000002.pt"
    payload.write_bytes(payload.read_bytes()[:500])
    horovodrun(
        "torch_adapter.py",
        "--mode",
        "resume",
        "--ckpt",
        str(payload),
        "--steps",
        "1",
        out=tmp_path / "r",
    )
    for rank in results(tmp_path / "r"):
        assert str(payload) in rank["error"] and "truncated or corrupt" in rank["error"]


BAD_ARGUMENTS = [
    ({"lr_scaling": "cubic"}, "unknown lr_scaling 'cubic'; allowed: 'linear', 'sqrt', 'none'"),
    ({"compression": "int8"}, "unknown compression 'int8'; allowed: 'none', 'fp16'"),
    ({"op": "max"}, "unknown op 'max'; allowed: 'average', 'sum', 'adasum'"),
    ({"accumulation_steps": 0}, "accumulation_steps must be >= 1, got 0"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0, got -1"),
    ({}, "call hvdtrain.torch.init() first"),
]


@pytest.mark.parametrize("kwargs,message", BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_with_allowed_values(kwargs, message):
    code = (
        f"import torch, hvdtrain.torch as ht\nm = torch.nn.Linear(1, 1)\n"
        f"ht.wrap_optimizer(torch.optim.SGD(m.parameters(), lr=0.1), m, **{kwargs!r})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"ValueError: {message}" in proc.stderr.strip().splitlines()[-1]


def test_importing_one_adapter_does_not_import_the_other_framework():
    code = (
        "import sys, hvdtrain.torch, hvdtrain.core.checkpoint; assert 'tensorflow' not in "
        "sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, hvdtrain.core.lr, hvdtrain.core.sharding; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
