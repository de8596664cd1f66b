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
    if report.get("link_bound"):
        paths.append(_scaling(report, out / "hosts_scaling.png"))
    if report.get("zero_memory"):
        paths.append(_memory(report, out / "zero_memory.png"))
    return paths


def _memory(report: dict, path: Path) -> Path:
    """RSS over the steps' phases, a row of panels per framework and a panel per model and np in
    it, a line per mode and rank (color: mode, style: rank), starting before the optimizer exists.
    Each framework samples at its own phases (Keras: after each whole step)."""
    rows = report["zero_memory"]
    frameworks = list(dict.fromkeys(r["framework"] for r in rows))
    columns = list(dict.fromkeys((r["model"], r["np"]) for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(
        len(frameworks),
        len(columns),
        figsize=(6 * len(columns), 4.5 * len(frameworks)),
        squeeze=False,
    )
    for framework, line in zip(frameworks, axes):
        for ax, (model, np) in zip(line, columns):
            mine = [
                r for r in rows if (r["framework"], r["model"], r["np"]) == (framework, model, np)
            ]
            if not mine:
                ax.set_visible(False)
                continue
            for r in mine:
                for rank, (before, phases) in enumerate(
                    zip(r["per_rank_rss_before_bytes"], r["per_rank_rss_phase_bytes"])
                ):
                    ax.plot(
                        [b / (1 << 20) for b in (before, *phases)],
                        color=f"C{modes.index(r['mode'])}",
                        linestyle=styles[rank % len(styles)],
                        marker=".",
                        label=f"{r['mode']}, rank {rank}",
                    )
            labels = ["before"] + [
                f"{step} {phase}"
                for step in range(1, mine[0]["steps"] + 1)
                for phase in mine[0]["phases"]
            ]
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
            ax.set(
                title=f"{framework} {model}, np={np}",
                ylabel="RSS (MiB)",
                xlabel="step, after phase",
            )
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, path)


def _bandwidth(report: dict, path: Path) -> Path:
    """Bus bandwidth vs size, one panel per np, with the spread over windows and the link rate."""
    nps = sorted({r["np"] for r in report["allreduce"]})
    link = report["config"].get("link_Bps")
    fig, axes = plt.subplots(1, len(nps), figsize=(7 * len(nps), 5), squeeze=False)
    for ax, np in zip(axes[0], nps):
        at = [r for r in report["allreduce"] if r["np"] == np]
        for backend in dict.fromkeys(r["backend"] for r in at):
            rows = [r for r in at if r["backend"] == backend]
            sizes = [r["size_bytes"] for r in rows]
            ax.plot(sizes, [r["busbw_GBps"] for r in rows], marker="o", label=backend)
            ax.fill_between(
                sizes,
                [r["busbw_spread_GBps"][0] for r in rows],
                [r["busbw_spread_GBps"][1] for r in rows],
                alpha=0.15,
            )
        if link:
            ax.axhline(
                link / 1e9,
                color="black",
                linestyle="--",
                label=f"link rate ({report['config']['link_rate']})",
            )
        ax.set(
            xscale="log",
            xlabel="tensor size (bytes)",
            ylabel="bus bandwidth (GB/s; fp16: float32 bytes)",
            title=f"Allreduce, float32, np={np}" + (" hosts" if link else ""),
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _scaling(report: dict, path: Path) -> Path:
    """Samples/s vs hosts per torch model and loop (spread as error bars), with the link bound."""
    models = list(dict.fromkeys(r["model"] for r in report["link_bound"]))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in report["steps"] if r["framework"] == "torch" and r["model"] == model]
        for loop in dict.fromkeys(r["loop"] for r in rows if r["loop"] != "plain torch"):
            mine = sorted((r for r in rows if r["loop"] == loop), key=lambda r: r["np"])
            ax.errorbar(
                [r["np"] for r in mine],
                [r["samples_per_s_total"] for r in mine],
                marker="o",
                capsize=3,
                yerr=[
                    [max(0, r["samples_per_s_total"] - r["samples_per_s_spread"][0]) for r in mine],
                    [max(0, r["samples_per_s_spread"][1] - r["samples_per_s_total"]) for r in mine],
                ],
                label=loop,
            )
        bound = {
            r["np"]: r["bound_samples_per_s"] for r in report["link_bound"] if r["model"] == model
        }
        ax.plot(
            list(bound),
            list(bound.values()),
            color="black",
            linestyle="--",
            label="bound: max(compute, link)",
        )
        ax.set(
            xlabel="hosts (one worker each)",
            ylabel="samples/s (all ranks)",
            title=f"torch {model}",
            xticks=sorted({r["np"] for r in rows}),
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _steps(report: dict, path: Path) -> Path:
    groups = list(dict.fromkeys((r["framework"], r["model"]) for r in report["steps"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 4.5), squeeze=False)
    for ax, (framework, model) in zip(axes[0], groups):
        rows = [r for r in report["steps"] if (r["framework"], r["model"]) == (framework, model)]
        loops = list(dict.fromkeys(r["loop"] for r in rows))
        nps = sorted({r["np"] for r in rows})
        width = 0.8 / len(nps)
        for i, np in enumerate(nps):
            values = [
                next(
                    (r["samples_per_s_total"] for r in rows if r["loop"] == loop and r["np"] == np),
                    0,
                )
                for loop in loops
            ]
            ax.bar([x + i * width for x in range(len(loops))], values, width, label=f"np={np}")
        ax.set_xticks(
            [x + width * (len(nps) - 1) / 2 for x in range(len(loops))],
            loops,
            rotation=30,
            ha="right",
        )
        ax.set(title=f"{framework} {model}", ylabel="samples/s (all ranks)")
        ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
