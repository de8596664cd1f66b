"""The benchmarked models' sizes: a plain MLP, and the examples' GPT (``hvdtrain.models``) at its
example defaults, at a toy size, and at ~50M parameters for optimizer-state sharding, with a stack
of square linear layers beside it."""

from __future__ import annotations

from dataclasses import dataclass

from ..datasets import text


@dataclass(frozen=True)
class MLP:
    inputs: int
    hidden: int
    classes: int
    batch: int  # samples per rank per step


@dataclass(frozen=True)
class Stack:
    """``layers`` x Linear(width, width), ReLU between."""

    width: int
    layers: int
    batch: int


@dataclass(frozen=True)
class GPTShape:
    block: int
    d_model: int
    layers: int
    heads: int
    batch: int


def mlp_shape(quick: bool) -> MLP:
    return MLP(64, 128, 10, 8) if quick else MLP(1024, 2048, 10, 64)


def zero_gpt_shape(quick: bool) -> GPTShape:
    """The examples' GPT at ~50M parameters (16 blocks of 12 x 512^2), for optimizer-state sharding;
    a short context and batch keep its step to about a second a rank on a CPU."""
    return (
        GPTShape(block=16, d_model=32, layers=1, heads=2, batch=2)
        if quick
        else GPTShape(block=32, d_model=512, layers=16, heads=8, batch=2)
    )


def zero_mlp_shape(quick: bool) -> Stack:
    """Issue 27's MLP for optimizer-state sharding: 8 x Linear(2048, 2048), 33.6 M parameters,
    256 MiB of AdamW state; 8 x Linear(32, 32) with ``quick``."""
    return Stack(width=32, layers=8, batch=4) if quick else Stack(width=2048, layers=8, batch=64)


def gpt_shape(quick: bool) -> GPTShape:
    """The example's own defaults; a toy size with ``quick``."""
    if quick:
        return GPTShape(block=16, d_model=32, layers=1, heads=2, batch=4)
    args = text.example_parser("").parse_args([])
    return GPTShape(args.block, args.d_model, args.layers, args.heads, args.batch_size)
