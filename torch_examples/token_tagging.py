"""BERT-style token classification with PyTorch on Horovod: tag Python source like a NER model.

A small bidirectional transformer encoder reads standard-library source lines character by character
and tags each character with the BIO label of the Python token covering it (``B-KEYWORD``,
``I-STRING``, ...), labels made by Python's own ``tokenize`` module. Training is data-parallel; at
the end rank 0 prints an entity-level precision / recall / F1 report on held-out files, as for NER.

    horovodrun -np 2 -H localhost:2 --gloo python torch_examples/token_tagging.py
    hvdtrain run -np 2 torch_examples/token_tagging.py --epochs 1 --train-lines 5000
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import hvdtrain.torch as ht
from hvdtrain import tracking
from hvdtrain.core import args as cli
from hvdtrain.core.context import main_process_only
from hvdtrain.datasets import tagging


class Tagger(nn.Module):
    """Character embedding + a local convolution, a pre-norm transformer encoder, and a
    per-character classifier. Each character attends only to its own line (the lines packed into a
    row are unrelated): a block-diagonal mask made from the newline separators."""

    def __init__(self, dim: int, layers: int, heads: int, max_len: int):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(tagging.VOCAB_SIZE, dim, padding_idx=tagging.PAD)
        self.local = nn.Conv1d(dim, dim, kernel_size=5, padding=2)
        self.position = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.1, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.classify = nn.Linear(dim, len(tagging.LABELS))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        x = x + nn.functional.gelu(self.local(x.transpose(1, 2)).transpose(1, 2))
        x = x + self.position.weight[: ids.shape[1]]
        line = torch.cumsum(ids == tagging.NEWLINE, dim=1).masked_fill(ids == tagging.PAD, -1)
        blocked = line[:, :, None] != line[:, None, :]  # True: may not attend
        x = self.encoder(x, mask=blocked.repeat_interleave(self.heads, dim=0))
        return self.classify(self.norm(x))


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=tagging.IGNORE)


def char_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    real = labels != tagging.IGNORE
    return (logits.argmax(-1) == labels)[real].float().mean()


def as_dataset(ids: np.ndarray, labels: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(ids).long(), torch.from_numpy(labels).long())


@main_process_only
def show_results(
    args,
    ctx,
    rows: dict,
    wall_time: float,
    run_id: str | None,
    data,
    example: str = "token_tagging",
    model_uri: str | None = None,
) -> None:
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
        example=example,
        metric_name="heldout_micro_f1",
        metric=micro_f1,
        wall_time_s=wall_time,
        run_id=run_id,
        report=rows,
        model_uri=model_uri,
    )


def build_tagger(args, ctx) -> nn.Module:
    return Tagger(args.dim, args.layers, args.heads, args.max_len)


def main(
    argv=None, *, parser=None, build_model=build_tagger, log_model=None, example="token_tagging"
) -> None:
    """Train and report; ``build_model(args, ctx)`` makes the model and, with ``--log-model``,
    ``log_model(tracker, model, ids)`` logs it (``hf_token_tagging.py`` passes
    both and the flag)."""
    started = time.perf_counter()
    args = cli.parse(parser or tagging.example_parser("PyTorch"), argv)
    ctx = ht.init(seed=args.seed)
    data = tagging.load(
        max_len=args.max_len,
        seed=args.seed,
        max_files=args.files or None,
        max_train_lines=args.train_lines or None,
        max_heldout_lines=args.heldout_lines or None,
        root=args.data_dir,
    )
    with tracking.tracked(**cli.tracking_kwargs(args)) as tracker:
        model = build_model(args, ctx).to(ctx.device)
        optimizer = ht.wrap_optimizer(
            torch.optim.AdamW(model.parameters(), lr=args.lr), model, **cli.optimizer_kwargs(args)
        )
        train_loader = ht.distributed_loader(
            as_dataset(data.train_ids, data.train_labels), args.batch_size, seed=args.seed
        )
        heldout_loader = ht.eval_loader(
            as_dataset(data.heldout_ids, data.heldout_labels), batch_size=256
        )
        history = ht.fit(
            model,
            optimizer,
            loss_fn,
            train_loader,
            epochs=args.epochs,
            val_loader=heldout_loader,
            metrics={"char_accuracy": char_accuracy},
            tracker=tracker,
            **cli.fit_kwargs(args),
        )

        model.eval()

        @torch.no_grad()
        def predict(ids: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(ids).long().to(ctx.device)).argmax(-1).cpu().numpy()

        rows = tagging.evaluate(predict, data.heldout_ids, data.heldout_labels, ctx)
        if tracker is not None and history.samples_trained:  # else the earlier job logged it
            tracker.log_metrics(
                {f"heldout_f1/{name.replace(' ', '_')}": row["f1"] for name, row in rows.items()},
                step=history.global_step,
            )
        model_uri = None
        if tracker is not None and log_model is not None and args.log_model:
            model_uri = log_model(
                tracker, model, torch.from_numpy(data.heldout_ids[:4]).long().to(ctx.device)
            )
        show_results(
            args,
            ctx,
            rows,
            time.perf_counter() - started,
            tracker.run_id if tracker else None,
            data,
            example,
            model_uri,
        )


if __name__ == "__main__":
    main()
