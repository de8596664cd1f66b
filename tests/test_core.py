"""The framework-free core: LR rules, sharding policy, checkpoint directory (single process)."""
import math

import numpy as np
import pytest

from hvdtrain.core.checkpoint import CheckpointDir, CheckpointError, CheckpointMeta
from hvdtrain.core.lr import warmup_multiplier
from hvdtrain.core.sharding import samples_per_rank, shard_indices


def _meta(step):
    return CheckpointMeta(step=step, epoch=0, world_size=2, framework="torch", payload="")


def _save(directory, step):
    return directory.save(_meta(step), lambda tmp: open(tmp, "w").write(f"weights {step}"))


def test_checkpoints_keep_the_newest_and_skip_a_broken_one(tmp_path):
    directory = CheckpointDir(tmp_path, ".pt", keep=2)
    for step in (10, 20, 30):
        _save(directory, step)
    assert [step for step, _ in directory.checkpoints()] == [20, 30]
    assert not (tmp_path / "step-00000010.pt").exists()
    (tmp_path / "step-00000030.json").write_text("{not json")
    with pytest.warns(UserWarning, match="step-00000030.json"):
        payload, meta = directory.latest()
    assert meta.step == 20 and payload.read_text() == "weights 20"


def test_a_new_run_in_an_old_runs_directory_is_refused(tmp_path):
    directory = CheckpointDir(tmp_path, ".pt")
    _save(directory, 1200)
    with pytest.raises(CheckpointError, match="later step \\(1200 > 100\\)"):
        _save(directory, 100)
    assert [step for step, _ in directory.checkpoints()] == [1200]  # nothing already written is lost


def test_a_killed_save_leaves_no_checkpoint_that_looks_complete(tmp_path):
    directory = CheckpointDir(tmp_path, ".pt")

    def dies(tmp):
        open(tmp, "w").write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        directory.save(_meta(5), dies)
    assert list(tmp_path.iterdir()) == [] and directory.latest() is None


@pytest.mark.parametrize("n,size,drop_last", [(1001, 2, False), (1001, 2, True), (10, 3, False), (7, 4, True)])
def test_every_rank_gets_the_same_number_of_samples(n, size, drop_last):
    shards = [shard_indices(n, r, size, seed=3, epoch=1, drop_last=drop_last) for r in range(size)]
    want = n // size if drop_last else math.ceil(n / size)
    assert {len(s) for s in shards} == {want} == {samples_per_rank(n, size, drop_last)}
    seen = np.concatenate(shards)
    if drop_last:
        assert len(set(seen)) == len(seen)  # disjoint
    else:
        assert set(seen) == set(range(n))  # every sample at least once
    assert not np.array_equal(shards[0], shard_indices(n, 0, size, seed=3, epoch=2, drop_last=drop_last))


def test_warmup_ramps_from_base_to_scaled():
    assert [warmup_multiplier(s, 4, 2.0) for s in range(6)] == [0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    assert warmup_multiplier(0, 4, 1.0) == 1.0 and warmup_multiplier(0, 0, 2.0) == 1.0
