"""What a tracked run records as params: the user's config and what data parallelism changed.

Values are flattened to ``section.key`` strings because MLflow params are flat strings. Keys that
look like credentials are never logged: configs are often built from the environment, and a
param, once logged, is visible to everyone who can read the experiment.
"""

from __future__ import annotations

import enum
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from ..core.context import Context
from ..core.lr import lr_scale_factor
from ..core.options import DistributedOptions
from ..core.secrets import looks_secret

# Distribution names to look up, per reported package (TF ships as several wheels).
_DISTRIBUTIONS = {
    "horovod": ("horovod",),
    "torch": ("torch",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu"),
    "keras": ("keras",),
    "mlflow": ("mlflow", "mlflow-skinny"),
}


def without_secrets(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` without the keys (at any depth) that look like credentials."""
    return {
        key: without_secrets(value) if isinstance(value, Mapping) else value
        for key, value in config.items()
        if not looks_secret(str(key))
    }


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"opt": {"lr": 0.1}}`` -> ``{"opt.lr": "0.1"}``, dropping keys that look like secrets."""
    flat: dict[str, str] = {}
    for key, value in without_secrets(config).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value.value if isinstance(value, enum.Enum) else value)
    return flat


def training_params(
    ctx: Context, options: DistributedOptions, *, base_lr: float | None, per_rank_batch_size: int
) -> dict[str, Any]:
    """The params data parallelism adds to a run; ``scaled_lr`` is what the optimizer uses
    after warmup, ``global_batch_size`` the samples behind one optimizer step. ``base_lr`` None
    (an LR schedule): no LR params."""
    scale = lr_scale_factor(options, ctx.size, ctx.local_size, ctx.on_gpu)
    lrs = {} if base_lr is None else {"base_lr": base_lr, "scaled_lr": base_lr * scale}
    return {
        "framework": ctx.framework,
        "world_size": ctx.size,
        **options.as_params(),
        **lrs,
        "per_rank_batch_size": per_rank_batch_size,
        "global_batch_size": per_rank_batch_size * ctx.size * options.accumulation_steps,
    }


def environment_params(hostnames: list[str]) -> dict[str, str]:
    """Versions, hosts and the script's git commit: what it takes to reproduce the run."""
    params = {
        "python_version": platform.python_version(),
        "hostnames": ",".join(sorted(set(hostnames))),
    }
    for package, distributions in _DISTRIBUTIONS.items():
        for distribution in distributions:
            try:
                params[f"{package}_version"] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    commit = git_commit()
    if commit:
        params["git_commit"] = commit
    return params


def git_commit() -> str | None:
    """HEAD of the repository holding the running script, if it is in one."""
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c") else "."
    try:
        result = subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(script)), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
