r"""BERT token classification with Hugging Face ``transformers``,
fine-tuned data-parallel on Horovod.

The task, data, loss, metrics and report are ``token_tagging.py``'s (tag each character of Python
source with the BIO label of its token); the model is a ``BertForTokenClassification`` loaded the
way users load one: ``AutoModelForTokenClassification.from_pretrained(--model-dir)``. Nothing is
downloaded (``HF_HUB_OFFLINE=1``): when the directory holds no model yet, a first step writes a
small, randomly initialised BERT there with ``save_pretrained`` (its vocabulary is the dataset's
129 character ids, 0 = padding), standing in for a downloaded checkpoint. hvdtrain's checkpoints,
``--resume``, MLflow tracking and ``--log-model`` work on it unchanged.

    hvdtrain run -np 2 torch_examples/hf_token_tagging.py --model-dir bert-tiny --epochs 1 \
        --log-model
"""

from __future__ import annotations

import os

# before transformers is imported: never reach for the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import token_tagging  # noqa: E402  (the plain example, beside this file)
import transformers  # noqa: E402
from torch import nn  # noqa: E402

from hvdtrain.core.pretrained import prepare  # noqa: E402
from hvdtrain.datasets import tagging  # noqa: E402
from hvdtrain.torch.hf import Logits  # noqa: E402
from hvdtrain.torch.tracking import log_model  # noqa: E402


def parser():
    parser = tagging.example_parser("PyTorch, a Hugging Face BERT")
    group = parser.add_argument_group("Hugging Face model")
    group.add_argument(
        "--model-dir",
        default="bert-token-tagging",
        help="from_pretrained() directory; written from --dim/--layers/--heads if it holds no "
        "model",
    )
    group.add_argument(
        "--log-model", action="store_true", help="log the trained model to the MLflow run"
    )
    return parser


def write_bert(args, directory) -> None:
    """A small BERT from config, saved as a hub checkpoint would be."""
    config = transformers.BertConfig(
        vocab_size=tagging.VOCAB_SIZE,
        pad_token_id=tagging.PAD,
        hidden_size=args.dim,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.dim,
        max_position_embeddings=args.max_len,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0,
        num_labels=len(tagging.LABELS),
        id2label=dict(enumerate(tagging.LABELS)),
        label2id={name: i for i, name in enumerate(tagging.LABELS)},
    )
    transformers.BertForTokenClassification(config).save_pretrained(directory)


def build_bert(args, ctx) -> nn.Module:
    if not ctx.is_main:
        transformers.utils.logging.disable_progress_bar()  # only rank 0 shows progress
    directory = prepare(ctx, args.model_dir, lambda d: write_bert(args, d), marker="config.json")
    return Logits(
        transformers.AutoModelForTokenClassification.from_pretrained(directory), tagging.PAD
    )


if __name__ == "__main__":
    token_tagging.main(
        parser=parser(), build_model=build_bert, log_model=log_model, example="hf_token_tagging"
    )
