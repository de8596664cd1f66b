"""Turn the workers' raw per-rank timings into the report: rows, ratios, a table, JSON, PNG plots.

Every figure comes from all ranks' own medians: times are averaged over ranks (the slowest rank
is kept too), totals (samples/s) are sums over ranks, never rank 0's figure times N.

Noise is part of every figure: each row keeps its windows (the ranks' mean time in each timed
window) and their spread [min, max]; a ratio of two contenders is taken window by window (they ran
back to back) and is *settled* only when its whole spread is on one side of 1.0.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from importlib import metadata
from pathlib import Path

SCHEMA = "hvdtrain.bench/4"  # 4: ZeRO rows per framework (torch, keras)
GB = 1e9


def bus_factor(np: int) -> float:
    """Bytes each rank sends and receives per byte reduced by a ring allreduce: 2(N-1)/N."""
    return 2 * (np - 1) / np


def timing(per_rank_windows: list[list[float]]) -> dict:
    """A contender's figures from every rank's seconds per window: ``time_s`` is the mean over ranks
    of each rank's median, ``windows_s`` the ranks' mean in each window, ``spread_s`` their
    [min, max]."""
    medians = [statistics.median(windows) for windows in per_rank_windows]
    windows = [statistics.fmean(window) for window in zip(*per_rank_windows)]
    return {
        "time_s": statistics.fmean(medians),
        "time_s_max": max(medians),
        "spread_s": [min(windows), max(windows)],
        "windows_s": windows,
        "per_rank_time_s": medians,
    }


def settled(low: float, high: float) -> str:
    """How a ratio's spread sits against 1.0: ``above``, ``below`` or ``crosses`` (noise)."""
    return "above" if low > 1 else "below" if high < 1 else "crosses"


MIN_WINDOWS_TO_SETTLE = 3  # fewer windows show no spread worth the name
FEW_WINDOWS = "too few windows"


def window_ratio(top: list[float], bottom: list[float]) -> dict:
    """The ratio of two contenders window by window:
    median, [min, max] and whether it is settled."""
    ratios = [t / b for t, b in zip(top, bottom)]
    low, high = min(ratios), max(ratios)
    verdict = settled(low, high) if len(ratios) >= MIN_WINDOWS_TO_SETTLE else FEW_WINDOWS
    return {
        "ratio": statistics.median(ratios),
        "ratio_min": low,
        "ratio_max": high,
        "vs_1": verdict,
        "ratios": ratios,
    }


def allreduce_rows(raw: dict, np: int, link_Bps: float | None = None) -> list[dict]:
    """``link_Bps``: the hosts' link rate in bytes/s, for busbw as a fraction of it."""
    per_rank = raw["per_rank"]
    rows = []
    for size in per_rank[0]["sizes"]:
        for backend in per_rank[0]["sizes"][size]:
            found = timing([rank["sizes"][size][backend] for rank in per_rank])
            busbw = [
                int(size) / t * bus_factor(np) for t in (found["time_s"], *found["spread_s"][::-1])
            ]
            rows.append(
                {
                    "backend": backend,
                    "size_bytes": int(size),
                    **found,
                    "algbw_GBps": int(size) / found["time_s"] / GB,
                    "busbw_GBps": busbw[0] / GB,
                    "busbw_spread_GBps": [busbw[1] / GB, busbw[2] / GB],
                    **(
                        {
                            "link_fraction": busbw[0] / link_Bps,
                            "link_fraction_spread": [busbw[1] / link_Bps, busbw[2] / link_Bps],
                        }
                        if link_Bps
                        else {}
                    ),
                }
            )
    return rows


def fusion_rows(raw: dict, np: int) -> list[dict]:
    shape = raw["fusion_shape"]
    total = shape["tensors"] * shape["tensor_bytes"]
    rows = []
    for mode in raw["per_rank"][0]["fusion"]:
        found = timing([rank["fusion"][mode] for rank in raw["per_rank"]])
        rows.append(
            {
                "mode": mode,
                **shape,
                **found,
                "busbw_GBps": total / found["time_s"] / GB * bus_factor(np),
                "busbw_spread_GBps": [
                    total / t / GB * bus_factor(np) for t in found["spread_s"][::-1]
                ],
            }
        )
    return rows


def step_rows(raw: dict, framework: str, np: int) -> list[dict]:
    rows = []
    for model, loops in raw["per_rank"][0].items():
        batch = raw["batch_per_rank"][model]
        for loop in loops:
            found = timing([rank[model][loop] for rank in raw["per_rank"]])
            times = found.pop("per_rank_time_s")
            rows.append(
                {
                    "framework": framework,
                    "model": model,
                    "loop": loop,
                    "np": np,
                    "batch_per_rank": batch,
                    "compression": raw.get("compression", "none"),
                    "step_time_s": found.pop("time_s"),
                    "step_time_s_max": found.pop("time_s_max"),
                    **found,
                    "steps_per_s": statistics.fmean(1 / t for t in times),
                    "samples_per_s_total": sum(batch / t for t in times),
                    "samples_per_s_spread": [np * batch / t for t in found["spread_s"][::-1]],
                    "per_rank_step_s": times,
                }
            )
    return rows


# (framework, numerator loop, denominator loop): step-time ratios, > 1 means the numerator is
# slower.
RATIOS = [
    ("torch", "hvdtrain", "raw horovod"),
    ("torch", "hvdtrain", "ddp"),
    ("torch", "hvdtrain", "plain torch"),
    ("keras", "hvdtrain fit", "raw horovod fit"),
    ("keras", "hvdtrain loop", "raw horovod loop"),
]


def ratio_rows(steps: list[dict]) -> list[dict]:
    """Step-time ratios per window (hvdtrain / plain torch only at np=1: there it is what hvdtrain
    costs; at np=N the plain loop is the compute baseline of the link bound)."""
    index = {(r["framework"], r["model"], r["np"], r["loop"]): r["windows_s"] for r in steps}
    rows = []
    for framework, model, np in sorted({(r["framework"], r["model"], r["np"]) for r in steps}):
        for fw, top, bottom in RATIOS:
            if (
                fw == framework
                and (framework, model, np, top) in index
                and (framework, model, np, bottom) in index
                and (bottom != "plain torch" or np == 1)
            ):
                found = window_ratio(
                    index[framework, model, np, top], index[framework, model, np, bottom]
                )
                rows.append(
                    {
                        "framework": framework,
                        "model": model,
                        "np": np,
                        "numerator": top,
                        "denominator": bottom,
                        "step_time_ratio": found.pop("ratio"),
                        **found,
                    }
                )
    return rows


def scaling_rows(steps: list[dict]) -> list[dict]:
    """Samples/s at np=N over N x samples/s at np=1, for every loop measured at both; the spread
    pairs the worst window of one launch with the best of the other (they did not run together)."""
    single = {(r["framework"], r["model"], r["loop"]): r for r in steps if r["np"] == 1}
    rows = []
    for r in steps:
        one = single.get((r["framework"], r["model"], r["loop"]))
        if r["np"] > 1 and one and r["loop"] != "plain torch":
            rows.append(
                {
                    "framework": r["framework"],
                    "model": r["model"],
                    "loop": r["loop"],
                    "np": r["np"],
                    "efficiency": r["samples_per_s_total"] / (r["np"] * one["samples_per_s_total"]),
                    "efficiency_spread": [
                        r["samples_per_s_spread"][0] / (r["np"] * one["samples_per_s_spread"][1]),
                        r["samples_per_s_spread"][1] / (r["np"] * one["samples_per_s_spread"][0]),
                    ],
                }
            )
    return rows


def link_bound_rows(
    steps: list[dict], gradient_bytes: dict[str, int], link_Bps: float
) -> list[dict]:
    """What the link allows each torch model at np=N: the ring moves gradient bytes x 2(N-1)/N per
    step (half with fp16), at best overlapped with compute, so a step takes at least
    max(compute, link time). Compute is the plain loop at the same np (every rank computing at
    once on the shared cores, no allreduce); each loop's samples/s is set against the bound's."""
    plain = {
        (r["model"], r["np"]): r
        for r in steps
        if r["framework"] == "torch" and r["loop"] == "plain torch"
    }
    rows = []
    for r in steps:
        base = plain.get((r["model"], r["np"]))
        if r["framework"] != "torch" or r["np"] < 2 or r["loop"] == "plain torch" or not base:
            continue
        moved = (
            gradient_bytes[r["model"]]
            * bus_factor(r["np"])
            / (2 if r["compression"] == "fp16" else 1)
        )
        link_s = moved / link_Bps
        bound_s = max(base["step_time_s"], link_s)
        bound = r["np"] * r["batch_per_rank"] / bound_s
        rows.append(
            {
                "model": r["model"],
                "loop": r["loop"],
                "np": r["np"],
                "compression": r["compression"],
                "batch_per_rank": r["batch_per_rank"],
                "gradient_bytes": gradient_bytes[r["model"]],
                "link_s": link_s,
                "compute_s": base["step_time_s"],
                "limited_by": "link" if link_s >= base["step_time_s"] else "compute",
                "bound_samples_per_s": bound,
                "samples_per_s": r["samples_per_s_total"],
                "of_bound": r["samples_per_s_total"] / bound,
                "of_bound_spread": [v / bound for v in r["samples_per_s_spread"]],
            }
        )
    return rows


ZERO_STATE_TARGET = 1.05  # sharded state per rank within 5% of 1/N of the unsharded
ZERO_STEP_TARGET = 1.10  # sharded step time at most 1.1x the unsharded
ZERO_MEMORY_SHARE = 0.8  # of the bytes sharding saves, at least this share must leave the peak
UNSHARDED = "unsharded"
STAGE_2 = "sharded-grads"  # its gradients saved count towards its memory goal


def zero_rows(raw: dict, np: int, framework: str) -> list[dict]:
    """Per model and sharded mode of one framework: state bytes per rank and the step-time ratio of
    the mode over unsharded, with its spread: the ratio is taken per window (the modes ran back to
    back), of the ranks' mean times."""
    rows = []
    for model, found in raw["models"].items():
        per_rank = found["per_rank"]
        state = {mode: [rank["state_bytes"][mode] for rank in per_rank] for mode in raw["modes"]}
        times = {
            mode: [
                statistics.fmean(window)
                for window in zip(*(rank["windows"][mode] for rank in per_rank))
            ]
            for mode in raw["modes"]
        }
        ideal = statistics.fmean(state[UNSHARDED]) / np
        for mode in raw["modes"]:
            if mode == UNSHARDED:
                continue
            ratio = window_ratio(times[mode], times[UNSHARDED])
            rows.append(
                {
                    "framework": framework,
                    "model": model,
                    "mode": mode,
                    "np": np,
                    "parameters": found["parameters"],
                    "batch_per_rank": found["batch_per_rank"],
                    "state_bytes_unsharded": statistics.fmean(state[UNSHARDED]),
                    "state_bytes_max": max(state[mode]),
                    "per_rank_state_bytes": state[mode],
                    "state_over_ideal": max(state[mode]) / ideal,
                    "step_s_unsharded": statistics.median(times[UNSHARDED]),
                    "step_s": statistics.median(times[mode]),
                    **{f"step_{key}": value for key, value in ratio.items()},
                }
            )
    return rows


def memory_row(launch: dict) -> dict:
    """One framework's model and mode's memory launch; peaks, state and gradient bytes are the max
    over ranks."""
    per_rank = launch["per_rank"]
    return {
        "framework": launch["framework"],
        "np": launch["np"],
        "model": launch["model"],
        "mode": launch["mode"],
        "parameters": launch["parameters"],
        "steps": launch["steps"],
        "phases": launch["phases"],
        "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in per_rank),
        "peak_rss_bytes_mean": statistics.fmean(r["peak_rss_bytes"] for r in per_rank),
        "rss_before_bytes_mean": statistics.fmean(r["rss_before_bytes"] for r in per_rank),
        "state_bytes_max": max(r["state_bytes"] for r in per_rank),
        "grad_bytes_max": max(r["grad_bytes"] for r in per_rank),
        "per_rank_rss_before_bytes": [r["rss_before_bytes"] for r in per_rank],
        "per_rank_rss_phase_bytes": [r["rss_phase_bytes"] for r in per_rank],
        "per_rank_peak_rss_bytes": [r["peak_rss_bytes"] for r in per_rank],
    }


def memory_goal(unsharded: dict, row: dict) -> dict:
    """Issue 27's memory goal for a sharded launch against the unsharded one of the same framework,
    model and np: peak RSS at most the unsharded peak less 0.8 x the state saved, and for stage 2
    less 0.8 x the gradients saved as well."""
    state_saved = unsharded["state_bytes_max"] - row["state_bytes_max"]
    grad_saved = unsharded["grad_bytes_max"] - row["grad_bytes_max"]
    counted = state_saved + (grad_saved if row["mode"] == STAGE_2 else 0)
    limit = unsharded["peak_rss_bytes_max"] - ZERO_MEMORY_SHARE * counted
    return {
        "state_saved_bytes": state_saved,
        "grad_saved_bytes": grad_saved,
        "peak_saved_bytes": unsharded["peak_rss_bytes_max"] - row["peak_rss_bytes_max"],
        "peak_limit_bytes": limit,
        "meets_goal": row["peak_rss_bytes_max"] <= limit,
    }


def memory_rows(memory: list[dict]) -> list[dict]:
    """The memory launches' rows, a sharded row with its goal against the unsharded one of its
    framework, model and np."""
    rows = [memory_row(launch) for launch in memory]
    unsharded = {_memory_key(r): r for r in rows if r["mode"] == UNSHARDED}
    return [
        {**r, **memory_goal(unsharded[_memory_key(r)], r)} if r["mode"] != UNSHARDED else r
        for r in rows
    ]


def _memory_key(row: dict) -> tuple[str, str, int]:
    return row["framework"], row["model"], row["np"]


def machine() -> dict:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    versions = {}
    for package in ("horovod", "torch", "tensorflow", "tensorflow-cpu", "keras", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": _gpu(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _gpu() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def build(launches: dict[int, dict], config: dict, memory: list[dict] = ()) -> dict:
    """The report from ``{np: worker results}`` and the optimizer-state sharding memory launches;
    ``config["link_Bps"]`` (test hosts' link rate in bytes/s) adds the link fractions and bounds."""
    link = config.get("link_Bps")
    report = {
        "schema": SCHEMA,
        "machine": machine(),
        "config": config,
        "launches": [
            {
                "np": np,
                "hosts": r["hosts"],
                "horovod_env": r["horovod_env"],
                "threads_per_rank": r["threads_per_rank"],
                "load_average": r["load_average"],
                "wall_s": r["wall_s"],
            }
            for np, r in sorted(launches.items())
        ],
        "allreduce": [],
        "fusion": [],
        "steps": [],
        "zero": [],
        "zero_modes": next(
            (
                {framework: found["modes"] for framework, found in r["zero"].items()}
                for r in launches.values()
                if "zero" in r
            ),
            {},
        ),
        "zero_memory": memory_rows(memory),
    }
    gradient_bytes = {}
    for np, raw in sorted(launches.items()):
        gradient_bytes.update(raw.get("torch_steps", {}).get("gradient_bytes", {}))
        if "allreduce" in raw:
            report["allreduce"] += [
                {"np": np, **row} for row in allreduce_rows(raw["allreduce"], np, link)
            ]
            report["fusion"] += [{"np": np, **row} for row in fusion_rows(raw["allreduce"], np)]
        for framework in ("torch", "keras"):
            if f"{framework}_steps" in raw:
                report["steps"] += step_rows(raw[f"{framework}_steps"], framework, np)
        for framework, found in raw.get("zero", {}).items():
            report["zero"] += zero_rows(found, np, framework)
    report["ratios"] = ratio_rows(report["steps"])
    report["scaling"] = scaling_rows(report["steps"])
    report["link_bound"] = link_bound_rows(report["steps"], gradient_bytes, link) if link else []
    report["targets"] = targets(report)
    return report


def targets(report: dict) -> dict:
    """The issues' targets, read off this run; a claim holds only when its whole spread is on the
    right side of it."""
    adapter = {
        f"{r['framework']}/{r['model']}/np{r['np']}/{r['numerator']}": r["step_time_ratio"]
        for r in report["ratios"]
        if r["denominator"].startswith("raw")
    }
    plain = {
        f"torch/{r['model']}/np1": r["step_time_ratio"]
        for r in report["ratios"]
        if r["denominator"] == "plain torch"
    }
    found = {
        "adapter_vs_raw_step_time": adapter,
        "adapter_within_2pct": all(v <= 1.02 for v in adapter.values()) if adapter else None,
        "adapter_vs_plain_torch_step_time": plain,
        "adapter_within_2pct_of_plain": all(v <= 1.02 for v in plain.values()) if plain else None,
        "hvdtrain_vs_ddp_step_time": {
            f"{r['model']}/np{r['np']}": [
                r["step_time_ratio"],
                r["ratio_min"],
                r["ratio_max"],
                r["vs_1"],
            ]
            for r in report["ratios"]
            if r["denominator"] == "ddp"
        },
    }
    if report["allreduce"]:
        top_np = max(r["np"] for r in report["allreduce"])
        largest = max(r["size_bytes"] for r in report["allreduce"])
        bw = {
            r["backend"]: r["busbw_GBps"]
            for r in report["allreduce"]
            if r["size_bytes"] == largest and r["np"] == top_np
        }
        found["largest_size_bytes"] = largest
        found["busbw_GBps"] = bw
        found["horovod_busbw_over_torch_distributed"] = {
            b: v / bw["torch.distributed"]
            for b, v in bw.items()
            if b.startswith("horovod") and "fp16" not in b
        }
        fp16 = fp16_ratios(report["allreduce"])
        found["hvdtrain_fp16_speed_over_torch_distributed_fp16"] = {
            f"{r['framework']}/np{r['np']}": [r["ratio"], r["ratio_min"], r["ratio_max"], r["vs_1"]]
            for r in fp16
        }
        found["hvdtrain_fp16_not_below_torch_distributed_fp16"] = all(
            r["ratio_min"] >= 1 and r["vs_1"] != FEW_WINDOWS for r in fp16
        )
    if report["link_bound"] or any("link_fraction" in r for r in report["allreduce"]):
        found.update(link_targets(report))
    sharded = [r for r in report["zero"] if r["np"] > 1]
    if sharded:
        found["zero_state_within_5pct_of_1_over_n"] = all(
            r["state_over_ideal"] <= ZERO_STATE_TARGET for r in sharded
        )
        found["zero_step_ratio"] = {
            f"{r['framework']}/{r['model']}/np{r['np']}/{r['mode']}": [
                r["step_ratio"],
                r["step_ratio_min"],
                r["step_ratio_max"],
            ]
            for r in sharded
        }
        found["zero_step_ratio_at_most_1_1"] = all(
            r["step_ratio_max"] <= ZERO_STEP_TARGET and r["step_vs_1"] != FEW_WINDOWS
            for r in sharded
        )
    goals = [r for r in report["zero_memory"] if r["mode"] != UNSHARDED]
    if goals:
        found["zero_peak_rss_goal"] = {
            f"{r['framework']}/{r['model']}/np{r['np']}/{r['mode']}": r["meets_goal"] for r in goals
        }
        found["zero_peak_rss_goal_met"] = all(r["meets_goal"] for r in goals)
    return found


# allreduce.HVD_TORCH_QUIET and allreduce.HVDTRAIN_FP16: what hvdtrain.torch's optimizer does
HVDTRAIN_WAIT = "horovod.torch, hvdtrain's wait"
HVDTRAIN_FP16 = "horovod.torch, hvdtrain's fp16"
TORCH_DIST_FP16 = "torch.distributed, fp16 copy"  # allreduce.TORCH_DIST_FP16
# allreduce.HVDTRAIN_FP16 and allreduce.HVD_TF_FP16: what each adapter sends with compression="fp16"
FP16_PATHS = {"torch": HVDTRAIN_FP16, "keras": "horovod.tensorflow, fp16"}


def fp16_ratios(rows: list[dict]) -> list[dict]:
    """Issue 27's fp16 goal at the largest size, per np and framework: torch.distributed's float16
    copy's time over the adapter's fp16 time, window by window (> 1: hvdtrain's fp16 is faster)."""
    largest = max(r["size_bytes"] for r in rows)
    at = {(r["np"], r["backend"]): r for r in rows if r["size_bytes"] == largest}
    return [
        {
            "np": np,
            "framework": framework,
            "size_bytes": largest,
            **window_ratio(at[np, TORCH_DIST_FP16]["windows_s"], at[np, backend]["windows_s"]),
        }
        for np in sorted({np for np, _ in at})
        for framework, backend in FP16_PATHS.items()
    ]


LINK_TARGET = 0.95  # 64 MB allreduce bus bandwidth over the link rate
FP16_TARGET = 1.8  # fp16's effective (float32) bus bandwidth over the link rate
BOUND_TARGET = 0.90  # samples/s over what the link bound allows


def link_targets(report: dict) -> dict:
    """Issue 16's goals across test hosts: training against the link bound and DDP, and with the
    allreduce part, bandwidth at the largest size measured (64 MB in the full run)."""
    hvdtrain = [r for r in report["link_bound"] if r["loop"] == "hvdtrain"]
    ddp = [r for r in report["ratios"] if r["denominator"] == "ddp" and r["np"] > 1]
    found = {
        "hvdtrain_not_slower_than_ddp": all(
            r["ratio_max"] <= 1 and r["vs_1"] != FEW_WINDOWS for r in ddp
        )
        if ddp
        else None,
        "hvdtrain_of_link_bound": {
            f"{r['model']}/np{r['np']}": [r["of_bound"], *r["of_bound_spread"]] for r in hvdtrain
        },
        "hvdtrain_at_least_90pct_of_bound": all(
            r["of_bound_spread"][0] >= BOUND_TARGET for r in hvdtrain
        )
        if hvdtrain
        else None,
    }
    if not report["allreduce"]:
        return found
    largest = max(r["size_bytes"] for r in report["allreduce"])
    at = {(r["np"], r["backend"]): r for r in report["allreduce"] if r["size_bytes"] == largest}
    nps = sorted({np for np, _ in at})
    hvd = {np: at[np, HVDTRAIN_WAIT] for np in nps}
    versus = {
        np: window_ratio(at[np, "torch.distributed"]["windows_s"], hvd[np]["windows_s"])
        for np in nps
    }
    fp16 = {
        (framework, np): at[np, backend] for np in nps for framework, backend in FP16_PATHS.items()
    }
    return {
        "link_fraction_hvdtrain_wait": {
            f"np{np}": [r["link_fraction"], *r["link_fraction_spread"]] for np, r in hvd.items()
        },
        "allreduce_at_least_95pct_of_link": all(
            r["link_fraction_spread"][0] >= LINK_TARGET for r in hvd.values()
        ),
        "hvdtrain_wait_speed_over_torch_distributed": {
            f"np{np}": [v["ratio"], v["ratio_min"], v["ratio_max"], v["vs_1"]]
            for np, v in versus.items()
        },
        "hvdtrain_wait_not_below_torch_distributed": all(
            v["ratio_min"] >= 1 and v["vs_1"] != FEW_WINDOWS for v in versus.values()
        ),
        "fp16_effective_over_link": {
            f"{framework}/np{np}": [r["link_fraction"], *r["link_fraction_spread"]]
            for (framework, np), r in fp16.items()
        },
        "fp16_at_least_1_8x_link": all(
            r["link_fraction_spread"][0] >= FP16_TARGET for r in fp16.values()
        ),
        **found,
    }


def write_json(report: dict, out: Path) -> Path:
    path = out / "bench.json"
    path.write_text(json.dumps(report, indent=1))
    return path


def table(report: dict) -> str:
    lines = []
    link = report["config"].get("link_Bps")
    if report["allreduce"]:
        lines += [
            "Allreduce, float32, sum (time = mean over ranks of each rank's median; busbw = "
            "2(N-1)/N x size / time, fp16 rows counting the float32 bytes; [min, max] over "
            "windows)" + (f"; link = {link / 1e6:.1f} MB/s per host" if link else ""),
            f"{'np':>3} {'size':>9} {'backend':<33} {'time ms':>9} {'busbw GB/s':>11} "
            f"{'[min, max]':>17}" + (f" {'of link':>8} {'[min, max]':>14}" if link else ""),
        ]
        lines += [
            f"{r['np']:>3} {_size(r['size_bytes']):>9} {r['backend']:<33} "
            f"{r['time_s'] * 1e3:>9.3f} {r['busbw_GBps']:>11.4f} "
            f"{_range(r['busbw_spread_GBps'], 4):>17}"
            + (
                f" {r['link_fraction']:>8.3f} {_range(r['link_fraction_spread'], 3):>14}"
                if link
                else ""
            )
            for r in report["allreduce"]
        ]
        lines += [
            "",
            "fp16, window by window: torch.distributed's float16 copy time / hvdtrain's fp16 time "
            "(> 1: hvdtrain's is faster; median [min, max])",
        ]
        lines += [
            f"{r['np']:>3} {r['framework']:<6} {_size(r['size_bytes']):>9} {r['ratio']:.3f} "
            f"{_range([r['ratio_min'], r['ratio_max']], 3)} {_verdict(r['vs_1'])}"
            for r in fp16_ratios(report["allreduce"])
        ]
        lines += [
            "",
            "Tensor fusion: many small tensors per operation",
            f"{'np':>3} {'tensors':>12} {'mode':<45} {'time ms':>9} {'busbw GB/s':>11} "
            f"{'[min, max]':>17}",
        ]
        lines += [
            f"{r['np']:>3} {r['tensors']:>4} x {_size(r['tensor_bytes']):>5} {r['mode']:<45} "
            f"{r['time_s'] * 1e3:>9.3f} {r['busbw_GBps']:>11.4f} "
            f"{_range(r['busbw_spread_GBps'], 4):>17}"
            for r in report["fusion"]
        ]
        lines.append("")
    if report["steps"]:
        lines += [
            "Training step (fixed batch; samples/s total = sum over ranks; [min, max] over "
            "windows)",
            f"{'fw':<6} {'model':<5} {'np':>3} {'loop':<18} {'step ms':>9} {'[min, max]':>17} "
            f"{'samples/s':>10}",
        ]
        lines += [
            f"{r['framework']:<6} {r['model']:<5} {r['np']:>3} {r['loop']:<18} "
            f"{r['step_time_s'] * 1e3:>9.2f} {_range([v * 1e3 for v in r['spread_s']], 1):>17} "
            f"{r['samples_per_s_total']:>10.0f}"
            for r in report["steps"]
        ]
        lines += [
            "",
            "Step-time ratios, window by window (> 1: the first is slower; median [min, max]; "
            "settled only when the spread does not cross 1)",
        ]
        lines += [
            f"{r['framework']:<6} {r['model']:<5} np={r['np']} {r['numerator']} / "
            f"{r['denominator']}: {r['step_time_ratio']:.3f} "
            f"{_range([r['ratio_min'], r['ratio_max']], 3)} {_verdict(r['vs_1'])}"
            for r in report["ratios"]
        ]
        lines += [
            "",
            "Scaling efficiency (samples/s at np=N over N x np=1; [worst, best] pairing of "
            "windows)",
        ]
        lines += [
            f"{r['framework']:<6} {r['model']:<5} {r['loop']:<18} np={r['np']}: "
            f"{r['efficiency']:.2f} {_range(r['efficiency_spread'], 2)}"
            for r in report["scaling"]
        ]
    if report.get("link_bound"):
        lines += [
            "",
            "Link bound (torch): a step takes at least max(compute, gradient bytes x 2(N-1)/N / "
            "link rate); compute = the plain loop at the same np",
            f"{'model':<5} {'np':>3} {'loop':<12} {'grad MB':>8} {'link ms':>8} {'compute ms':>10} "
            f"{'by':>7} {'bound/s':>8} {'samples/s':>10} {'of bound':>9} {'[min, max]':>14}",
        ]
        lines += [
            f"{r['model']:<5} {r['np']:>3} {r['loop']:<12} {r['gradient_bytes'] / 1e6:>8.2f} "
            f"{r['link_s'] * 1e3:>8.1f} {r['compute_s'] * 1e3:>10.1f} {r['limited_by']:>7} "
            f"{r['bound_samples_per_s']:>8.0f} {r['samples_per_s']:>10.0f} {r['of_bound']:>9.3f} "
            f"{_range(r['of_bound_spread'], 3):>14}"
            for r in report["link_bound"]
        ]
    mib = 1 << 20
    if report["zero"]:
        lines += [
            "",
            "Optimizer sharding (ZeRO), AdamW, float32: state per rank and step time against "
            "unsharded (ratio: median over windows [min, max])",
            f"{'fw':<6} {'model':<5} {'params':>7} {'np':>3} {'mode':<13} {'state MiB/rank':>15} "
            f"{'mode':>7} {'x 1/N':>6} {'step s':>8} {'mode':>8} {'step ratio':>22}",
        ]
        lines += [
            f"{r['framework']:<6} {r['model']:<5} {r['parameters'] / 1e6:>6.2f}M {r['np']:>3} "
            f"{r['mode']:<13} "
            f"{r['state_bytes_unsharded'] / mib:>15.1f} {r['state_bytes_max'] / mib:>7.1f} "
            f"{r['state_over_ideal']:>6.3f} {r['step_s_unsharded']:>8.3f} {r['step_s']:>8.3f} "
            f"{r['step_ratio']:>8.3f} {_range([r['step_ratio_min'], r['step_ratio_max']], 3)} "
            f"{_verdict(r['step_vs_1'])}"
            for r in report["zero"]
        ]
    if report["zero_memory"]:
        lines += [
            "",
            "Memory per rank (a process per framework, model and mode; max over ranks; goal: "
            f"peak <= unsharded - {ZERO_MEMORY_SHARE} x state saved, {STAGE_2} also - "
            f"{ZERO_MEMORY_SHARE} x gradients saved)",
            f"{'fw':<6} {'model':<5} {'np':>3} {'mode':<13} {'before MiB':>11} {'peak MiB':>9} "
            f"{'state MiB':>10} {'grads MiB':>10} {'peak saved':>11} {'limit MiB':>10} goal",
        ]
        lines += [
            f"{r['framework']:<6} {r['model']:<5} {r['np']:>3} {r['mode']:<13} "
            f"{r['rss_before_bytes_mean'] / mib:>11.0f} "
            f"{r['peak_rss_bytes_max'] / mib:>9.0f} {r['state_bytes_max'] / mib:>10.1f} "
            f"{r['grad_bytes_max'] / mib:>10.1f}"
            + (
                f" {r['peak_saved_bytes'] / mib:>11.0f} {r['peak_limit_bytes'] / mib:>10.0f} "
                f"{'met' if r['meets_goal'] else 'not met'}"
                if "meets_goal" in r
                else ""
            )
            for r in report["zero_memory"]
        ]
    return "\n".join(lines)


def _verdict(vs_1: str) -> str:
    return {"crosses": "noise", FEW_WINDOWS: FEW_WINDOWS}.get(vs_1, f"settled {vs_1} 1")


def _range(pair: list[float], digits: int) -> str:
    return f"[{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"
