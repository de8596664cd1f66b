"""The block ``hvdtrain run`` prints when a job ends well: short enough to paste into a report.

Its values come from files rank 0 writes, not from the job's printed text: the run file
(``$HVDTRAIN_RUN_FILE``: the MLflow run, or the journal that kept the tracking data when the
server was down; ``tracking.legs``) and the results (``$HVDTRAIN_RESULTS_FILE``: the final
metrics, samples/s; ``core.args.write_results``). The launcher adds what it knows itself: the
workers, the hosts, the wall time. A script that writes neither still gets those.
"""

from __future__ import annotations

import json
from pathlib import Path

UI_ADDRESS = "http://127.0.0.1:5000"  # where ``hvdtrain ui`` serves a local store by default
SKIPPED = {
    "framework",
    "example",
    "workers",
    "metric_name",
    "metric",
    "wall_time_s",
    "run_id",
    "samples_per_sec",
}


def read(path: Path) -> dict:
    """A JSON object a worker wrote; {} when there is none (not written, or cut short)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def block(*, workers: int, hosts: list[str], wall_s: float, results: dict, run: dict) -> list[str]:
    """The summary's lines."""
    workers = results.get("workers", workers)
    lines = [
        f"hvdtrain: job finished: {workers} worker{'s' * (workers != 1)} on {len(hosts)} "
        f"host{'s' * (len(hosts) != 1)} ({', '.join(hosts)}), wall time {wall_s:.1f} s"
    ]
    rows = []
    if isinstance(results.get("samples_per_sec"), (int, float)):
        rows.append(("samples/s", f"{results['samples_per_sec']:.1f}"))
    metrics = {results["metric_name"]: results.get("metric")} if "metric_name" in results else {}
    metrics.update({k: v for k, v in results.items() if k not in SKIPPED and isinstance(v, float)})
    rows += [
        (name, f"{value:.4f}") for name, value in metrics.items() if isinstance(value, (int, float))
    ]
    if tracking := tracking_line(run):
        rows.append(tracking)
    width = max((len(name) for name, _ in rows), default=0)
    return lines + [f"  {name + ':':<{width + 1}} {value}" for name, value in rows]


def tracking_line(run: dict) -> tuple[str, str] | None:
    """Where the job's tracking data is: the MLflow run's page, or the journal to send later."""
    if run.get("journal"):
        return "MLflow", (
            f"server unreachable, data kept in {run['journal']} (send it: hvdtrain mlflow-sync "
            f"{run['journal']})"
        )
    if not run.get("run_id"):
        return None
    uri, page = (
        run.get("tracking_uri", ""),
        f"#/experiments/{run.get('experiment_id') or 0}/runs/{run['run_id']}",
    )
    if uri.startswith(("http://", "https://")):
        return "MLflow run", f"{uri.rstrip('/')}/{page}"
    return "MLflow run", f"{UI_ADDRESS}/{page} (run `hvdtrain ui` to serve {uri})"
