"""Issue 8, resume anywhere: a job stopped and resumed on 2, then 1, then 2 workers is one MLflow
run whose step axis, epochs, learning rate, world size and loss continue, for both frameworks.

Each leg runs a digits example with the same flags except ``-np`` and ``--epochs``, ``--resume``
included from the first leg on (automatic resume: the first leg finds no checkpoint, warns and
starts from scratch). Leg 1 trains epoch 0 on 2 workers, leg 2 epoch 1 on 1 worker, leg 3
epoch 2 on 2 workers, all tracked to one sqlite store.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from hvdtrain import tracking
from hvdtrain.core import args as cli
from hvdtrain.datasets import digits
from tests.launch import REPO, run_script

SAMPLES, BATCH, BASE_LR, SEED = 300, 32, 0.003, 1
LEGS = ((2, 1), (1, 2), (2, 3))  # (workers, --epochs)
NOTHING_LEFT = (1, 3)  # run again after the legs: the checkpoint is at --epochs already


@dataclass
class Job:
    client: MlflowClient
    run: Run
    outputs: list[str]  # each leg's output, then the output of the job with nothing left
    steps: list[int]  # optimizer steps each leg trained
    results: list[dict]  # what each job wrote with --results
    root: Path

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of a metric in logging order."""
        metrics = self.client.get_metric_history(self.run.info.run_id, key)
        return [(m.step, m.value) for m in sorted(metrics, key=lambda m: (m.timestamp, m.step))]

    def leg_of(self, step: int) -> int:
        """The leg (0-based) that logged ``step``:
        leg k logs the steps after the previous legs' total."""
        return next(k for k in range(len(LEGS)) if step <= sum(self.steps[: k + 1]))


def steps_per_epoch(workers: int) -> int:
    """Each worker's shard is ceil(n / workers) samples, in batches of BATCH."""
    samples = len(digits.load_splits(seed=SEED, train_samples=SAMPLES).train)
    return math.ceil(samples / (BATCH * workers))


@pytest.fixture(scope="module", params=["torch_examples/digits.py", "tf_examples/digits.py"])
def job(request, tmp_path_factory) -> Job:
    root = tmp_path_factory.mktemp("resume")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.prepare_local_store()
    outputs = []
    for leg, (workers, epochs) in enumerate((*LEGS, NOTHING_LEFT)):
        proc = run_script(
            REPO / request.param,
            "--train-samples",
            str(SAMPLES),
            "--batch-size",
            str(BATCH),
            "--lr",
            str(BASE_LR),
            "--seed",
            str(SEED),
            "--epochs",
            str(epochs),
            "--checkpoint-dir",
            str(root / "ckpt"),
            "--resume",
            "--log-every",
            "1",
            "--experiment",
            "resumed",
            "--results",
            str(root / f"results-{leg}.json"),
            np=workers,
            env={"MLFLOW_TRACKING_URI": uri},
            cwd=root,
            timeout=180,
        )
        outputs.append(proc.stdout + proc.stderr)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert len(runs) == 1, f"{len(runs)} runs: a resumed job must continue its run"
    steps = [steps_per_epoch(workers) for workers, _ in LEGS]  # one epoch per leg
    results = [json.loads((root / f"results-{leg}.json").read_text()) for leg in range(4)]
    return Job(client, runs[0], outputs, steps, results, root)


@pytest.mark.slow
def test_one_run_over_three_legs_with_each_legs_params(job):
    run = job.run
    # the job with nothing left to train is the run's leg 4
    assert run.info.status == "FINISHED" and run.data.tags["hvdtrain.leg"] == "4"
    params = run.data.params
    assert (
        params["world_size"],
        params["leg2.world_size"],
        params["epochs"],
        params["leg2.epochs"],
        params["leg3.epochs"],
    ) == ("2", "1", "1", "2", "3")
    assert (params["scaled_lr"], params["leg2.scaled_lr"]) == (str(2 * BASE_LR), str(BASE_LR))
    assert "leg3.world_size" not in params  # the same as the first leg's


@pytest.mark.slow
def test_step_axis_continues_without_gaps_or_duplicates(job):
    total = sum(job.steps)
    for key in ("loss", "lr"):
        assert [step for step, _ in job.history(key)] == list(range(1, total + 1))  # --log-every 1
    assert [step for step, _ in job.history("epoch_loss")] == [0, 1, 2]
    assert [step for step, _ in job.history("val_loss")] == [0, 1, 2]
    # the job with nothing left to train logs no second point at the last step
    assert [step for step, _ in job.history("test_accuracy")] == [
        job.steps[0],
        sum(job.steps[:2]),
        total,
    ]


@pytest.mark.slow
def test_a_job_with_nothing_left_says_so_and_invents_no_throughput(job):
    """Issue 25: ``--resume --epochs 3`` on a checkpoint at epoch 3 trains nothing, says so, and
    neither logs a test point again nor reports a samples/s (it counted the earlier legs)."""
    output = job.outputs[-1]
    said = [
        line.split(">:", 1)[-1]  # horovodrun's [0]<stderr>: prefix off
        for line in output.splitlines()
        if "nothing left to train" in line
    ]
    assert said == [
        f"hvdtrain: nothing left to train: {job.root / 'ckpt'} is at epoch 3 (step "
        f"{sum(job.steps)}) and epochs=3; pass a larger --epochs to train on"
    ], output[-3000:]
    assert job.results[-1]["samples_per_sec"] is None
    assert all(r["samples_per_sec"] > 0 for r in job.results[:-1])


@pytest.mark.slow
def test_lr_is_rescaled_for_each_legs_world_size(job):
    for step, lr in job.history("lr"):
        workers = LEGS[job.leg_of(step)][0]
        # linear scaling: 1 worker, half the LR
        assert lr == pytest.approx(BASE_LR * workers), f"step {step}"


@pytest.mark.slow
def test_world_size_is_logged_at_the_start_of_each_leg(job):
    starts = [0, job.steps[0], sum(job.steps[:2])]
    assert job.history("world_size") == [(starts[0], 2), (starts[1], 1), (starts[2], 2)]
    assert {k: v for k, v in job.run.data.tags.items() if k.startswith("hvdtrain.world_size.")} == {
        f"hvdtrain.world_size.step-{step:08d}": str(size) for step, size in zip(starts, (2, 1, 2))
    }


@pytest.mark.slow
def test_loss_continues_from_the_checkpoint(job):
    """Restarted from scratch, leg 2 would begin at the untrained loss (about ln 10 = 2.30)."""
    loss = dict(job.history("loss"))
    first_of_leg = [loss[1], loss[job.steps[0] + 1], loss[sum(job.steps[:2]) + 1]]
    epoch_loss = [value for _, value in job.history("epoch_loss")]
    print(f"first step loss of each leg {first_of_leg}, epoch losses {epoch_loss}")
    assert first_of_leg[1] < first_of_leg[0] - 0.1 and first_of_leg[2] < first_of_leg[1] - 0.1
    assert epoch_loss[2] < epoch_loss[1] < epoch_loss[0]


@pytest.mark.slow
def test_resume_with_no_checkpoint_warns_once_and_trains_from_scratch(job):
    first, later = job.outputs[0], job.outputs[1:]
    warnings = [line for line in first.splitlines() if "training from scratch" in line]
    # rank 0 only, naming the directory
    assert len(warnings) == 1 and "ckpt" in warnings[0], first[-3000:]
    assert all("training from scratch" not in output for output in later)
    assert job.history("loss")[0][0] == 1  # the first leg's first step


def test_checkpoint_every_needs_a_checkpoint_dir(capsys):
    parser = cli.training_parser("test", epochs=1, batch_size=8, lr=0.1)
    assert (
        cli.parse(parser, ["--checkpoint-dir", "c", "--checkpoint-every", "50"]).checkpoint_every
        == 50
    )
    assert cli.parse(parser, []).checkpoint_every is None and cli.parse(parser, []).log_every == 10
    for argv, message in (
        (["--checkpoint-every", "50"], "--checkpoint-every needs --checkpoint-dir"),
        (["--checkpoint-dir", "c", "--checkpoint-every", "0"], "must be >= 1, got 0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.parse(parser, argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
