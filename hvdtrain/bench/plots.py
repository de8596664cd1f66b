"""PNG plots of a report (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (the backend must be chosen first)


def draw(report: dict, out: Path) -> list[Path]:
    paths = []
    if report["allreduce"]:
        paths.append(_bandwidth(report, out / "allreduce_busbw.png"))
    if report["steps"]:
        paths.append(_steps(report, out / "step_throughput.png"))
    return paths


def _bandwidth(report: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for backend in dict.fromkeys(r["backend"] for r in report["allreduce"]):
        rows = [r for r in report["allreduce"] if r["backend"] == backend]
        ax.plot([r["size_bytes"] for r in rows], [r["busbw_GBps"] for r in rows], marker="o", label=backend)
    ax.set(xscale="log", xlabel="tensor size (bytes)", ylabel="bus bandwidth (GB/s)",
           title=f"Allreduce, float32, np={report['allreduce'][0]['np']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _steps(report: dict, path: Path) -> Path:
    groups = list(dict.fromkeys((r["framework"], r["model"]) for r in report["steps"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 4.5), squeeze=False)
    for ax, (framework, model) in zip(axes[0], groups):
        rows = [r for r in report["steps"] if (r["framework"], r["model"]) == (framework, model)]
        loops = list(dict.fromkeys(r["loop"] for r in rows))
        nps = sorted({r["np"] for r in rows})
        width = 0.8 / len(nps)
        for i, np in enumerate(nps):
            values = [next((r["samples_per_s_total"] for r in rows if r["loop"] == loop and r["np"] == np), 0)
                      for loop in loops]
            ax.bar([x + i * width for x in range(len(loops))], values, width, label=f"np={np}")
        ax.set_xticks([x + width * (len(nps) - 1) / 2 for x in range(len(loops))], loops, rotation=30, ha="right")
        ax.set(title=f"{framework} {model}", ylabel="samples/s (all ranks)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
