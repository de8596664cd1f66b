"""Issue 5: a 2-rank Keras job tracked through the same tracker:
one run, params, histories, model."""

import numpy as np
import pytest

from tests.launch import horovodrun, results
from tests.mlflow_server import mlflow_server_session  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def keras_job(tmp_path_factory, mlflow_server_session):
    server = mlflow_server_session
    if not server.running:
        server.start()
    out = tmp_path_factory.mktemp("keras_tracking")
    horovodrun(
        "tracking_keras.py",
        "--experiment",
        "keras-normal",
        out=out,
        env={"MLFLOW_TRACKING_URI": server.uri},
    )
    return server, results(out)


@pytest.mark.slow
def test_keras_job_makes_one_run_with_data_parallel_params(keras_job):
    server, ranks = keras_job
    client = server.client()
    assert ranks[0]["run_id"] and ranks[0]["run_id"] == ranks[1]["run_id"]
    [run] = client.search_runs([client.get_experiment_by_name("keras-normal").experiment_id])
    assert run.info.run_id == ranks[0]["run_id"] and run.info.status == "FINISHED"
    params = run.data.params
    assert (
        params["framework"],
        params["world_size"],
        params["base_lr"],
        params["scaled_lr"],
        params["global_batch_size"],
    ) == ("keras", "2", "0.05", "0.1", "16")
    assert params["keras_version"] and params["tensorflow_version"] and params["horovod_version"]
    assert "api_token" not in params and params["model.kind"] == "dense"


@pytest.mark.slow
def test_keras_metric_histories(keras_job):
    server, ranks = keras_job
    client, run_id = server.client(), ranks[0]["run_id"]
    total_steps = 2 * ranks[0]["steps_per_epoch"]
    # at the optimizer's step count after the update, as in the torch adapter
    for key in (
        "loss",
        "mae",
        "lr",
    ):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(
            range(2, total_steps + 1, 2)
        )
    assert [m.value for m in client.get_metric_history(run_id, "lr")] == pytest.approx(
        [0.1] * (total_steps // 2)
    )
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "world_size")] == [(0, 2)]
    history = ranks[0]["history"]  # already averaged over ranks by hk.callbacks()
    assert history == ranks[1]["history"]
    for logged, keras_name in (
        ("epoch_loss", "loss"),
        ("epoch_mae", "mae"),
        ("val_loss", "val_loss"),
    ):
        metric = sorted(client.get_metric_history(run_id, logged), key=lambda m: m.step)
        assert [(m.step, m.value) for m in metric] == [
            (0, pytest.approx(history[keras_name][0], rel=1e-6)),
            (1, pytest.approx(history[keras_name][1], rel=1e-6)),
        ]


@pytest.mark.slow
def test_keras_logged_model_predicts_like_the_trained_model(keras_job):
    import mlflow
    import mlflow.keras

    server, ranks = keras_job
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[1]["model_uri"] is None
    inputs = np.random.default_rng(0).normal(size=(96, 4)).astype("float32")[:5]
    mlflow.set_tracking_uri(server.uri)
    try:
        loaded = mlflow.keras.load_model(ranks[0]["model_uri"])
    finally:
        mlflow.set_tracking_uri(None)
    assert loaded.predict(inputs, verbose=0).flatten().tolist() == pytest.approx(
        ranks[0]["predictions"], abs=1e-6
    )
    [version] = server.client().search_model_versions("name='hvdtrain-keras'")
    assert version.run_id == ranks[0]["run_id"]
