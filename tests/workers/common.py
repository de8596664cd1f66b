"""Helpers for worker scripts run by ``tests.launch.horovodrun``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_args(**extra: type) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    for name, kind in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind)
    return parser.parse_args()


def report(out: Path, rank: int, **values) -> None:
    """Write this rank's results for the test to assert on."""
    (out / f"rank{rank}.json").write_text(json.dumps(values))
