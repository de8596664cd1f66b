"""Issue 13, item 1: data parallelism cannot switch off silently. 2-rank jobs (Gloo) with the
gradient averaging broken on purpose stop at the first check with one line naming the step and
the likely cause; a healthy job runs through the same checks (``HVDTRAIN_TRIPWIRE_EVERY=2``:
after steps 1, 2, 4 and 6). The cost of the checks is measured in ``hvdtrain bench --parts
overhead`` (BENCHMARKS.md), not here."""

import pytest

from hvdtrain.core import tripwire
from tests import docs_table
from tests.launch import horovodrun, results
from tests.workers.tripwire import STEPS

EVERY = {"HVDTRAIN_TRIPWIRE_EVERY": "2"}
ROWS = {
    "unreduced": "an update that skipped the gradient allreduce (torch: step() inside "
    "skip_synchronize(); Keras: an optimizer that no longer calls _clip_gradients)",
    "diverged": "a rank that changed its weights by itself",
}
ERROR = "hvdtrain: error: "
CAUSES = {
    (
        "torch",
        "unreduced",
    ): "DataParallelError: data parallelism is off at step 1: every rank updated the weights "
    "without averaging gradients; likely cause: the optimizer stepped without hvdtrain's "
    "gradient allreduce",
    (
        "keras",
        "unreduced",
    ): "DataParallelError: data parallelism is off at step 1: every rank updated the weights "
    "without averaging gradients; likely cause: Keras did not call "
    "Optimizer._clip_gradients on its update path",
    (
        "torch",
        "diverged",
    ): "DataParallelError: data parallelism is off at step 1: rank 1 holds different weights "
    "from rank 0 in 1 of 4 tensors (first: 0.bias); likely cause: a rank changed its "
    "weights outside the optimizer step",
    (
        "keras",
        "diverged",
    ): "DataParallelError: data parallelism is off at step 1: rank 1 holds different weights "
    "from rank 0 in 1 of 4 tensors (first: drifting_model/dense/bias); likely cause: a rank's "
    "update did not use the averaged gradients",
}


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_healthy_training_passes_every_check(tmp_path, framework):
    horovodrun("tripwire.py", "--framework", framework, "--fault", "none", out=tmp_path, env=EVERY)
    assert [r["finished"] for r in results(tmp_path)] == [list(range(1, STEPS + 1))] * 2
    assert [r["error"] for r in results(tmp_path)] == [None, None]


@pytest.mark.slow
@pytest.mark.parametrize("framework,fault", sorted(CAUSES))
def test_broken_gradient_averaging_stops_the_job_at_the_first_check(tmp_path, framework, fault):
    proc = horovodrun(
        "tripwire.py",
        "--framework",
        framework,
        "--fault",
        fault,
        out=tmp_path,
        env=EVERY,
        check=False,
    )
    assert proc.returncode == 1
    ranks = results(tmp_path)
    assert [r["finished"] for r in ranks] == [[], []]  # stopped in step 1, on every rank alike
    assert ranks[0]["error"] == ranks[1]["error"] and ranks[0]["error"].startswith(
        CAUSES[framework, fault]
    )
    lines = [
        line.split(ERROR, 1)[1]
        for line in (proc.stdout + proc.stderr).splitlines()
        if ERROR in line
    ]
    assert lines == [ranks[0]["error"].split(": ", 1)[1]]  # one line, from rank 0
    row = docs_table.row(ROWS[fault])
    assert row.check(proc.stdout + proc.stderr, proc.returncode) == ERROR + lines[0]


def test_checks_come_after_the_first_step_and_at_the_interval():
    assert [s for s in range(1, 12) if tripwire.due(s, 5)] == [1, 5, 10]
    assert [s for s in range(1, 12) if tripwire.due(s, 0)] == [1]
    assert (
        tripwire.interval({}) == tripwire.DEFAULT_EVERY
        and tripwire.interval({tripwire.EVERY_ENV: "7"}) == 7
    )
    with pytest.raises(
        tripwire.UserError, match="HVDTRAIN_TRIPWIRE_EVERY must be a whole number of steps >= 0"
    ):
        tripwire.interval({tripwire.EVERY_ENV: "-1"})
