"""Issue 15: the Hugging Face examples under ``hvdtrain run -np 2`` with a tiny budget, tracked to a
local MLflow store: far better than chance, one MLflow run, hvdtrain checkpoints of the
transformers model, and a logged model that loads and predicts what the checkpointed one does.

The GPT-2 job runs in two legs, the second resumed from the first's checkpoint with the optimizer
state sharded: one run, its step axis continued.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from hvdtrain.datasets import tagging
from tests.launch import REPO

TAGGING = ("--files", "40", "--train-lines", "4000", "--heldout-lines", "600", "--epochs", "2")
GPT2 = (
    "--max-bytes",
    "300000",
    "--val-bytes",
    "20000",
    "--windows",
    "4800",
    "--block",
    "32",
    "--d-model",
    "64",
    "--layers",
    "2",
    "--heads",
    "2",
    "--lr",
    "3e-3",
    "--warmup-steps",
    "10",
    "--vocab-size",
    "1000",
    "--prompt",
    "import ",
    "--sample-bytes",
    "40",
    "--log-every",
    "5",
)


def hvdtrain_run(script: str, *args: str, cwd: Path, uri: str) -> dict:
    """``hvdtrain run -np 2 SCRIPT ARGS --results`` in ``cwd``; the results rank 0 wrote."""
    results = cwd / "results.json"
    results.unlink(missing_ok=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "hvdtrain"),
            "run",
            "-np",
            "2",
            str(REPO / script),
            *args,
            "--results",
            str(results),
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(results.read_text())


def only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, f"{len(runs)} runs: one job, one run"
    assert runs[0].info.status == "FINISHED"
    return client, runs[0]


def checkpointed(model: torch.nn.Module, directory: Path) -> torch.nn.Module:
    """``model`` with the weights of the newest hvdtrain checkpoint in ``directory``."""
    newest = max(directory.glob("step-*.pt"))
    model.load_state_dict(torch.load(newest, map_location="cpu", weights_only=True)["model"])
    return model.eval()


def logged(uri: str, model_uri: str) -> torch.nn.Module:
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pytorch.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_hf_bert_token_tagging(tmp_path):
    import transformers

    from hvdtrain.torch.hf import Logits

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    found = hvdtrain_run(
        "torch_examples/hf_token_tagging.py",
        *TAGGING,
        "--model-dir",
        "bert",
        "--checkpoint-dir",
        "ckpt",
        "--experiment",
        "hf-bert",
        "--log-model",
        cwd=tmp_path,
        uri=uri,
    )
    assert (found["framework"], found["example"], found["workers"]) == (
        "torch",
        "hf_token_tagging",
        2,
    )
    assert found["metric"] > 0.5, found["report"]  # chance, or all "O", scores ~0 at entity level
    assert (tmp_path / "bert" / "config.json").is_file() and (
        tmp_path / "bert" / "model.safetensors"
    ).is_file()
    client, run = only_run(uri, "hf-bert")
    assert run.info.run_id == found["run_id"] and found["model_uri"]
    assert client.get_metric_history(run.info.run_id, "heldout_f1/micro_avg")[
        0
    ].value == pytest.approx(found["metric"])
    # The logged model predicts what the checkpointed weights do, in a fresh process's loading code.
    bert = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "bert")
    reference = checkpointed(Logits(bert, tagging.PAD), tmp_path / "ckpt")
    ids = torch.from_numpy(
        tagging.load(max_len=128, seed=0, max_files=40, max_heldout_lines=600).heldout_ids[:8]
    ).long()
    with torch.no_grad():
        np.testing.assert_allclose(
            logged(uri, found["model_uri"])(ids).numpy(), reference(ids).numpy(), atol=1e-5
        )


@pytest.mark.slow
def test_hf_gpt2_trains_resumes_sharded_and_logs_one_run(tmp_path):
    import transformers

    from hvdtrain.torch.hf import Logits

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = (
        *GPT2,
        "--model-dir",
        "gpt2",
        "--checkpoint-dir",
        "ckpt",
        "--resume",
        "--experiment",
        "hf-gpt2",
    )
    first = hvdtrain_run(
        "torch_examples/hf_gpt2.py", *common, "--epochs", "1", cwd=tmp_path, uri=uri
    )
    second = hvdtrain_run(
        "torch_examples/hf_gpt2.py",
        *common,
        "--epochs",
        "2",
        "--shard-optimizer-state",
        "--log-model",
        cwd=tmp_path,
        uri=uri,
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "gpt2")
    assert len(tokenizer) == second["vocab_size"] == 1000 and second["chance_ce"] == pytest.approx(
        math.log(1000)
    )
    assert (
        tokenizer.decode(tokenizer("def f(x):\n    return x")["input_ids"])
        == "def f(x):\n    return x"
    )
    for found in (first, second):
        assert (found["example"], found["workers"]) == ("hf_gpt2", 2)
        assert found["val_loss"] < 0.8 * found["chance_ce"] and found["ratio"] < 0.95, found
        assert found["sample"].startswith("import ")
    assert second["val_loss"] < first["val_loss"] - 0.1  # the second epoch continued from the first
    client, run = only_run(uri, "hf-gpt2")
    assert first["run_id"] == second["run_id"] == run.info.run_id
    assert first["model_uri"] is None and second["model_uri"]  # --log-model on the second leg only
    assert (
        run.data.params["shard_optimizer_state"] == "False"
        and run.data.params["leg2.shard_optimizer_state"] == "True"
    )
    # 4800 windows / (16 per worker x 2) = 150 steps an epoch, logged every 5: continued, no
    # repeats.
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(
        range(5, 301, 5)
    )
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_loss")] == [0, 1]
    gpt2 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")
    reference = checkpointed(Logits(gpt2), tmp_path / "ckpt")
    ids = torch.randint(
        0, 1000, (2, 32), generator=torch.Generator().manual_seed(0), dtype=torch.int32
    )
    with torch.no_grad():
        np.testing.assert_allclose(
            logged(uri, second["model_uri"])(ids).numpy(), reference(ids).numpy(), atol=1e-5
        )
