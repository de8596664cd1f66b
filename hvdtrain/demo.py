"""The main job (``make demo``): the digits example in both frameworks and a short GPT run, each on
2 workers launched by ``hvdtrain.launch``, tracked in the local MLflow store, then a summary table.
The examples are the checkout's (``torch_examples/``, ``tf_examples/``)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOBS = [
    ("torch", "digits", "torch_examples/digits.py", []),
    ("keras", "digits", "tf_examples/digits.py", []),
    ("torch", "gpt", "torch_examples/gpt.py", []),
]
WORKERS = 2


def main() -> int:
    from .core.errors import UsageError
    from .launch import job
    from .launch.request import Request
    from .tracking import prepare_local_store

    uri = prepare_local_store()
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        for framework, example, script, extra in JOBS:
            results = Path(tmp, f"{framework}-{example}.json")
            print(f"\n=== {example} ({framework}), {WORKERS} workers ===", flush=True)
            start = time.perf_counter()
            try:
                returncode = job.run(
                    Request(
                        script=str(REPO / script),
                        np=WORKERS,
                        args=("--experiment", "hvdtrain-demo", "--results", str(results), *extra),
                    )
                )
            except UsageError as err:
                print(f"hvdtrain: error: {err}", file=sys.stderr)
                returncode = 2
            wall = time.perf_counter() - start
            if returncode != 0 or not results.exists():
                failed = True
                rows.append(
                    (
                        framework,
                        example,
                        WORKERS,
                        "FAILED",
                        f"exit {returncode}",
                        f"{wall:.0f} s",
                        "-",
                    )
                )
                continue
            found = json.loads(results.read_text())
            rows.append(
                (
                    framework,
                    example,
                    WORKERS,
                    found["metric_name"],
                    f"{found['metric']:.4f}",
                    f"{wall:.0f} s",
                    found.get("run_id") or "-",
                )
            )
    header = ("framework", "example", "workers", "metric", "value", "wall time", "MLflow run id")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(f"\nTracking store: {uri}\nOpen the MLflow UI on it: .venv/bin/hvdtrain ui")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
