"""The framework-free part of the optimizer-sharding (ZeRO) benchmark, shared by ``zero_step``
(PyTorch) and ``keras_zero_step`` (Keras): the modes and models both measure, the memory
measurement's step count and the RSS readers. It imports neither torch nor TensorFlow, so each
framework's module pulls in only its own framework.
"""

from __future__ import annotations

import os
import resource

# Mode name -> the wrap_optimizer options it sets; the same names in both frameworks, so their rows
# line up.
MODES = {
    "unsharded": {},
    "sharded": {"shard_optimizer_state": True},
    "sharded-grads": {"shard_optimizer_state": True, "shard_gradients": True},
}
MODELS = ("gpt", "mlp")
MEMORY_STEPS = 3
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def modes(framework: str) -> dict[str, dict]:
    """``framework``'s modes and their options: all of them in torch; Keras refuses
    shard_gradients (a Keras step holds every gradient at once), so it has no stage 2."""
    return {
        mode: options
        for mode, options in MODES.items()
        if framework == "torch" or not options.get("shard_gradients")
    }


def rss() -> int:
    """Resident bytes now: the second field of /proc/self/statm, in pages."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


def peak_rss() -> int:
    """The process's peak resident bytes so far (a high-water mark that never goes down)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
