"""``elastic_train`` (torch) across test hosts, for tests/test_multihost_elastic.py.

Each commit (``save``), rollback (``restore``) and membership change (``sync``) of the elastic
state appends the digest of the model and optimizer state right after it to ``<out>/state.jsonl``
(``elastic_train.record_state_events``); and batches sleep only until ``<out>/finish`` exists, so
the test can take hosts away and bring them back while training runs, then let it end.
"""

import sys
import time
from pathlib import Path

from tests.workers import elastic_train


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
    elastic_train.time = UntilFinished(out / "finish")
    elastic_train.main()
