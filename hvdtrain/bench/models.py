"""The benchmarked models' sizes, and the GPT examples loaded from their files (not copied)."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..datasets import text

REPO = Path(__file__).resolve().parents[2]
GPT_EXAMPLES = {"torch": REPO / "torch_examples" / "gpt.py", "keras": REPO / "tf_examples" / "gpt.py"}


@dataclass(frozen=True)
class MLP:
    inputs: int
    hidden: int
    classes: int
    batch: int  # samples per rank per step


@dataclass(frozen=True)
class GPTShape:
    block: int
    d_model: int
    layers: int
    heads: int
    batch: int


def mlp_shape(quick: bool) -> MLP:
    return MLP(64, 128, 10, 8) if quick else MLP(1024, 2048, 10, 64)


def gpt_example(framework: str) -> ModuleType | None:
    """``torch_examples/gpt.py`` or ``tf_examples/gpt.py`` as a module; ``None`` where it is absent
    (hvdtrain installed without its examples)."""
    path = GPT_EXAMPLES[framework]
    if not path.is_file():
        return None
    name = f"hvdtrain_bench_gpt_{framework}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def zero_gpt_shape(quick: bool) -> GPTShape:
    """The examples' GPT at ~50M parameters (16 blocks of 12 x 512^2), for optimizer-state sharding;
    a short context and batch keep its step to about a second a rank on a CPU."""
    return GPTShape(block=16, d_model=32, layers=1, heads=2, batch=2) if quick else \
        GPTShape(block=32, d_model=512, layers=16, heads=8, batch=2)


def gpt_shape(quick: bool) -> GPTShape:
    """The example's own defaults; a toy size with ``quick``."""
    if quick:
        return GPTShape(block=16, d_model=32, layers=1, heads=2, batch=4)
    args = text.example_parser("").parse_args([])
    return GPTShape(args.block, args.d_model, args.layers, args.heads, args.batch_size)
