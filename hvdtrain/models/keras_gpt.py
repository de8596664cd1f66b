"""The GPT-style byte-level language model in Keras 3: a small decoder-only transformer, trained by
``tf_examples/gpt.py`` and timed by ``hvdtrain bench``. Its PyTorch twin is ``torch_gpt``."""

from __future__ import annotations

import keras

from ..datasets.text import VOCAB_SIZE


@keras.saving.register_keras_serializable("hvdtrain_gpt")
class AddPositions(keras.layers.Layer):
    """Adds a learned embedding of each position (up to ``block``) to the byte embeddings."""

    def __init__(self, block: int, **kwargs):
        super().__init__(**kwargs)
        self.block = block

    def build(self, input_shape):
        self.table = self.add_weight(
            shape=(self.block, input_shape[-1]), initializer="random_normal", name="table"
        )

    def call(self, x):
        return x + self.table[: keras.ops.shape(x)[1]]

    def get_config(self):
        return {**super().get_config(), "block": self.block}


def build_model(block: int, d_model: int, layers: int, heads: int) -> keras.Model:
    """Byte and position embeddings, ``layers`` pre-norm blocks (causal self-attention, then a 4x
    MLP, each with a residual), a final norm and a dense head to 256 logits."""
    if d_model % heads:
        raise ValueError(f"--d-model ({d_model}) must be a multiple of --heads ({heads})")
    tokens = keras.Input((None,), dtype="int32")  # any length up to block: generation grows it
    x = AddPositions(block)(keras.layers.Embedding(VOCAB_SIZE, d_model)(tokens))
    for _ in range(layers):
        h = keras.layers.LayerNormalization(epsilon=1e-5)(x)
        # use_causal_mask: each byte sees only its past.
        x = x + keras.layers.MultiHeadAttention(heads, d_model // heads)(h, h, use_causal_mask=True)
        h = keras.layers.LayerNormalization(epsilon=1e-5)(x)
        x = x + keras.layers.Dense(d_model)(keras.layers.Dense(4 * d_model, activation="gelu")(h))
    logits = keras.layers.Dense(VOCAB_SIZE)(keras.layers.LayerNormalization(epsilon=1e-5)(x))
    return keras.Model(tokens, logits)
