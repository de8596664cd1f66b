"""Issue 23, item 3: each adapter names the private framework and Horovod attributes it relies on
(``torch/internals.py``, ``keras/internals.py``) and checks them at ``init``: a release that moved
one stops the worker at start with one line naming it. Simulated here by taking one away from
the real class in a fresh interpreter, before ``init``."""

import ast
import os
import subprocess
import sys

import horovod
import pytest

from tests.launch import REPO, own_lines

TORCH_MOVED = """
import torch
keras_init = torch.amp.GradScaler.__init__
def init_without_states(self, *args, **kwargs):
    keras_init(self, *args, **kwargs)
    self.__dict__.pop("_per_optimizer_states")
torch.amp.GradScaler.__init__ = init_without_states
import hvdtrain.torch as ht
ht.init()
"""
KERAS_MOVED = """
import keras
owner = next(c for c in keras.optimizers.Optimizer.__mro__ if "_use_weight_decay" in vars(c))
delattr(owner, "_use_weight_decay")
import hvdtrain.keras as hk
hk.init()
"""


def stderr_of(code: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return proc.returncode, "\n".join(own_lines(proc.stderr))


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_a_moved_private_attribute_stops_init_with_one_line(framework):
    if framework == "torch":
        import torch

        returncode, stderr = stderr_of(TORCH_MOVED)
        assert (returncode, stderr) == (
            1,
            (
                "hvdtrain: error: hvdtrain.torch relies on torch's "
                "GradScaler._per_optimizer_states['found_inf_per_device'], which torch "
                f"{torch.__version__} / Horovod {horovod.__version__} no longer has: install the "
                "tested versions (make install), or update hvdtrain/torch/internals.py"
            ),
        )
    else:
        import keras

        returncode, stderr = stderr_of(KERAS_MOVED)
        assert (returncode, stderr) == (
            1,
            (
                "hvdtrain: error: hvdtrain.keras relies on "
                f"keras.optimizers.Optimizer._use_weight_decay, which Keras {keras.__version__} no "
                "longer has: install the tested versions (make install), or update "
                "hvdtrain/keras/internals.py"
            ),
        )


def test_only_the_internals_modules_touch_the_private_attributes():
    """Every attribute access (``x._handles``) and attribute name (``getattr(x, "_handles")``) of
    them, read from the source: only in ``internals.py``."""
    names = {
        "torch": {"_should_synchronize", "_handles", "_last_lr", "_per_optimizer_states"},
        "keras": {"_clip_gradients", "_use_weight_decay"},
    }

    def touches(path, private) -> bool:
        return any(
            (isinstance(node, ast.Attribute) and node.attr in private)
            or (isinstance(node, ast.Constant) and node.value in private)
            for node in ast.walk(ast.parse(path.read_text()))
        )

    users = {
        framework: sorted(
            path.name
            for path in (REPO / "hvdtrain" / framework).glob("*.py")
            if touches(path, private)
        )
        for framework, private in names.items()
    }
    assert users == {"torch": ["internals.py"], "keras": ["internals.py"]}
