"""Horovod settings hvdtrain starts workers with, unless the user set them.

Applied by ``hvdtrain.torch.init`` and ``hvdtrain.keras.init`` right before ``hvd.init()`` (Horovod
reads them there, once), and by the launcher (``launch.environment``) for every worker. Each
performance value is justified by ``hvdtrain bench`` runs recorded in BENCHMARKS.md.
``HVDTRAIN_HOROVOD_DEFAULTS=0`` keeps Horovod's own defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from .guards import UserError

SWITCH = "HVDTRAIN_HOROVOD_DEFAULTS"
HANG_TIMEOUT_ENV = "HVDTRAIN_HANG_TIMEOUT"
DEFAULT_HANG_TIMEOUT = 300
MIN_HANG_TIMEOUT = 8

# Empty on purpose, for now: on the 2-core CPU host every setting tried (HOROVOD_CYCLE_TIME 0.1 and
# 5 ms, HOROVOD_THREAD_AFFINITY, HOROVOD_CACHE_CAPACITY) made horovod.torch's blocking allreduce
# slower than Horovod's defaults (BENCHMARKS.md, "Horovod settings"). Thread affinity does pay
# once ranks wait without spinning; add it here when hvdtrain.torch waits that way.
# Across 2-4 test hosts at 200 Mbit/s (``hvdtrain bench --hosts 4``, BENCHMARKS.md "Across hosts",
# 2026-12-02) Horovod's defaults already run a 64 MB allreduce at 0.935-0.954 of the link, on par
# with torch.distributed window by window, and Horovod's fusion of 200 x 64 KB async submissions on
# par with torch.distributed's flattened buffer: no setting showed a gain to earn a place here.
# What did show: hvdtrain's poll-and-sleep wait (``torch/collectives.py``) beats Horovod's spinning
# one by 1.05x [1.01, 1.08] at 3 hosts and 1.18x [1.08, 1.37] at 4 (64 MB), and it is the default;
# fp16 compression gives 1.58-1.92x the link's float32 bandwidth but changes the numbers a model
# sees, so it stays the user's choice (``compression="fp16"``).
HOROVOD_DEFAULTS: Mapping[str, str] = {}


def hang_settings(timeout: int) -> dict[str, str]:
    """Horovod's settings that end a hung job within about ``timeout`` seconds.

    A frozen peer: Gloo gives up on a receive after ``HOROVOD_GLOO_TIMEOUT_SECONDS`` (default 30).
    Diverged ranks (a collective some ranks never submit): Horovod's stall inspector warns after
    the check time and shuts the job down after the shutdown time (default: never). It checks only
    every check-time seconds, and a collective served from the response cache first waits one
    check to be taken out of the cache, so the worst case is 3 check times + the shutdown time:
    a sixth of the bound and half of it. So a rank may work alone while the others wait in a
    collective for up to half the bound; hvdtrain's own rank-0 work (checkpoint saves and loads,
    model uploads) keeps the others in step while it runs (``core.on_main``), so it may take any
    time. The Gloo timeout also bounds ``hvd.init``'s rendezvous, hence the minimum.
    """
    return {
        "HOROVOD_GLOO_TIMEOUT_SECONDS": str(timeout),
        "HOROVOD_STALL_CHECK_TIME_SECONDS": str(max(1, timeout // 6)),
        "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": str(max(1, timeout // 2)),
    }


class HangTimeoutError(UserError, ValueError):
    """A bad ``HVDTRAIN_HANG_TIMEOUT``: the same on every rank of a host (its environment)."""

    per_host = True


def hang_timeout(environ: Mapping[str, str] = os.environ) -> int:
    """``HVDTRAIN_HANG_TIMEOUT`` in seconds (default 300); ``HangTimeoutError`` (a ``ValueError``)
    naming it when invalid, one line in a worker."""
    text = environ.get(HANG_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_HANG_TIMEOUT
    try:
        return check_hang_timeout(int(text))
    except ValueError:
        raise HangTimeoutError(
            f"{HANG_TIMEOUT_ENV} must be a whole number of seconds >= {MIN_HANG_TIMEOUT}, "
            f"got {text!r}"
        ) from None


def check_hang_timeout(seconds: int) -> int:
    if seconds < MIN_HANG_TIMEOUT:
        raise ValueError(
            f"the hang timeout must be >= {MIN_HANG_TIMEOUT} s (Gloo's rendezvous at start-up "
            f"needs that much), got {seconds}"
        )
    return seconds


def apply_horovod_defaults(
    environ: MutableMapping[str, str] = os.environ,
    defaults: Mapping[str, str] | None = None,
    hang_timeout_s: int | None = None,
) -> dict[str, str]:
    """Set each default not already in ``environ``; returns the values now in effect for those keys.
    ``hang_timeout_s``: the bound the launcher already parsed (a worker reads it from ``environ``).
    ``defaults`` (for tests) replaces the performance defaults and the hang settings."""
    if environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return {}
    if defaults is None:
        timeout = hang_timeout(environ) if hang_timeout_s is None else hang_timeout_s
        defaults = {**HOROVOD_DEFAULTS, **hang_settings(timeout)}
    return {key: environ.setdefault(key, value) for key, value in defaults.items()}
