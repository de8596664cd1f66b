"""``hvdtrain doctor``: is this install able to train?
Versions, Horovod's build, a live allreduce."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

FIX = "run `make install` (or `bash scripts/install.sh`)"
# Horovod extension name -> (display name, python module of the framework).
FRAMEWORKS = {"torch": ("PyTorch", "torch"), "tensorflow": ("TensorFlow", "tensorflow")}
PACKAGES = {
    "torch": ["torch"],
    "tensorflow": ["tensorflow", "tensorflow-cpu"],
    "keras": ["keras"],
    "mlflow": ["mlflow"],
    "horovod": ["horovod"],
}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check versions, Horovod's build and a 2-process allreduce"
    )
    parser.add_argument(
        "-np", type=int, default=2, help="processes for the live allreduce (default 2)"
    )
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds allowed per live allreduce"
    )
    parser.set_defaults(func=run)


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name, dists in PACKAGES.items():
        found[name] = next((v for v in map(_version, dists) if v), None)
    return found


def _version(dist: str) -> str | None:
    from ..core.versions import (
        installed,  # importlib.metadata, ~0.1 s of start-up: only when doctor runs
    )

    return installed(dist)


# One fresh interpreter per framework: imports the framework (its error is the message), then
# Horovod's extension for it, and prints what the extension was built with. Horovod's own probes
# (``extension_available``, ``gloo_built``, ...) fork a process per question, each importing
# TensorFlow first: five probes cost a minute of CPU where these two, run side by side, cost ~10 s.
PROBE = """
import json, sys
framework, extension = sys.argv[1:]
stage = "framework"
try:
    __import__(framework)
    stage = "extension"
    print(json.dumps({"reached": stage}), flush=True)  # a crash from here on is the extension's
    hvd = __import__("horovod." + extension, fromlist=["_"])
    facts = {"gloo": bool(hvd.gloo_built()), "mpi": bool(hvd.mpi_built()),
             "nccl": int(hvd.nccl_built() or 0)}
    if framework == "torch":
        import torch
        facts["cuda"] = torch.version.cuda is not None and torch.cuda.is_available()
except Exception as err:
    facts = {"failed": stage, "error": f"{type(err).__name__}: {err}".splitlines()[0]}
print(json.dumps(facts))
"""


@dataclass(frozen=True)
class ExtensionFacts:
    """What one framework's probe found: ``failed`` is None, "framework" (it does not import) or
    "extension" (Horovod's extension for it does not load); the flags come from a loaded one."""

    failed: str | None
    error: str
    gloo: bool = False
    mpi: bool = False
    nccl: int = 0
    cuda: bool = False


def probe_extensions() -> dict[str, ExtensionFacts]:
    """Each framework's probe, all started at once; keyed by Horovod extension name."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = {
        ext: subprocess.Popen(
            [sys.executable, "-c", PROBE, module, ext],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for ext, (_, module) in FRAMEWORKS.items()
    }
    return {ext: _facts(proc) for ext, proc in started.items()}


def _facts(proc: subprocess.Popen) -> ExtensionFacts:
    out, err = proc.communicate()
    lines = out.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else {"reached": "framework"}
    except ValueError:
        found = {"reached": "framework"}
    if "reached" in found:  # the interpreter died (a crash in a native import) at that stage
        tail = err.strip().splitlines()
        return ExtensionFacts(found["reached"], tail[-1] if tail else f"exit {proc.returncode}")
    return ExtensionFacts(found.pop("failed", None), found.pop("error", ""), **found)


def build_checks(probed: dict[str, ExtensionFacts]) -> list[Check]:
    """What Horovod was built with and for; a missing framework or controller, or a framework
    other than the one Horovod was compiled against, is a failed check."""
    from ..core import versions

    key = versions.recorded()
    mismatched = versions.mismatches()
    checks = [
        Check(
            "Build key",
            not mismatched,
            f"{mismatched[0]}: {versions.FIX}"
            if mismatched
            else (
                _key_text(key)
                if key
                else "not recorded (Horovod not installed by scripts/install.sh)"
            ),
        )
    ]
    for ext, (display, _) in FRAMEWORKS.items():
        facts = probed[ext]
        adapter = "torch" if ext == "torch" else "keras"
        wrong = versions.mismatches(adapter, key) if key else []
        if facts.failed == "framework":
            checks.append(
                Check(display, False, f"{display} cannot be imported ({facts.error}): {FIX}")
            )
        elif wrong:  # Horovod's extension fails to load: say why, not "built without"
            checks.append(Check(display, False, f"{wrong[0]}: {versions.FIX}"))
        elif facts.failed == "extension":
            checks.append(Check(display, False, f"Horovod was built without {display}: {FIX}"))
        else:
            checks.append(Check(display, True, "built"))
    loaded = [facts for facts in probed.values() if facts.failed is None]
    if not loaded:
        checks.append(Check("Controllers", False, f"no framework's Horovod extension loads: {FIX}"))
        return checks
    built = loaded[0]  # every extension of one build has the same controllers
    gpu_wanted = probed["torch"].cuda
    checks.append(
        Check(
            "Gloo controller",
            built.gloo,
            "built" if built.gloo else f"Horovod was built without Gloo: {FIX}",
        )
    )
    checks.append(
        Check(
            "MPI controller",
            True,
            "built" if built.mpi else "not built (optional; needs mpicc at install)",
        )
    )
    checks.append(
        Check(
            "NCCL ops",
            bool(built.nccl) or not gpu_wanted,
            f"built (NCCL {_nccl_code(built.nccl)})"
            if built.nccl
            else (
                f"CUDA torch but Horovod was built without NCCL: {FIX}"
                if gpu_wanted
                else "not built (CPU install)"
            ),
        )
    )
    return checks


def _nccl_code(code: int) -> str:
    """Horovod's ``nccl_built()`` is the NCCL_VERSION_CODE it was compiled with: 23007 -> 2.30.7."""
    return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"


def cuda_stack_checks() -> tuple[list[Check], list[str]]:
    """A GPU build's CUDA stack: the CUDA each framework and NCCL were built for, whether they load
    in one process, and the GPUs. No GPU is one line, not a failure: the build
    can still be checked."""
    from .. import cudastack

    torch_facts, tf = cudastack.torch_facts(), cudastack.tensorflow_facts()
    checks = [
        Check(
            "torch CUDA",
            torch_facts["cuda"] is not None,
            f"torch {torch_facts['version']} built for CUDA {torch_facts['cuda']}",
        ),
        Check(
            "TensorFlow CUDA",
            tf["cuda_build"],
            f"{tf['dist']} {tf['version']} built for CUDA {tf['cuda']}, cuDNN {tf['cudnn']}"
            if tf["cuda_build"]
            else f"{tf['dist']} {tf['version']} is a CPU build: {FIX}",
        ),
    ]
    wheels = cudastack.nccl_wheels()
    checks.append(
        Check(
            "NCCL library",
            len(wheels) == 1,
            ", ".join(f"{w.dist} {w.version} (CUDA {w.cuda_major})" for w in wheels)
            + ("" if len(wheels) == 1 else f": exactly one NCCL wheel must be installed; {FIX}"),
        )
    )
    try:
        loaded = cudastack.check_load()
        checks.append(
            Check(
                "one process",
                True,
                "torch, TensorFlow and Horovod's NCCL ops load together: "
                + loaded[0].split(": ", 1)[1],
            )
        )
    except cudastack.StackError as err:
        checks.append(Check("one process", False, f"{err}; {FIX}"))
    names, problem = cudastack.gpus()
    if problem:
        checks.append(Check("GPUs", False, problem))
    elif not names:
        checks.append(
            Check(
                "GPUs",
                True,
                "none on this machine: the NCCL build is checked, not run "
                "(live GPU allreduce skipped)",
            )
        )
    else:
        checks.append(
            Check(
                "GPUs",
                True,
                f"{len(names)} x {names[0]}"
                + ("" if len(set(names)) == 1 else f" (+ {', '.join(sorted(set(names[1:])))})"),
            )
        )
    return checks, names


def _key_text(key) -> str:
    return (
        f"Horovod {key.horovod} for torch {key.torch}, TensorFlow {key.tensorflow}, "
        f"Python {key.python[0]}.{key.python[1:]}, CUDA {key.cuda}"
    )


def live_allreduce(framework: str, np: int, timeout: float, device: str = "cpu") -> Check:
    """Run ``hvdtrain.cli.allreduce_check`` on ``np`` local ranks through horovodrun (``device``
    gpu: one GPU per rank, so Horovod reduces with NCCL)."""
    from ..launch import horovodrun

    cmd = [
        *horovodrun.COMMAND,
        "-np",
        str(np),
        "-H",
        f"localhost:{np}",
        "--gloo",
        sys.executable,
        "-m",
        "hvdtrain.cli.allreduce_check",
        framework,
        device,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    name = f"{FRAMEWORKS[framework][0]} allreduce x{np}" + (
        " on GPU (NCCL)" if device == "gpu" else ""
    )
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Check(name, False, f"timed out after {timeout:.0f} s")
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return Check(name, True, f"pass in {seconds:.1f} s")
    lines = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "Error" in line or "error" in line
    ]
    return Check(
        name,
        False,
        f"FAIL (exit {proc.returncode}) in {seconds:.1f} s: "
        f"{lines[-1].strip() if lines else 'see horovodrun output'}",
    )


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quiet the TF imports in Horovod's probes
    found = versions()
    print("Versions")
    for name, version in found.items():
        print(f"  {name:<11}{version or 'not installed'}")
    if found["horovod"] is None:
        print(f"\nHorovod is not installed: {FIX}")
        return 1
    probed = probe_extensions()
    checks = build_checks(probed)
    print("Horovod build")
    _print(checks)
    gpu_names = []
    if any(facts.nccl for facts in probed.values()):
        stack, gpu_names = cuda_stack_checks()
        print("CUDA stack")
        _print(stack)
        checks += stack
    if all(
        c.ok for c in checks if c.name in ("Build key", "PyTorch", "TensorFlow", "Gloo controller")
    ):
        with ThreadPoolExecutor(len(FRAMEWORKS)) as pool:  # side by side: ~the slower one's time
            live = list(
                pool.map(lambda ext: live_allreduce(ext, args.np, args.timeout), FRAMEWORKS)
            )
        print("Live allreduce (horovodrun, Gloo, localhost)")
        _print(live)
        checks += live
        if gpu_names and all(c.ok for c in checks):
            live = [
                live_allreduce(ext, min(args.np, len(gpu_names)), args.timeout, "gpu")
                for ext in FRAMEWORKS
            ]
            print("Live allreduce on GPUs (horovodrun, NCCL, localhost)")
            _print(live)
            checks += live
    failed = [c for c in checks if not c.ok]
    print("\n" + ("All checks passed." if not failed else f"{len(failed)} check(s) failed."))
    return 1 if failed else 0


def _print(checks: list[Check]) -> None:
    for check in checks:
        print(f"  [{'x' if check.ok else ' '}] {check.name:<26}{check.detail}")
