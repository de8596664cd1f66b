"""2-rank Keras job tracked in MLflow:
``model.fit`` with hvdtrain's callbacks and ``MlflowLogger``."""

import numpy as np

import hvdtrain.keras as hk
from hvdtrain import tracking
from hvdtrain.keras.tracking import MlflowLogger, log_model
from tests.workers.common import parse_args, report

BASE_LR, BATCH, LOG_EVERY = 0.05, 8, 2


def main():
    args = parse_args(experiment=str)
    ctx = hk.init(seed=0)
    import keras

    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(96, 4)).astype("float32")
    targets = inputs @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32") + 0.1
    train_x, train_y = hk.shard(inputs[:64], targets[:64], shuffle=False)
    val_x, val_y = hk.shard(inputs[64:], targets[64:], shuffle=False)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    optimizer = hk.wrap_optimizer(keras.optimizers.SGD(BASE_LR))
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])

    tracker = tracking.start(
        config={"model": {"kind": "dense"}, "api_token": "abc"},
        experiment=args.experiment,
        run_name="keras",
        spill_dir=args.out / "spill",
    )
    tracker.log_params(
        tracking.training_params(
            ctx, optimizer.hvdtrain_options, base_lr=BASE_LR, per_rank_batch_size=BATCH
        )
    )
    history = model.fit(
        train_x,
        train_y,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        validation_data=(val_x, val_y),
        callbacks=[
            *hk.callbacks(),
            MlflowLogger(tracker, log_every=LOG_EVERY, per_rank_batch_size=BATCH),
        ],
    )
    model_uri = log_model(tracker, model, inputs[:5], registered_model_name="hvdtrain-keras")
    spill = tracker.finish()
    report(
        args.out,
        ctx.rank,
        run_id=tracker.run_id,
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        steps_per_epoch=len(train_x) // BATCH,
        model_uri=model_uri,
        spill=str(spill) if spill else None,
        predictions=model.predict(inputs[:5], verbose=0).flatten().tolist(),
        weights=[float(w) for w in model.get_weights()[0].flatten()],
    )


if __name__ == "__main__":
    main()
