"""``hvdtrain gpu-check`` (``make gpu-check``): the GPU acceptance run, one command on a host with
NVIDIA GPUs. Each part runs in its own processes and lands in ``<out>/gpu-check.json`` and a table:

1. ``doctor``: versions, Horovod's NCCL build, the CUDA stack, live NCCL allreduces;
2. ``bandwidth``: NCCL allreduce bus bandwidth across all local GPUs, 1 MB - 1 GB
   (``hvdtrain bench --device gpu --parts allreduce``: horovod.torch, horovod.tensorflow,
   torch.distributed);
3. ``steps``: step time of hvdtrain vs plain PyTorch on 1 GPU, and vs raw Horovod and DDP on all
   GPUs, for the MLP and GPT models (``hvdtrain bench --device gpu --parts torch,keras``);
4. ``precision``: the digits examples on all GPUs, fp32 vs AMP (torch) and vs mixed precision
   (Keras): test accuracy within ``PRECISION_TOLERANCE``;
5. ``equivalence``: the 2-process tests against single-process references
   (tests/test_torch_adapter.py, tests/test_keras_adapter.py); on a GPU host their workers train
   on one GPU each (``init`` picks the local rank's GPU), so the gradients go through NCCL.

On a machine without a usable GPU it stops before any part, with one line, and exits 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout: gpu-check runs its tests and examples
SCHEMA = "hvdtrain.gpu-check/1"
BANDWIDTH_SIZES = "1M,4M,16M,64M,256M,1G"
PRECISION_TOLERANCE = 0.02  # test accuracy, mixed precision vs fp32 (digits: 360 test images)
EQUIVALENCE_TESTS = ["tests/test_torch_adapter.py", "tests/test_keras_adapter.py"]


@dataclass
class Part:
    name: str
    ok: bool | None  # None: not run (why in detail)
    detail: str
    seconds: float = 0.0
    data: dict = field(default_factory=dict)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "gpu-check",
        help="the GPU acceptance run: doctor, NCCL bandwidth, step time, "
        "mixed precision, 2-process equivalence (needs GPUs)",
        description=__doc__,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("gpu-check-results"),
        help="directory for gpu-check.json and the benchmarks' own reports",
    )
    parser.add_argument(
        "--quick", action="store_true", help="toy sizes and few repeats: a smoke test"
    )
    parser.set_defaults(func=run)


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the GPU checks (one line), or None when it can."""
    from .. import cudastack

    names, problem = cudastack.gpus()
    if problem:
        return problem
    if not names:
        return "no GPU on this machine (the driver lists none, torch sees none): nothing to check"
    return None


def run(args) -> int:
    reason = no_gpu_reason()
    if reason:
        print(f"hvdtrain gpu-check: {reason}", file=sys.stderr)
        return 1
    from .. import cudastack

    gpus, _ = cudastack.gpus()
    args.out = args.out.resolve()  # the parts run from the repository
    args.out.mkdir(parents=True, exist_ok=True)
    parts = []
    for part in (doctor, bandwidth, steps, precision, equivalence):
        print(f"hvdtrain gpu-check: {part.__name__} ...", flush=True)
        started = time.perf_counter()
        result = part(args, len(gpus))
        result.seconds = time.perf_counter() - started
        parts.append(result)
        print(_row(result), flush=True)
    from ..bench import report

    found = {
        "schema": SCHEMA,
        "machine": report.machine(),
        "gpus": gpus,
        "quick": args.quick,
        "parts": [asdict(p) for p in parts],
    }
    path = args.out / "gpu-check.json"
    path.write_text(json.dumps(found, indent=1))
    print("\n" + table(found) + f"\n\nwrote {path}")
    return 0 if all(p.ok is not False for p in parts) else 1


def _command(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def doctor(args, ngpus: int) -> Part:
    proc = _command([sys.executable, "-m", "hvdtrain", "doctor"], timeout=900)
    (args.out / "doctor.txt").write_text(proc.stdout + proc.stderr)
    return Part("doctor", proc.returncode == 0, _last_line(proc), data={"output": proc.stdout})


def _bench(args, ngpus: int, parts: str, extra: list[str], name: str) -> tuple[dict | None, str]:
    out = args.out / f"bench-{name}"
    argv = [
        sys.executable,
        "-m",
        "hvdtrain",
        "bench",
        "--device",
        "gpu",
        "--np",
        str(ngpus),
        "--parts",
        parts,
        "--out",
        str(out),
        *extra,
    ] + (["--quick", "--windows", "2"] if args.quick else [])
    proc = _command(argv, timeout=3600)
    if proc.returncode != 0:
        return None, f"hvdtrain bench failed (exit {proc.returncode}): {_last_line(proc)}"
    return json.loads((out / "bench.json").read_text()), ""


def bandwidth(args, ngpus: int) -> Part:
    if ngpus < 2:
        return Part("bandwidth", None, f"needs 2 or more GPUs, this host has {ngpus}")
    result, error = _bench(
        args,
        ngpus,
        "allreduce",
        ["--sizes", "1M,4M" if args.quick else BANDWIDTH_SIZES],
        "allreduce",
    )
    if result is None:
        return Part("bandwidth", False, error)
    busbw = {
        f"{r['backend']} {r['size_bytes']}": round(r["busbw_GBps"], 2) for r in result["allreduce"]
    }
    largest = result["targets"]["largest_size_bytes"]
    best = {
        r["backend"]: r["busbw_GBps"] for r in result["allreduce"] if r["size_bytes"] == largest
    }
    summary = ", ".join(f"{b} {v:.1f}" for b, v in best.items())
    return Part(
        "bandwidth",
        True,
        f"busbw GB/s at {largest >> 20} MB on {ngpus} GPUs: {summary}",
        data={"busbw_GBps": busbw},
    )


def steps(args, ngpus: int) -> Part:
    result, error = _bench(args, ngpus, "torch,keras", [], "steps")
    if result is None:
        return Part("steps", False, error)
    targets = result["targets"]
    ratios = {
        f"{r['framework']}/{r['model']}/np{r['np']} {r['numerator']} / {r['denominator']}": round(
            r["step_time_ratio"], 3
        )
        for r in result["ratios"]
    }
    plain = targets.get("adapter_vs_plain_torch_step_time", {})
    detail = (
        "hvdtrain / plain torch on 1 GPU: "
        f"{', '.join(f'{k} {v:.3f}' for k, v in plain.items()) or 'n/a'} (goal <= 1.02); hvdtrain "
        f"/ raw Horovod within 2%: {targets['adapter_within_2pct']}"
    )
    ok = targets.get("adapter_within_2pct_of_plain") is not False
    return Part("steps", ok, detail, data={"ratios": ratios, "targets": targets})


def precision(args, ngpus: int) -> Part:
    epochs = ["--epochs", "3"] if args.quick else []
    found = {}
    for framework, script in (
        ("torch", "torch_examples/digits.py"),
        ("keras", "tf_examples/digits.py"),
    ):
        for mode, flags in (("fp32", []), ("mixed", ["--mixed-precision"])):
            results = args.out / f"digits-{framework}-{mode}.json"
            proc = _command(
                [
                    sys.executable,
                    "-m",
                    "hvdtrain",
                    "run",
                    "-np",
                    str(ngpus),
                    script,
                    "--no-tracking",
                    "--results",
                    str(results),
                    *epochs,
                    *flags,
                ],
                timeout=1800,
            )
            if proc.returncode != 0:
                return Part(
                    "precision",
                    False,
                    f"{script} {' '.join(flags)} failed: {_last_line(proc)}",
                    data=found,
                )
            found[f"{framework} {mode}"] = json.loads(results.read_text())["metric"]
    gaps = {fw: found[f"{fw} mixed"] - found[f"{fw} fp32"] for fw in ("torch", "keras")}
    ok = all(abs(gap) <= PRECISION_TOLERANCE for gap in gaps.values())
    detail = ", ".join(
        f"{fw} {found[f'{fw} mixed']:.4f} vs fp32 {found[f'{fw} fp32']:.4f}" for fw in gaps
    )
    return Part(
        "precision",
        ok,
        f"test accuracy {detail} (tolerance {PRECISION_TOLERANCE})",
        data={"test_accuracy": found, "gap": gaps},
    )


def equivalence(args, ngpus: int) -> Part:
    if ngpus < 2:
        return Part("equivalence", None, f"needs 2 GPUs (one per process), this host has {ngpus}")
    # TF32 off: the references are fp32/fp64 sums, and TF32 matmuls would differ by more than the
    # tests' tolerances in the single-process and the 2-process runs alike.
    proc = _command(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *EQUIVALENCE_TESTS],
        timeout=3600,
        env={"NVIDIA_TF32_OVERRIDE": "0"},
    )
    (args.out / "equivalence.txt").write_text(proc.stdout + proc.stderr)
    summary = next(
        (
            line
            for line in reversed(proc.stdout.splitlines())
            if " passed" in line or " failed" in line
        ),
        _last_line(proc),
    )
    return Part("equivalence", proc.returncode == 0, summary.strip("= "))


def _row(part: Part) -> str:
    mark = {True: "x", False: " ", None: "-"}[part.ok]
    return f"  [{mark}] {part.name:<12}{part.detail} ({part.seconds:.0f} s)"


def table(found: dict) -> str:
    lines = [f"GPU check on {len(found['gpus'])} x {found['gpus'][0]} ([-]: not run on this host)"]
    lines += [_row(Part(**p)) for p in found["parts"]]
    failed = [p["name"] for p in found["parts"] if p["ok"] is False]
    lines.append("All parts passed." if not failed else f"Failed: {', '.join(failed)}.")
    return "\n".join(lines)
