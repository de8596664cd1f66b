"""Horovod settings hvdtrain starts workers with, unless the user set them.

Applied by ``hvdtrain.torch.init`` and ``hvdtrain.keras.init`` right before ``hvd.init()`` (Horovod
reads them there, once). Each value is justified by ``hvdtrain bench`` runs recorded in
BENCHMARKS.md. ``HVDTRAIN_HOROVOD_DEFAULTS=0`` keeps Horovod's own defaults.
"""
from __future__ import annotations

import os
from typing import Mapping, MutableMapping

SWITCH = "HVDTRAIN_HOROVOD_DEFAULTS"

# Empty on purpose, for now: on the 2-core CPU host every setting tried (HOROVOD_CYCLE_TIME 0.1 and
# 5 ms, HOROVOD_THREAD_AFFINITY, HOROVOD_CACHE_CAPACITY) made horovod.torch's blocking allreduce
# slower than Horovod's defaults (BENCHMARKS.md, "Horovod settings"). Thread affinity does pay
# once ranks wait without spinning; add it here when hvdtrain.torch waits that way.
HOROVOD_DEFAULTS: Mapping[str, str] = {}


def apply_horovod_defaults(environ: MutableMapping[str, str] = os.environ,
                           defaults: Mapping[str, str] = HOROVOD_DEFAULTS) -> dict[str, str]:
    """Set each default not already in ``environ``; returns the values now in effect for those keys."""
    if environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return {}
    return {key: environ.setdefault(key, value) for key, value in defaults.items()}
