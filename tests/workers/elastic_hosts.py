"""``elastic_train`` (torch) across test hosts, for tests/test_multihost_elastic.py.

On top of what ``elastic_train`` writes, each commit (``save``), rollback (``restore``) and
membership change (``sync``) of the elastic state appends a checksum of the model and optimizer
state right after it to ``<out>/state.jsonl``; and batches sleep only until ``<out>/finish``
exists, so the test can take hosts away and bring them back while training runs, then let it end.
"""
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

from hvdtrain.core import elastic
from tests.workers import elastic_train


def checksum(value) -> str:
    """Of a ``TorchSnapshot.capture()``: every tensor's bytes, every other value's repr."""
    hashed = hashlib.sha256()

    def feed(item):
        if isinstance(item, dict):
            for key in sorted(item, key=repr):
                hashed.update(repr(key).encode())
                feed(item[key])
        elif isinstance(item, (list, tuple)):
            for part in item:
                feed(part)
        elif isinstance(item, torch.Tensor):
            hashed.update(item.detach().cpu().contiguous().numpy().tobytes())
        else:
            hashed.update(repr(item).encode())

    feed(value)
    return hashed.hexdigest()[:16]


def record_state_events(out: Path) -> None:
    """Each save, restore and sync of the elastic state, with the state's checksum right after it."""
    for name in ("save", "restore", "sync"):
        original = getattr(elastic.TrainingState, name)

        def recorded(self, _original=original, _name=name):
            _original(self)
            with open(out / "state.jsonl", "a") as f:
                f.write(json.dumps({"event": _name, "pid": os.getpid(), "host": socket.gethostname(),
                                    "rank": self.ctx.rank, "size": self.ctx.size, "step": self.position.step,
                                    "time": time.time(), "checksum": checksum(self.snapshot.capture())}) + "\n")

        setattr(elastic.TrainingState, name, recorded)


class UntilFinished:
    """``elastic_train``'s clock: its batches sleep until the ``finish`` file exists."""

    def __init__(self, finish: Path):
        self.finish = finish

    def sleep(self, seconds: float) -> None:
        if not self.finish.exists():
            time.sleep(seconds)

    def time(self) -> float:
        return time.time()


if __name__ == "__main__":
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    record_state_events(out)
    elastic_train.time = UntilFinished(out / "finish")
    elastic_train.main()
