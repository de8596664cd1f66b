"""Issue 13, item 5: one ``fit`` contract for both adapters: the same parameters, one sharding rule
(each epoch every rank takes its share of a fresh permutation, ``core.sharding``), and mid-epoch
checkpoints that resume at the exact batch: a job stopped after step 5 and resumed from its step-3
checkpoint ends with the weights of the same job run through (2 ranks, Adam, both frameworks)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hvdtrain.core.sharding import shard_indices
from tests.launch import REPO, horovodrun, results
from tests.workers.fit_contract import BATCH, EPOCHS, EVERY, SAMPLES, SEED

SHARED = (
    "epochs",
    "checkpoint_dir",
    "checkpoint_every",
    "resume",
    "tracker",
    "log_every",
    "config",
    "progress",
    "commit_every",
)


def test_both_fits_take_the_same_training_parameters():
    code = (
        "import inspect, json, hvdtrain.torch as ht, hvdtrain.keras as hk\n"
        "print(json.dumps({name: {p.name: repr(p.default) for p in "
        "inspect.signature(fit).parameters.values() if p.kind is p.KEYWORD_ONLY} for name, fit in "
        "(('torch', ht.fit), ('keras', hk.fit))}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {name: found["torch"][name] for name in SHARED} == {
        name: found["keras"][name] for name in SHARED
    }


@pytest.fixture(scope="module", params=["torch", "keras"])
def job(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"fit_{request.param}")
    horovodrun("fit_contract.py", "--framework", request.param, out=out, timeout=600)
    return results(out)


@pytest.mark.slow
def test_every_epoch_each_rank_takes_its_share_of_a_new_permutation(job):
    for epoch in range(EPOCHS):
        for rank, report in enumerate(job):
            assert (
                report["order"][str(epoch)]
                == shard_indices(SAMPLES, rank, 2, seed=SEED, epoch=epoch).tolist()
            )
    first, second = (set(job[0]["order"][str(e)]) for e in range(EPOCHS))
    assert first != second  # rank 0's share changed: the shards reshuffle across ranks


@pytest.mark.slow
def test_a_job_resumed_mid_epoch_ends_like_the_job_run_through(job):
    for report in job:
        assert report["checkpoint"] == {
            "step": EVERY,
            "epoch": 0,
            "epoch_samples": EVERY * BATCH * 2,
        }
        np.testing.assert_allclose(report["resumed"], report["whole"], rtol=0, atol=1e-12)
    assert job[0]["resumed"] == job[1]["resumed"]
