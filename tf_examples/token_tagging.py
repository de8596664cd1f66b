"""BERT-style token classification with Keras 3 (TensorFlow) on Horovod:
tag Python source like a NER model.

A small bidirectional transformer encoder reads standard-library source lines character by character
and tags each character with the BIO label of the Python token covering it (``B-KEYWORD``,
``I-STRING``, ...), labels made by Python's own ``tokenize`` module. Training is data-parallel; at
the end rank 0 prints an entity-level precision / recall / F1 report on held-out files, as for NER.

    horovodrun -np 2 -H localhost:2 --gloo python tf_examples/token_tagging.py
    hvdtrain run -np 2 tf_examples/token_tagging.py --epochs 1 --train-lines 5000
"""

from __future__ import annotations

import time

import keras
import numpy as np

import hvdtrain.keras as hk
from hvdtrain import tracking
from hvdtrain.core import args as cli
from hvdtrain.core.context import main_process_only
from hvdtrain.datasets import tagging


class EncoderBlock(keras.layers.Layer):
    """Pre-norm transformer encoder layer: self-attention, then a feed-forward network."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attention = keras.layers.MultiHeadAttention(heads, dim // heads, dropout=dropout)
        self.feed_forward_norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.feed_forward = keras.Sequential(
            [
                keras.layers.Dense(4 * dim, activation="relu"),
                keras.layers.Dropout(dropout),
                keras.layers.Dense(dim),
            ]
        )
        self.dropout = keras.layers.Dropout(dropout)

    def call(self, x, attend, training=False):
        h = self.attention_norm(x)
        x = x + self.dropout(
            self.attention(h, h, attention_mask=attend, training=training), training=training
        )
        return x + self.dropout(
            self.feed_forward(self.feed_forward_norm(x), training=training), training=training
        )


class Tagger(keras.Model):
    """Character embedding + a local convolution, a transformer encoder, and a per-character
    classifier. Each character attends only to its own line (the lines packed into a row are
    unrelated): a block-diagonal mask made from the newline separators."""

    def __init__(self, dim: int, layers: int, heads: int, max_len: int, **kwargs):
        super().__init__(**kwargs)
        self.sizes = {"dim": dim, "layers": layers, "heads": heads, "max_len": max_len}
        self.embed = keras.layers.Embedding(tagging.VOCAB_SIZE, dim)
        self.local = keras.layers.Conv1D(dim, 5, padding="same", activation="gelu")
        self.position = self.add_weight(
            shape=(max_len, dim), initializer="random_normal", name="position"
        )
        self.blocks = [EncoderBlock(dim, heads) for _ in range(layers)]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5)
        self.classify = keras.layers.Dense(len(tagging.LABELS))

    def call(self, ids, training=False):
        ops = keras.ops
        x = self.embed(ids)
        x = x + self.local(x)
        x = x + self.position[: ops.shape(ids)[1]]
        line = ops.where(
            ids == tagging.PAD, -1, ops.cumsum(ops.cast(ids == tagging.NEWLINE, "int32"), axis=1)
        )
        attend = ops.expand_dims(line, 2) == ops.expand_dims(line, 1)
        for block in self.blocks:
            x = block(x, attend, training=training)
        return self.classify(self.norm(x))

    def get_config(self):  # what ``model.save`` (the checkpoints) records to rebuild the model
        return {"name": self.name, **self.sizes}


def keras_arrays(ids: np.ndarray, labels: np.ndarray):
    """(ids, labels, weights): padding gets label 0 and weight 0, so loss and accuracy skip it."""
    real = labels != tagging.IGNORE
    return ids, np.where(real, labels, 0), real.astype("float32")


@main_process_only
def show_results(args, ctx, rows: dict, wall_time: float, run_id: str | None, data) -> None:
    print(
        f"\nentity-level report on {len(data.heldout_files)} held-out files "
        f"({len(data.heldout_ids)} rows of packed lines):"
    )
    print(tagging.format_report(rows))
    micro_f1 = rows["micro avg"]["f1"]
    print(f"\nheld-out micro F1 {micro_f1:.4f}   wall time {wall_time:.0f} s   MLflow run {run_id}")
    cli.write_results(
        args,
        ctx,
        example="token_tagging",
        metric_name="heldout_micro_f1",
        metric=micro_f1,
        wall_time_s=wall_time,
        run_id=run_id,
        report=rows,
    )


def main(argv=None) -> None:
    started = time.perf_counter()
    args = cli.parse(tagging.example_parser("Keras 3"), argv)
    ctx = hk.init(seed=args.seed)
    data = tagging.load(
        max_len=args.max_len,
        seed=args.seed,
        max_files=args.files or None,
        max_train_lines=args.train_lines or None,
        max_heldout_lines=args.heldout_lines or None,
        root=args.data_dir,
    )
    with tracking.tracked(**cli.tracking_kwargs(args)) as tracker:
        model = Tagger(args.dim, args.layers, args.heads, args.max_len)
        optimizer = hk.wrap_optimizer(
            keras.optimizers.AdamW(args.lr, weight_decay=0.01), **cli.optimizer_kwargs(args)
        )
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="char_accuracy")],
            jit_compile=False,
        )
        # Each epoch every rank trains on its equal share of a fresh permutation and validates on
        # every size-th held-out row; checkpoints, resume and tracking are hk.fit's, as ht.fit's in
        # the torch twin.
        ids, labels, weights = keras_arrays(data.train_ids, data.train_labels)
        history = hk.fit(
            model,
            ids,
            labels,
            sample_weight=weights,
            batch_size=args.batch_size,
            epochs=args.epochs,
            seed=args.seed,
            tracker=tracker,
            validation_data=keras_arrays(data.heldout_ids, data.heldout_labels),
            **cli.fit_kwargs(args),
        )

        def predict(ids: np.ndarray) -> np.ndarray:
            return np.argmax(model.predict_on_batch(ids), axis=-1)

        rows = tagging.evaluate(predict, data.heldout_ids, data.heldout_labels, ctx)
        if tracker is not None and history.samples_trained:  # else the earlier job logged it
            tracker.log_metrics(
                {f"heldout_f1/{name.replace(' ', '_')}": row["f1"] for name, row in rows.items()},
                step=int(optimizer.iterations.numpy()),
            )
        show_results(
            args,
            ctx,
            rows,
            time.perf_counter() - started,
            tracker.run_id if tracker else None,
            data,
        )


if __name__ == "__main__":
    main()
