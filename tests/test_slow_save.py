"""Issue 13, item 8: the hang bound never kills a healthy job. Rank 0 saving a checkpoint (torch)
or uploading the model (Keras) for longer than the hang timeout while the other ranks go on to
their next collective: the job finishes, and the checkpoint or model is there. Without
``core.on_main`` that collective stalls and Horovod ends the job (after half the timeout, seen
within three stall checks of a sixth of it each: at most the whole timeout)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hvdtrain.core.checkpoint import CheckpointDir
from tests.launch import REPO, WORKERS, results

HANG_TIMEOUT, SLOW_S = 12, 14  # 12: room for ranks starting seconds apart on a loaded machine


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_a_rank0_save_longer_than_half_the_hang_timeout_is_not_a_hang(tmp_path, framework):
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "HVDTRAIN_", "HOROVOD_"))
        },
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
            "--hang-timeout",
            str(HANG_TIMEOUT),
            str(WORKERS / "slow_save.py"),
            "--out",
            str(tmp_path),
            "--framework",
            framework,
            "--sleep",
            str(SLOW_S),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = results(tmp_path)
    assert [r["steps"] for r in ranks] == [8, 8]  # 2 epochs of 32 samples per rank in batches of 8
    extension = ".pt" if framework == "torch" else ".keras"
    assert [step for step, _ in CheckpointDir(tmp_path / "ckpt", extension).checkpoints()] == [4, 8]
    if framework == "keras":
        assert ranks[0]["model_uri"].startswith("runs:/") and ranks[1]["model_uri"] is None
        assert ranks[0]["loss"] == ranks[1]["loss"]
