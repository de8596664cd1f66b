"""The benchmark's run (``hvdtrain bench``): launch the workers under horovodrun at np=1 and at each
np=N, then print a table and write ``bench.json`` and PNG plots to the output directory.

With test hosts (``launch.testhosts``: network namespaces with sshd and a ``tc`` rate limit on
each host's link; root only) it runs one worker per host, at np=1..N: bus bandwidth as a fraction
of the link rate and the bound the link sets on training."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UsageError
from ..launch import horovodrun

HOSTS_WINDOW_BYTES = 8 << 20  # an allreduce window across test hosts: ~0.5 s at 200 Mbit/s


@dataclass(frozen=True)
class Settings:
    """What to measure (``hvdtrain bench``'s flags, checked by ``cli.bench``)."""

    np: list[int]  # the multi-worker runs (np=1 runs too)
    parts: list[str]
    sizes: list[int]  # allreduce sizes, bytes
    fusion: tuple[int, int]  # tensors, bytes each
    windows: int
    env: dict[str, str]  # extra variables for the workers
    quick: bool = False
    device: str = "cpu"
    compression: str = "none"
    steps: int = 10
    hosts: int | None = None  # test hosts to make, one worker each
    link_rate: str | None = None  # their links' tc rate
    link_Bps: float | None = None  # the same in bytes per second
    out: Path = Path("bench-results")


def run(settings: Settings) -> int:
    """Run every launch, print the table and write ``bench.json`` and the plots
    to ``settings.out``."""
    from . import plots, report  # matplotlib: only when the benchmark runs

    config = {
        "np": settings.np,
        "device": settings.device,
        "parts": settings.parts,
        "sizes_bytes": settings.sizes,
        "fusion": {"tensors": settings.fusion[0], "tensor_bytes": settings.fusion[1]},
        "windows": settings.windows,
        "quick": settings.quick,
        "env": settings.env,
        "compression": settings.compression,
        "steps_per_window": 3 if settings.quick else settings.steps,
        "hosts": settings.hosts,
        "link_rate": settings.link_rate,
        "link_Bps": settings.link_Bps,
        "allreduce_window_bytes": HOSTS_WINDOW_BYTES if settings.hosts else 32 << 20,
        "argv": sys.argv,
    }
    with _test_hosts(settings.hosts, settings.link_rate) as hosts:
        launch = functools.partial(
            _launch,
            sizes=settings.sizes,
            fusion=settings.fusion,
            windows=settings.windows,
            quick=settings.quick,
            env=settings.env,
            device=settings.device,
            compression=settings.compression,
            steps=settings.steps,
            hosts=hosts,
        )
        launches, memory = {}, []
        step_parts = [p for p in settings.parts if p != "allreduce"]
        plan = ([(1, step_parts)] if step_parts and 1 not in settings.np else []) + [
            (np, settings.parts) for np in settings.np
        ]
        for np, np_parts in plan:
            print(
                "hvdtrain bench: "
                f"np={np}{' (hosts ' + ','.join(hosts.names[:np]) + ')' if hosts else ''}: "
                f"{', '.join(np_parts)} ...",
                flush=True,
            )
            launches[np] = launch(np, np_parts)
            if "zero" in np_parts and np > 1:  # peak RSS: a process per framework, model, mode
                for framework, zero in launches[np]["zero"].items():
                    for model in zero["models"]:
                        for mode in zero["modes"]:
                            print(
                                f"hvdtrain bench: np={np}: zero memory, {framework} {model} "
                                f"{mode} ...",
                                flush=True,
                            )
                            found = launch(np, [], zero_memory=(framework, model, mode))
                            memory.append({"np": np, **found})
    result = report.build(launches, config, memory)
    settings.out.mkdir(parents=True, exist_ok=True)
    path = report.write_json(result, settings.out)
    pictures = plots.draw(result, settings.out)
    print(report.table(result))
    print(f"\nwrote {path}" + "".join(f", {p}" for p in pictures))
    return 0


@contextlib.contextmanager
def _test_hosts(count: int | None, link_rate: str):
    """``count`` test hosts for the run (removed after it, whatever happens), or None."""
    if count is None:
        yield None
        return
    from ..launch.testhosts import TestHosts, TestHostsError

    try:
        hosts = TestHosts(count, link_rate=link_rate).up()
    except TestHostsError as err:
        raise UsageError(f"--hosts: cannot make test hosts: {err}") from None
    try:
        yield hosts
    finally:
        hosts.down()


def _launch(
    np: int,
    parts: list[str],
    sizes: list[int],
    fusion: tuple[int, int],
    windows: int,
    quick: bool,
    env: dict[str, str],
    device: str = "cpu",
    compression: str = "none",
    steps: int = 10,
    hosts=None,
    zero_memory: tuple[str, str, str] | None = None,
) -> dict:
    """Run the workers under horovodrun (on the first ``np`` test hosts, one worker each, launched
    from the first, or on this host); rank 0's results plus the machine's load around the run.
    ``zero_memory``: instead of ``parts``, that (framework, model, optimizer mode)'s memory
    measurement."""
    from .rendezvous import HOSTS_ENV

    host_list = ",".join(f"{name}:1" for name in hosts.names[:np]) if hosts else f"localhost:{np}"
    # One thread per worker on test hosts: each host is a one-core machine (np=1 included, so that
    # scaling compares like with like); they share this machine's cores, so np > cores is bound by
    # compute, which the plain loop at the same np measures for the link bound.
    threads = ["--threads", "1"] if hosts else []
    with tempfile.TemporaryDirectory(prefix="hvdtrain-bench-") as tmp:
        out = Path(tmp) / "results.json"
        command = (
            [*horovodrun.COMMAND, "-np", str(np), "-H", host_list, "--gloo"]
            + (["--network-interface", "eth0"] if hosts and np > 1 else [])
            + [
                sys.executable,
                "-m",
                "hvdtrain.bench.worker",
                "--out",
                str(out),
                "--parts",
                ",".join(parts),
                "--sizes",
                ",".join(map(str, sizes)),
                "--fusion",
                f"{fusion[0]},{fusion[1]}",
                "--windows",
                str(windows),
                "--device",
                device,
                "--compression",
                compression,
                "--step-iters",
                str(steps),
                *threads,
            ]
            + (["--window-bytes", str(HOSTS_WINDOW_BYTES)] if hosts else [])
            + (["--quick"] if quick else [])
            + (["--zero-memory", *zero_memory] if zero_memory else [])
        )
        run_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
        if hosts:
            run_env.update({HOSTS_ENV: host_list, "GLOO_SOCKET_IFNAME": "eth0"})
        load_before, started = os.getloadavg(), time.perf_counter()
        if hosts:
            job = hosts.spawn(
                hosts.names[0],
                command,
                env=run_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            stdout, stderr = job.communicate()
            proc = subprocess.CompletedProcess(command, job.returncode, stdout, stderr)
        else:
            proc = subprocess.run(command, capture_output=True, text=True, env=run_env)
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not out.exists():
            errors = [
                line
                for line in proc.stdout.splitlines()
                if "<stderr>" in line and "I0000" not in line
            ]
            raise UsageError(
                f"the np={np} benchmark workers failed (exit {proc.returncode}):\n"
                + "\n".join(errors[-25:] or proc.stderr.splitlines()[-25:])
            )
        results = json.loads(out.read_text())
    results["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    results["wall_s"] = wall
    return results
