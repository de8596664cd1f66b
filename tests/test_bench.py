"""``hvdtrain bench`` at a toy size: the report's schema and every section and row (not speed)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from hvdtrain.bench import report
from hvdtrain.cli import bench as bench_cli
from hvdtrain.core import tuning
from hvdtrain.core.errors import UsageError

TORCH_LOOPS = {"hvdtrain", "raw horovod", "ddp"}
KERAS_LOOPS = {"hvdtrain fit", "raw horovod fit", "hvdtrain loop", "raw horovod loop"}
BACKENDS = {
    "horovod.torch",
    "horovod.torch, hvdtrain's wait",
    "horovod.tensorflow",
    "torch.distributed",
    "horovod.torch, fp16, hvdtrain's wait",
    "horovod.torch, hvdtrain's fp16",
    "horovod.tensorflow, fp16",
    "torch.distributed, fp16 copy",
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hvdtrain",
            "bench",
            "--quick",
            "--windows",
            "1",
            "--sizes",
            "4K,8K",
            "--fusion",
            "3x4K",
            "--parts",
            "allreduce,torch,keras",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "allreduce_busbw.png").stat().st_size > 1000
    assert (out / "step_throughput.png").stat().st_size > 1000
    return {"report": json.loads((out / "bench.json").read_text()), "stdout": proc.stdout}


@pytest.mark.slow
def test_report_header(bench):
    result = bench["report"]
    assert result["schema"] == report.SCHEMA
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert {"horovod", "torch", "keras"} <= set(result["machine"]["versions"])
    assert [launch["np"] for launch in result["launches"]] == [1, 2]
    for launch in result["launches"]:
        assert len(launch["load_average"]["before"]) == 3 and launch["wall_s"] > 0
        # hvdtrain's defaults reached the workers (user settings win, none given here)
        for key, value in tuning.HOROVOD_DEFAULTS.items():
            assert launch["horovod_env"][key] == value


@pytest.mark.slow
def test_allreduce_rows(bench):
    rows = bench["report"]["allreduce"]
    assert {(r["backend"], r["size_bytes"]) for r in rows} == {
        (b, s) for b in BACKENDS for s in (4096, 8192)
    }
    for row in rows:
        assert row["np"] == 2 and len(row["per_rank_time_s"]) == 2
        assert row["time_s"] == pytest.approx(sum(row["per_rank_time_s"]) / 2)
        # 2(N-1)/N = 1
        assert row["busbw_GBps"] == pytest.approx(row["size_bytes"] / row["time_s"] / 1e9)
    modes = {r["mode"] for r in bench["report"]["fusion"]}
    assert {
        "horovod.torch one by one",
        "horovod.torch grouped_allreduce",
        "horovod.tensorflow grouped_allreduce",
        "torch.distributed one by one",
        "torch.distributed flattened",
    } <= modes
    assert all(r["tensors"] == 3 and r["tensor_bytes"] == 4096 for r in bench["report"]["fusion"])


@pytest.mark.slow
def test_step_rows_ratios_and_scaling(bench):
    result = bench["report"]
    found = {(r["framework"], r["model"], r["loop"], r["np"]) for r in result["steps"]}
    expected = {
        ("torch", m, loop, np) for m in ("mlp", "gpt") for loop in TORCH_LOOPS for np in (1, 2)
    }
    expected |= {
        ("keras", m, loop, np) for m in ("mlp", "gpt") for loop in KERAS_LOOPS for np in (1, 2)
    }
    # no Horovod, no allreduce
    plain = {("torch", m, "plain torch", np) for m in ("mlp", "gpt") for np in (1, 2)}
    assert found == expected | plain
    for row in result["steps"]:
        # the total is the sum of every rank's own throughput
        assert row["samples_per_s_total"] == pytest.approx(
            sum(row["batch_per_rank"] / t for t in row["per_rank_step_s"])
        )
        assert len(row["per_rank_step_s"]) == row["np"]
    ratios = {
        (r["framework"], r["model"], r["np"], r["numerator"], r["denominator"])
        for r in result["ratios"]
    }
    assert ("torch", "mlp", 2, "hvdtrain", "raw horovod") in ratios and (
        "torch",
        "gpt",
        2,
        "hvdtrain",
        "ddp",
    ) in ratios
    assert ("keras", "gpt", 2, "hvdtrain fit", "raw horovod fit") in ratios
    assert {("torch", m, 1, "hvdtrain", "plain torch") for m in ("mlp", "gpt")} <= ratios
    assert set(result["targets"]["adapter_vs_plain_torch_step_time"]) == {
        "torch/mlp/np1",
        "torch/gpt/np1",
    }
    assert {(r["framework"], r["model"], r["loop"]) for r in result["scaling"]} == {
        (f, m, loop) for f, m, loop, _ in expected
    }
    assert set(result["targets"]["horovod_busbw_over_torch_distributed"]) == {
        "horovod.torch",
        "horovod.torch, hvdtrain's wait",
        "horovod.tensorflow",
    }
    # issue 27: torch.distributed's float16 copy over each adapter's fp16, at the largest size
    at = {r["backend"]: r["windows_s"] for r in result["allreduce"] if r["size_bytes"] == 8192}
    [dist_fp16], [torch_fp16], [keras_fp16] = (
        at["torch.distributed, fp16 copy"],
        at["horovod.torch, hvdtrain's fp16"],
        at["horovod.tensorflow, fp16"],
    )
    assert result["targets"]["hvdtrain_fp16_speed_over_torch_distributed_fp16"] == {
        f"{framework}/np2": [dist_fp16 / ours] * 3 + ["too few windows"]
        for framework, ours in (("torch", torch_fp16), ("keras", keras_fp16))
    }
    assert result["targets"]["hvdtrain_fp16_not_below_torch_distributed_fp16"] is False
    assert "fp16, window by window" in bench["stdout"]
    # every ratio is taken window by window, judged against 1 from 3 windows on
    for r in result["ratios"]:
        assert r["ratio_min"] <= r["step_time_ratio"] <= r["ratio_max"] and len(r["ratios"]) == 1
        assert r["vs_1"] == "too few windows"  # one window: no spread, no verdict
    assert "Step-time ratios" in bench["stdout"] and "Allreduce" in bench["stdout"]


@pytest.fixture(scope="module")
def zero_bench(tmp_path_factory) -> dict:
    """The zero part alone, torch and Keras: its memory measurements start a job per framework,
    model, mode and world size."""
    out = tmp_path_factory.mktemp("zero_bench")
    # 2 step launches (np=1, 2) and 10 memory launches at np=2: 2 models x (torch: unsharded,
    # sharded, sharded-grads; Keras: unsharded, sharded)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hvdtrain",
            "bench",
            "--quick",
            "--windows",
            "1",
            "--parts",
            "zero",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "zero_memory.png").stat().st_size > 1000
    return {"report": json.loads((out / "bench.json").read_text()), "stdout": proc.stdout}


# The quick MLP (shapes.zero_mlp_shape): 8 x Linear(32, 32) (Keras: Dense(32)), one bucket of 8448
# parameters in both frameworks.
QUICK_MLP_PARAMETERS = 8 * (32 * 32 + 32)


def keras_gpt_parameters(block: int, d_model: int, layers: int, vocab: int = 256) -> int:
    """models.keras_gpt: byte and position embeddings; per block two LayerNorms, attention's four
    d x d projections with biases and the 4x MLP; a final LayerNorm and the head."""
    d = d_model
    per_block = 2 * 2 * d + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + block * d + layers * per_block + 2 * d + (d * vocab + vocab)


# shapes.zero_gpt_shape(quick=True): block 16, d_model 32, 1 layer
QUICK_KERAS_GPT_PARAMETERS = keras_gpt_parameters(block=16, d_model=32, layers=1)
# Keras AdamW's variables beside its two slots per variable: iterations (int64), the learning rate
KERAS_ADAMW_SCALARS = 8 + 4


def adamw_state_bytes(buckets: list[int], np: int, per_bucket: int = 0, fixed: int = 0) -> int:
    """A rank's AdamW state from the flat plan (core.partition.plan): each bucket of b elements
    padded to a multiple of N, the rank keeping two float32 moments of ceil(b / N) elements per
    bucket, plus ``per_bucket`` bytes per bucket (torch: a float32 step counter per shard tensor)
    and ``fixed`` bytes (Keras: its scalars). At np=1 that is the unsharded state too (Keras)."""
    return sum(2 * 4 * -(-b // np) + per_bucket for b in buckets) + fixed


def sharded_state_bytes(framework: str, parameters: int, np: int) -> int:
    """Every quick model is one bucket: in torch one param group; in Keras AdamW's weight-decay
    group (Keras decays every variable unless told otherwise; the excluded group is empty)."""
    if framework == "torch":
        return adamw_state_bytes([parameters], np, per_bucket=4)
    return adamw_state_bytes([parameters], np, fixed=KERAS_ADAMW_SCALARS)


ZERO_MODES = {"torch": ["unsharded", "sharded", "sharded-grads"], "keras": ["unsharded", "sharded"]}


@pytest.mark.slow
def test_optimizer_state_sharding_rows(zero_bench):
    bench = zero_bench
    result = bench["report"]
    assert result["zero_modes"] == ZERO_MODES
    assert [(r["framework"], r["model"], r["np"], r["mode"]) for r in result["zero"]] == [
        (fw, model, np, mode)
        for np in (1, 2)
        for fw, modes in ZERO_MODES.items()
        for model in ("gpt", "mlp")
        for mode in modes[1:]
    ]
    for row in result["zero"]:
        assert (
            row["per_rank_state_bytes"]
            == [sharded_state_bytes(row["framework"], row["parameters"], row["np"])] * row["np"]
        )
        assert len(row["step_ratios"]) == 1 and row["step_vs_1"] == "too few windows"
        assert row["step_ratio_min"] == row["step_ratio"] == row["step_ratio_max"]
    mlp = [r for r in result["zero"] if r["model"] == "mlp"]
    assert {r["parameters"] for r in mlp} == {QUICK_MLP_PARAMETERS}
    # unsharded torch: two moments per parameter and 16 counters (8 weights, 8 biases)
    assert {r["state_bytes_unsharded"] for r in mlp if r["framework"] == "torch"} == {
        8 * QUICK_MLP_PARAMETERS + 16 * 4
    }
    # unsharded Keras: two moments per parameter, iterations and the learning rate
    keras_rows = {(r["model"], r["np"]): r for r in result["zero"] if r["framework"] == "keras"}
    assert keras_rows["gpt", 1]["parameters"] == QUICK_KERAS_GPT_PARAMETERS
    for row in keras_rows.values():
        assert row["state_bytes_unsharded"] == 8 * row["parameters"] + KERAS_ADAMW_SCALARS
    # exact numbers at np=2: 8 x ceil(P / 2) + 12
    assert keras_rows["mlp", 2]["per_rank_state_bytes"] == [8 * 4224 + 12] * 2
    assert keras_rows["gpt", 2]["per_rank_state_bytes"] == [8 * 14960 + 12] * 2
    assert keras_rows["gpt", 2]["state_bytes_unsharded"] == 8 * 29920 + 12

    memory = result["zero_memory"]
    assert [(r["framework"], r["model"], r["np"], r["mode"]) for r in memory] == [
        (fw, model, 2, mode)
        for fw, modes in ZERO_MODES.items()
        for model in ("gpt", "mlp")
        for mode in modes
    ]
    by = {(r["framework"], r["model"], r["mode"]): r for r in memory}
    for row in memory:
        # Keras: one sample per whole step (forward, backward and update are one tf.function call)
        phases = ["forward", "backward", "step"] if row["framework"] == "torch" else ["step"]
        assert row["steps"] == 3 and row["phases"] == phases
        assert len(row["per_rank_rss_phase_bytes"]) == len(row["per_rank_peak_rss_bytes"]) == 2
        for samples, peak, before in zip(
            row["per_rank_rss_phase_bytes"],
            row["per_rank_peak_rss_bytes"],
            row["per_rank_rss_before_bytes"],
        ):
            # no peak >= max(samples): the kernel's RSS counters lag by a few pages, so a sample
            # read after the last step can exceed the ru_maxrss read after it
            assert len(samples) == 3 * len(phases) and min(samples) > 0 and peak >= before > 0
        assert row["peak_rss_bytes_max"] == max(row["per_rank_peak_rss_bytes"])
        unsharded = by[row["framework"], row["model"], "unsharded"]
        if row["mode"] == "unsharded":
            assert "meets_goal" not in row
            if row["framework"] == "keras":  # the same bytes as the step launch's unsharded
                assert row["state_bytes_max"] == 8 * row["parameters"] + KERAS_ADAMW_SCALARS
            continue
        assert isinstance(row["meets_goal"], bool)
        assert row == {**row, **report.memory_goal(unsharded, row)}
        assert row["state_saved_bytes"] == unsharded["state_bytes_max"] - sharded_state_bytes(
            row["framework"], row["parameters"], 2
        )
    mlp_unsharded = by["torch", "mlp", "unsharded"]
    assert mlp_unsharded["state_bytes_max"] == 8 * QUICK_MLP_PARAMETERS + 16 * 4
    assert mlp_unsharded["grad_bytes_max"] == 4 * QUICK_MLP_PARAMETERS  # every .grad, float32
    # one bucket: stage 1 holds its padded flat gradient buffer, stage 2 only this rank's shard
    shard = -(-QUICK_MLP_PARAMETERS // 2)
    assert by["torch", "mlp", "sharded"]["grad_bytes_max"] == 4 * 2 * shard
    assert by["torch", "mlp", "sharded-grads"]["grad_bytes_max"] == 4 * shard
    # Keras is stage 1 only: both modes hold every gradient the tape returns
    for model in ("gpt", "mlp"):
        assert (
            by["keras", model, "sharded"]["grad_bytes_max"]
            == by["keras", model, "unsharded"]["grad_bytes_max"]
        )
    assert by["keras", "mlp", "unsharded"]["grad_bytes_max"] == 4 * QUICK_MLP_PARAMETERS
    assert result["targets"]["zero_peak_rss_goal"] == {
        f"{r['framework']}/{r['model']}/np2/{r['mode']}": r["meets_goal"]
        for r in memory
        if r["mode"] != "unsharded"
    }
    assert result["targets"]["zero_peak_rss_goal_met"] == all(
        r["meets_goal"] for r in memory if r["mode"] != "unsharded"
    )
    assert {k.split("/")[0] for k in result["targets"]["zero_step_ratio"]} == {"torch", "keras"}
    assert result["targets"]["zero_step_ratio_at_most_1_1"] is False  # one window: no claim
    assert "Optimizer sharding (ZeRO)" in bench["stdout"] and "Memory per rank" in bench["stdout"]
    assert "keras  mlp     2 sharded" in bench["stdout"]


def test_memory_goal_counts_gradients_for_stage_2_only():
    mib = 1 << 20
    unsharded = {"peak_rss_bytes_max": 1000 * mib, "state_bytes_max": 256 * mib}
    unsharded["grad_bytes_max"] = 128 * mib

    def row(mode: str, peak: int, state: int, grads: int) -> dict:
        return {
            "mode": mode,
            "peak_rss_bytes_max": peak * mib,
            "state_bytes_max": state * mib,
            "grad_bytes_max": grads * mib,
        }

    # stage 1: limit 1000 - 0.8 x 128 = 897.6 MiB; the gradients it saves do not count
    assert report.memory_goal(unsharded, row("sharded", 897, 128, 0)) == {
        "state_saved_bytes": 128 * mib,
        "grad_saved_bytes": 128 * mib,
        "peak_saved_bytes": 103 * mib,
        "peak_limit_bytes": 1000 * mib - 0.8 * 128 * mib,
        "meets_goal": True,
    }
    assert report.memory_goal(unsharded, row("sharded", 898, 128, 0))["meets_goal"] is False
    # stage 2: limit 1000 - 0.8 x (128 + 64) = 846.4 MiB
    assert report.memory_goal(unsharded, row("sharded-grads", 846, 128, 64))["meets_goal"] is True
    assert report.memory_goal(unsharded, row("sharded-grads", 847, 128, 64))["meets_goal"] is False
    # a peak above the unsharded one saves a negative amount and misses the goal
    worse = report.memory_goal(unsharded, row("sharded", 1155, 128, 128))
    assert worse["peak_saved_bytes"] == -155 * mib and worse["meets_goal"] is False


def test_bad_input_is_one_line_error():
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    for argv, message in (
        (["--sizes", "3K1"], "bad size"),
        (["--sizes", "6"], "multiple of 4"),
        (["--parts", "mpi"], "allowed: allreduce, torch, keras, zero"),
        (["--np", "0"], "--np must be >= 1"),
        (["--np", "2,x"], "bad --np '2,x'"),
        (["--env", "NOEQUALS"], "KEY=VALUE"),
        (["--fusion", "x64K"], "COUNTxSIZE"),
        (["--hosts", "1"], "--hosts must be >= 2, got 1"),
        (["--hosts", "2", "--np", "2"], "--np and --hosts exclude each other"),
        (["--hosts", "2", "--link-rate", "fast"], "bad --link-rate 'fast'"),
        (["--steps", "0"], "--steps must be >= 1"),
    ):
        with pytest.raises(UsageError, match=message):
            bench_cli.settings(parser.parse_args(argv))


def test_tuning_defaults_yield_to_user_settings():
    defaults = {"HOROVOD_CYCLE_TIME": "0.5", "HOROVOD_CACHE_CAPACITY": "2048"}
    environ = {"HOROVOD_CYCLE_TIME": "7"}
    assert tuning.apply_horovod_defaults(environ, defaults) == {
        "HOROVOD_CYCLE_TIME": "7",
        "HOROVOD_CACHE_CAPACITY": "2048",
    }
    assert environ == {"HOROVOD_CYCLE_TIME": "7", "HOROVOD_CACHE_CAPACITY": "2048"}
    switched_off = {tuning.SWITCH: "0"}
    assert tuning.apply_horovod_defaults(switched_off, defaults) == {} and switched_off == {
        tuning.SWITCH: "0"
    }
