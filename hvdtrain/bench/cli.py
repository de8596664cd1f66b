"""``hvdtrain bench``: launch the benchmark workers under horovodrun at np=1 and at each np=N, then
print a table and write ``bench.json`` and PNG plots to ``--out``.

``--hosts N`` runs on N test hosts made for the run (``hvdtrain.testhosts``: network namespaces
with sshd and a ``tc`` rate limit on each host's link; root only), one worker per host, at
np=1..N: bus bandwidth as a fraction of the link rate and the bound the link sets on training."""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..cli.errors import CliError
from .worker import PARTS

DEFAULT_SIZES = "4K,16K,64K,256K,1M,4M,16M,64M"
# 200 Mbit/s: at 1 Gbit/s four workers on a 2-core machine are bound by compute, not by the link
# (BENCHMARKS.md, "Across hosts"); a slower link puts the bottleneck back where a cluster has it.
DEFAULT_LINK_RATE = "200mbit"
HOSTS_WINDOW_BYTES = 8 << 20  # an allreduce window across test hosts: ~0.5 s at 200 Mbit/s
HOSTS_PARTS = "allreduce,torch"
_SIZE = re.compile(r"^(\d+)([KMG]?)B?$", re.IGNORECASE)
_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)bit$")


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="allreduce and training-step benchmarks: hvdtrain vs raw "
                                                 "Horovod vs torch DDP; optimizer-state sharding",
                                   description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=main)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--np", default=None, help="workers of the multi-worker runs, e.g. 2 or 2,4 (np=1 runs too; "
                                                   "default 2, or 2..N with --hosts N)")
    parser.add_argument("--hosts", type=int, default=None, metavar="N",
                        help="run on N test hosts made for the run, one worker each (root; network namespaces)")
    parser.add_argument("--link-rate", default=DEFAULT_LINK_RATE, metavar="RATE",
                        help=f"each test host's link rate, tc syntax, e.g. 200mbit, 1gbit (default {DEFAULT_LINK_RATE})")
    parser.add_argument("--compression", choices=("none", "fp16"), default="none",
                        help="gradient compression of the torch training steps (DDP: its fp16 hook)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed window (quick: 3)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: one GPU per worker, NCCL for Horovod and torch.distributed")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="allreduce sizes, e.g. 4K,1M,64M (binary units)")
    parser.add_argument("--parts", default=None, help=f"comma-separated subset of {', '.join(PARTS)} (default all; "
                                                      f"{HOSTS_PARTS} with --hosts)")
    parser.add_argument("--fusion", default="200x64K", help="small-tensor fusion case, COUNTxSIZE")
    parser.add_argument("--windows", type=int, default=None, help="timed windows per contender (default 7, quick 3)")
    parser.add_argument("--quick", action="store_true", help="toy models and few iterations: a smoke test")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the workers, e.g. HOROVOD_CYCLE_TIME=0.5 (repeatable)")
    parser.add_argument("--horovod-defaults", action="store_true",
                        help="run with Horovod's own defaults instead of hvdtrain's tuned settings")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for bench.json and plots")


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise CliError(f"bad size {text!r}: use bytes or K/M/G units, e.g. 4096, 64K, 16M, 1G")
    value = int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2).upper()]
    if value < 4 or value % 4:
        raise CliError(f"size {text!r} is not a whole number of float32 values (a multiple of 4 bytes)")
    return value


def parse_np(text: str) -> list[int]:
    try:
        counts = sorted({int(n) for n in str(text).split(",")})
    except ValueError:
        raise CliError(f"bad --np {text!r}: use worker counts, e.g. 2 or 2,4") from None
    if counts[0] < 1:
        raise CliError(f"--np must be >= 1 (np=1 always runs for scaling), got {text}")
    return counts


def parse_link_rate(text: str) -> float:
    """A ``tc`` rate (``200mbit``, ``1gbit``) in bytes per second (tc's units are powers of 1000)."""
    match = _RATE.match(text.strip().lower())
    if not match:
        raise CliError(f"bad --link-rate {text!r}: use tc's bit rates, e.g. 200mbit, 1gbit")
    return float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)] / 8


def _validated(args) -> tuple[list[int], list[str], list[int], tuple[int, int], dict[str, str], int]:
    if args.hosts is not None and args.hosts < 2:
        raise CliError(f"--hosts must be >= 2, got {args.hosts}")
    if args.hosts is not None and args.np is not None:
        raise CliError("--np and --hosts exclude each other: --hosts N runs np=1..N, one worker per host")
    if args.steps < 1:
        raise CliError(f"--steps must be >= 1, got {args.steps}")
    counts = parse_np(args.np or "2") if args.hosts is None else list(range(2, args.hosts + 1))
    parts_text = args.parts or (HOSTS_PARTS if args.hosts else ",".join(PARTS))
    parts = [p.strip() for p in parts_text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise CliError(f"unknown part(s) {', '.join(unknown) or '(none)'}; allowed: {', '.join(PARTS)}")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    count, _, size = args.fusion.lower().partition("x")
    if not count.isdigit() or int(count) < 1 or not size:
        raise CliError(f"bad --fusion {args.fusion!r}: use COUNTxSIZE, e.g. 200x64K")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"bad --env {item!r}: use KEY=VALUE")
        env[key] = value
    if args.horovod_defaults:
        env["HVDTRAIN_HOROVOD_DEFAULTS"] = "0"
    windows = args.windows or (3 if args.quick else 7)
    if windows < 1:
        raise CliError(f"--windows must be >= 1, got {windows}")
    return counts, parts, sizes, (int(count), parse_size(size)), env, windows


def main(args) -> int:
    from . import plots, report  # matplotlib: only when the command runs

    counts, parts, sizes, fusion, env, windows = _validated(args)
    link_Bps = parse_link_rate(args.link_rate) if args.hosts else None
    config = {"np": counts, "device": args.device, "parts": parts, "sizes_bytes": sizes, "fusion": {"tensors": fusion[0],
              "tensor_bytes": fusion[1]}, "windows": windows, "quick": args.quick, "env": env,
              "compression": args.compression, "steps_per_window": 3 if args.quick else args.steps,
              "hosts": args.hosts, "link_rate": args.link_rate if args.hosts else None, "link_Bps": link_Bps,
              "allreduce_window_bytes": HOSTS_WINDOW_BYTES if args.hosts else 32 << 20,
              "argv": sys.argv}
    with _test_hosts(args.hosts, args.link_rate) as hosts:
        launch = functools.partial(_launch, sizes=sizes, fusion=fusion, windows=windows, quick=args.quick, env=env,
                                   device=args.device, compression=args.compression, steps=args.steps, hosts=hosts)
        launches, memory = {}, []
        step_parts = [p for p in parts if p != "allreduce"]
        plan = ([(1, step_parts)] if step_parts and 1 not in counts else []) + [(np, parts) for np in counts]
        for np, np_parts in plan:
            print(f"hvdtrain bench: np={np}{' (hosts ' + ','.join(hosts.names[:np]) + ')' if hosts else ''}: "
                  f"{', '.join(np_parts)} ...", flush=True)
            launches[np] = launch(np, np_parts)
            if "zero" in np_parts:  # peak RSS: one process per optimizer
                for mode in ("unsharded", "sharded"):
                    print(f"hvdtrain bench: np={np}: zero memory, {mode} ...", flush=True)
                    memory.append({"np": np, **launch(np, [], zero_memory=mode)})
    result = report.build(launches, config, memory)
    args.out.mkdir(parents=True, exist_ok=True)
    path = report.write_json(result, args.out)
    pictures = plots.draw(result, args.out)
    print(report.table(result))
    print(f"\nwrote {path}" + "".join(f", {p}" for p in pictures))
    return 0


@contextlib.contextmanager
def _test_hosts(count: int | None, link_rate: str):
    """``count`` test hosts for the run (removed after it, whatever happens), or None."""
    if count is None:
        yield None
        return
    from ..testhosts import TestHosts, TestHostsError

    try:
        hosts = TestHosts(count, link_rate=link_rate).up()
    except TestHostsError as err:
        raise CliError(f"--hosts: cannot make test hosts: {err}") from None
    try:
        yield hosts
    finally:
        hosts.down()


def _launch(np: int, parts: list[str], sizes: list[int], fusion: tuple[int, int], windows: int, quick: bool,
            env: dict[str, str], device: str = "cpu", compression: str = "none", steps: int = 10, hosts=None,
            zero_memory: str | None = None) -> dict:
    """Run the workers under horovodrun (on the first ``np`` test hosts, one worker each, launched
    from the first, or on this host); rank 0's results plus the machine's load around the run.
    ``zero_memory``: instead of ``parts``, that optimizer's memory measurement."""
    from .rendezvous import HOSTS_ENV

    host_list = ",".join(f"{name}:1" for name in hosts.names[:np]) if hosts else f"localhost:{np}"
    # One thread per worker on test hosts: each host is a one-core machine (np=1 included, so that
    # scaling compares like with like); they share this machine's cores, so np > cores is bound by
    # compute, which the plain loop at the same np measures for the link bound.
    threads = ["--threads", "1"] if hosts else []
    with tempfile.TemporaryDirectory(prefix="hvdtrain-bench-") as tmp:
        out = Path(tmp) / "results.json"
        command = [str(Path(sys.executable).parent / "horovodrun"), "-np", str(np), "-H", host_list, "--gloo"] \
            + (["--network-interface", "eth0"] if hosts and np > 1 else []) \
            + [sys.executable, "-m", "hvdtrain.bench.worker", "--out", str(out),
               "--parts", ",".join(parts), "--sizes", ",".join(map(str, sizes)),
               "--fusion", f"{fusion[0]},{fusion[1]}", "--windows", str(windows), "--device", device,
               "--compression", compression, "--step-iters", str(steps), *threads] \
            + (["--window-bytes", str(HOSTS_WINDOW_BYTES)] if hosts else []) \
            + (["--quick"] if quick else []) + (["--zero-memory", zero_memory] if zero_memory else [])
        run_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
        if hosts:
            run_env.update({HOSTS_ENV: host_list, "GLOO_SOCKET_IFNAME": "eth0"})
        load_before, started = os.getloadavg(), time.perf_counter()
        if hosts:
            job = hosts.spawn(hosts.names[0], command, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
            stdout, stderr = job.communicate()
            proc = subprocess.CompletedProcess(command, job.returncode, stdout, stderr)
        else:
            proc = subprocess.run(command, capture_output=True, text=True, env=run_env)
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not out.exists():
            errors = [line for line in proc.stdout.splitlines() if "<stderr>" in line and "I0000" not in line]
            raise CliError(f"the np={np} benchmark workers failed (exit {proc.returncode}):\n"
                           + "\n".join(errors[-25:] or proc.stderr.splitlines()[-25:]))
        results = json.loads(out.read_text())
    results["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    results["wall_s"] = wall
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="hvdtrain bench", description=__doc__)
    add_arguments(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except CliError as err:
        print(f"hvdtrain: error: {err}", file=sys.stderr)
        sys.exit(2)
