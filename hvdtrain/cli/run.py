"""``hvdtrain run``: launch a training script on N workers through horovodrun.

What it adds to plain horovodrun: user errors caught before any worker starts (one line each),
on several hosts the pre-flight checks of ``preflight`` and the network settings they choose,
MLflow prepared once and passed to every worker, Gloo by default, bounds on hung jobs
(``--hang-timeout``), elastic mode checked before launch, and one line that explains a failed
job (``JobMonitor``) instead of horovodrun's traceback, with the MLflow run marked FAILED.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..core import slurm, tuning, worker_guard
from . import preflight, summary
from .errors import CliError

FRAMEWORKS = ("auto", "torch", "keras")
DISCOVERY_TIMEOUT_S = 5
COOLDOWN_LIMITS = (1, 3600)  # what horovodrun accepts for --blacklist-cooldown-range
HOROVODRUN = (sys.executable, "-m", "hvdtrain.cli.horovodrun")  # horovodrun without its TensorFlow-importing probe


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="launch SCRIPT on N workers (horovodrun, Gloo by default)")
    parser.add_argument("-np", "--num-proc", dest="np", type=int,
                        help="number of workers (elastic: to start with; in a Slurm allocation: its task count)")
    hosts = parser.add_mutually_exclusive_group()
    hosts.add_argument("-H", "--hosts", help="host:slots,... (default: the Slurm allocation's, else localhost:NP)")
    hosts.add_argument("--hostfile", help="file of 'host slots=N' lines")
    parser.add_argument("--mpi", action="store_true", help="use MPI instead of Gloo (Horovod built with MPI)")
    parser.add_argument("--framework", default="auto", help=f"one of {', '.join(FRAMEWORKS)}: checked before launch")
    parser.add_argument("--ssh-port", type=int, default=22, help="SSH port of remote hosts")
    parser.add_argument("--network-interface", metavar="NAME",
                        help="the interface the workers talk over, on every host (default: the one name all "
                             "hosts have an address on)")
    parser.add_argument("--hang-timeout", type=int, default=None, metavar="SECONDS",
                        help=f"end a job whose workers froze or diverged within about this long "
                             f"(default ${tuning.HANG_TIMEOUT_ENV} or {tuning.DEFAULT_HANG_TIMEOUT})")
    elastic = parser.add_argument_group("elastic mode (Horovod elastic on Gloo)")
    elastic.add_argument("--elastic", action="store_true", help="survive worker failures; hosts may come and go")
    elastic.add_argument("--min-np", type=int, help="fewest workers training may continue with")
    elastic.add_argument("--max-np", type=int, help="most workers the job scales up to")
    elastic.add_argument("--host-discovery-script", metavar="PATH",
                         help="executable printing the available 'host:slots' lines")
    elastic.add_argument("--blacklist-cooldown-range", type=int, nargs=2, metavar=("MIN", "MAX"),
                         help="let a host whose worker failed rejoin after a cooldown (MIN*2^failures s, "
                              "at most MAX); without it the host is left out for the rest of the job")
    parser.add_argument("--all-ranks", action="store_true",
                        help="show every worker's output, prefixed [rank@host] (default: rank 0's as the script "
                             "wrote it; the others' only on stderr)")
    parser.add_argument("script", help="the training script (python file)")
    parser.add_argument("args", nargs="...", help="arguments passed to the script")
    parser.set_defaults(func=main)


def main(args) -> int:
    started = time.monotonic()
    hosts = _check_request(args)
    plan = _preflight(args, hosts)
    command = build_command(args, hosts, plan)
    from ..core.args import RESULTS_ENV  # the job's dependencies: not for --help or a refused request
    from ..tracking import legs
    from .job import JobMonitor
    with tempfile.TemporaryDirectory(prefix="hvdtrain-run-") as tmp:
        run_file, results_file = Path(tmp, "run.json"), Path(tmp, "results.json")
        run_file.touch()
        env = worker_env(multi_host=plan is not None, hang_timeout=args.hang_timeout)
        env.update({legs.RUN_FILE_ENV: str(run_file), RESULTS_ENV: str(results_file)})
        if args.mpi and plan is not None:
            _bound_mpi_links(env, tuning.hang_timeout(env))
        monitor = JobMonitor(rank_hosts=_rank_hosts(hosts, args.np) if not args.elastic else {},
                             elastic=args.elastic, checkpoint_dir=_option(args.args, "--checkpoint-dir"),
                             run_file=run_file, mpi=args.mpi, hang_timeout=tuning.hang_timeout(env),
                             remote_hosts=[h for h, _ in hosts if not preflight.is_local(h)],
                             ssh_port=args.ssh_port, all_ranks=args.all_ranks,
                             quiet_startup="TF_CPP_MIN_LOG_LEVEL" not in os.environ)
        threading.Thread(target=_import_mlflow_once_tracking, args=(run_file,), daemon=True).start()
        returncode = monitor.run(command, env)
        if returncode == 0:
            lines = summary.block(workers=args.np, hosts=[h for h, _ in hosts], wall_s=time.monotonic() - started,
                                  results=summary.read(results_file), run=summary.read(run_file))
            print("\n".join(lines), flush=True)
    if "mlflow" in sys.modules:
        # Everything is written and flushed; MLflow's modules would take seconds of CPU to finalize
        # on a busy host, between the job's last line and the launcher's exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(returncode)
    return returncode


def _import_mlflow_once_tracking(run_file: Path) -> None:
    """Once rank 0 has opened an MLflow run, import MLflow here in the background, so that marking
    the run FAILED after a worker failure (``legs.mark_failed``) does not first pay its import."""
    while True:
        try:
            if run_file.stat().st_size > 0:
                break
        except OSError:
            return  # the job ended (its temporary directory is gone)
        time.sleep(0.5)
    import mlflow.tracking  # noqa: F401


def build_command(args, hosts: list[tuple[str, int]], plan: preflight.Plan | None = None) -> list[str]:
    """The horovodrun command line for a request ``_check_request`` accepted, on the network
    ``plan`` chose (None: one host)."""
    if args.elastic:
        placement = ["--min-np", str(args.min_np), "--host-discovery-script",
                     shlex.quote(str(Path(args.host_discovery_script).absolute()))]
        placement += ["--max-np", str(args.max_np)] if args.max_np else []
        if args.blacklist_cooldown_range:
            placement += ["--blacklist-cooldown-range", *map(str, args.blacklist_cooldown_range)]
        if plan is None:
            # Elastic Gloo otherwise waits for a second host to agree on a network interface.
            placement += ["--network-interface", "lo"]
    else:
        placement = ["-H", ",".join(f"{h}:{s}" for h, s in hosts)]
    worker = [sys.executable]
    if plan is not None:
        # horovodrun serves the rendezvous on its --network-interfaces' address and tells workers
        # to bind that same name: given the launcher's interface, the workers' is set here.
        placement += ["--network-interfaces", plan.interface if args.mpi else plan.launcher_interface]
        settings = [] if args.mpi else [f"HOROVOD_GLOO_RENDEZVOUS_ADDR={plan.rendezvous_address}",
                                        f"HOROVOD_GLOO_IFACE={plan.interface}", f"NCCL_SOCKET_IFNAME={plan.interface}"]
        worker = [*(["env", *settings] if settings else []), sys.executable, "-m", worker_guard.__name__,
                  sys.executable]
    # Under MPI the default port is left to _bound_mpi_links (horovodrun would override its ssh options).
    port = [] if args.mpi and args.ssh_port == 22 else ["-p", str(args.ssh_port)]
    return [*HOROVODRUN, "-np", str(args.np), *placement, "--mpi" if args.mpi else "--gloo", *port,
            *worker, str(args.script), *args.args]


def _prepared_local_store() -> str:
    """``tracking.prepare_local_store`` in a child process: the launcher itself never imports
    MLflow, whose import and interpreter shutdown cost it seconds of CPU on a busy host, and
    would delay the launcher's exit after a failed job by as much."""
    code = "from hvdtrain.tracking.store import prepare_local_store; print(prepare_local_store())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()]
        raise CliError(f"cannot prepare the local MLflow store: {last[-1] if last else f'exit {done.returncode}'}")
    return done.stdout.strip().splitlines()[-1]


def worker_env(multi_host: bool, hang_timeout: int | None = None) -> dict[str, str]:
    """This environment plus the MLflow settings every worker must share, and the hang bounds
    (applied here too, so scripts that call ``hvd.init()`` themselves get them)."""
    env = dict(os.environ)
    if not env.get("MLFLOW_TRACKING_URI"):
        if multi_host:
            print("hvdtrain: warning: MLFLOW_TRACKING_URI is not set; on several hosts rank 0's local store "
                  "is used; set it to a shared tracking server", file=sys.stderr)
        env["MLFLOW_TRACKING_URI"] = _prepared_local_store()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # the summary names the run, once
    if hang_timeout is not None:
        env[tuning.HANG_TIMEOUT_ENV] = str(hang_timeout)
    if multi_host:
        env[worker_guard.LAUNCHER_HOST_ENV] = socket.gethostname()
    tuning.apply_horovod_defaults(env)
    return env


def _bound_mpi_links(env: dict[str, str], hang_timeout: int) -> None:
    """MPI has no timeout: a host whose link dies leaves every rank waiting for ever. mpirun's ssh
    sessions to the hosts' daemons then check the link (ssh keepalives) and give up within about
    the hang timeout; mpirun ends the job and the launcher names the host."""
    interval = max(1, hang_timeout // 3)
    env.setdefault("OMPI_MCA_plm_rsh_args", f"-o ServerAliveInterval={interval} -o ServerAliveCountMax=3")


def _preflight(args, hosts: list[tuple[str, int]]) -> preflight.Plan | None:
    """The pre-flight checks of a job on several hosts (``CliError``), and the network they chose."""
    script = Path(args.script).absolute()
    return preflight.check(preflight.Request(hosts=[h for h, _ in hosts], ssh_port=args.ssh_port,
                                             python=sys.executable, cwd=os.getcwd(), script=str(script),
                                             interface=args.network_interface, mpi=args.mpi))


def _check_request(args) -> list[tuple[str, int]]:
    """Validate the request before anything starts; returns the hosts. ``CliError`` on bad input."""
    if args.framework not in FRAMEWORKS:
        raise CliError(f"unknown framework {args.framework!r}; allowed: {', '.join(FRAMEWORKS)}")
    if args.hang_timeout is not None:
        try:
            tuning.check_hang_timeout(args.hang_timeout)
        except ValueError as err:
            raise CliError(f"--hang-timeout: {err}") from None
    else:
        try:
            tuning.hang_timeout()
        except ValueError as err:
            raise CliError(str(err)) from None
    try:
        slurm.check_launcher()
    except slurm.SlurmError as err:
        raise CliError(str(err)) from None
    if args.elastic:
        hosts = _check_elastic(args)
    else:
        hosts = _check_static(args)
    if not Path(args.script).is_file():
        raise CliError(f"script not found: {args.script}")
    for host, _ in hosts:
        if preflight.started_over_ssh(host) and not preflight.through_proxy(host, args.ssh_port):
            _check_reachable(host, args.ssh_port)
    if args.framework != "auto":
        _check_framework(args.framework)
    return hosts


def _check_static(args) -> list[tuple[str, int]]:
    for flag, value in (("--min-np", args.min_np), ("--max-np", args.max_np),
                        ("--host-discovery-script", args.host_discovery_script),
                        ("--blacklist-cooldown-range", args.blacklist_cooldown_range)):
        if value is not None:
            raise CliError(f"{flag} needs --elastic")
    allocation = _slurm_allocation(args)
    if args.np is None:
        raise CliError("-np is required (or --elastic with --min-np)")
    if args.np < 1:
        raise CliError(f"-np must be >= 1, got {args.np}")
    hosts = allocation.hosts if allocation else _hosts(args)
    slots = sum(slot for _, slot in hosts)
    if args.np > slots:
        raise CliError(f"-np {args.np} needs {args.np} slots but the hosts offer {slots} "
                       f"({','.join(f'{h}:{s}' for h, s in hosts)})")
    return hosts


def _check_elastic(args) -> list[tuple[str, int]]:
    """Elastic flags and the discovery script (run once now); fills in ``args.min_np``/``args.np``."""
    if args.hosts or args.hostfile:
        raise CliError("--elastic takes its hosts from --host-discovery-script, not -H/--hostfile")
    if args.mpi:
        raise CliError("--elastic runs on Gloo; drop --mpi")
    if not args.host_discovery_script:
        raise CliError("--elastic needs --host-discovery-script")
    args.min_np = args.min_np if args.min_np is not None else args.np
    if args.min_np is None:
        raise CliError("--elastic needs --min-np (or -np)")
    if args.min_np < 1:
        raise CliError(f"--min-np must be >= 1, got {args.min_np}")
    if args.max_np is not None and args.max_np < args.min_np:
        raise CliError(f"--max-np {args.max_np} is below --min-np {args.min_np}")
    if args.blacklist_cooldown_range:
        low, high = args.blacklist_cooldown_range
        if not COOLDOWN_LIMITS[0] <= low <= high <= COOLDOWN_LIMITS[1]:
            raise CliError(f"--blacklist-cooldown-range {low} {high}: need {COOLDOWN_LIMITS[0]} <= MIN <= MAX "
                           f"<= {COOLDOWN_LIMITS[1]} seconds")
    hosts = discover_hosts(args.host_discovery_script)
    slots = sum(s for _, s in hosts)
    if args.np is None:
        args.np = max(args.min_np, min(slots, args.max_np or slots))
    if not args.min_np <= args.np <= (args.max_np or args.np):
        bounds = f"--min-np {args.min_np}" + (f" and --max-np {args.max_np}" if args.max_np else "")
        raise CliError(f"-np {args.np} must lie within {bounds}")
    if slots < args.np:
        print(f"hvdtrain: warning: the discovery script offers {slots} slots for -np {args.np}; horovodrun "
              f"waits for more (up to its --elastic-timeout)", file=sys.stderr)
    return hosts


def discover_hosts(script: str) -> list[tuple[str, int]]:
    """Run the host discovery script as horovodrun will, and check what it prints."""
    path = Path(script)
    if not path.is_file():
        raise CliError(f"host discovery script not found: {script}")
    if not os.access(path, os.X_OK):
        raise CliError(f"host discovery script {script} is not executable (chmod +x {script})")
    try:
        done = subprocess.run([str(path.absolute())], capture_output=True, text=True, timeout=DISCOVERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CliError(f"host discovery script {script} did not finish within {DISCOVERY_TIMEOUT_S} s "
                       f"(horovodrun runs it every second)") from None
    except OSError as err:
        raise CliError(f"host discovery script {script} cannot run: {err.strerror or err}") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        raise CliError(f"host discovery script {script} exited with status {done.returncode}: {detail}")
    hosts = []
    for line in filter(None, (l.strip() for l in done.stdout.splitlines())):
        match = re.fullmatch(r"([^:\s]+):([1-9]\d*)", line)
        if not match:
            raise CliError(f"host discovery script {script} printed {line!r}: expected 'host:slots' lines, "
                           f"e.g. node1:4")
        hosts.append((match.group(1), int(match.group(2))))
    if not hosts:
        raise CliError(f"host discovery script {script} printed no hosts (expected 'host:slots' lines)")
    return hosts


def _slurm_allocation(args) -> slurm.Allocation | None:
    """Inside a Slurm allocation without -H/--hostfile: its hosts, one worker per task (sets
    ``args.np``; a different -np is refused)."""
    if args.hosts or args.hostfile:
        return None
    try:
        allocation = slurm.allocation()
        if allocation is not None:
            args.np = slurm.check_world_size(allocation, args.np)
    except slurm.SlurmError as err:
        raise CliError(str(err)) from None
    return allocation


def _hosts(args) -> list[tuple[str, int]]:
    if args.hostfile:
        return _read_hostfile(Path(args.hostfile))
    hosts = []
    for item in (args.hosts or f"localhost:{max(args.np, 1)}").split(","):
        match = re.fullmatch(r"\s*([^:\s]+)(?::(\d+))?\s*", item)
        if not match:
            raise CliError(f"bad host {item!r}: use host:slots, e.g. node1:4")
        hosts.append((match.group(1), int(match.group(2) or 1)))
    return hosts


def _read_hostfile(path: Path) -> list[tuple[str, int]]:
    """``host slots=N`` lines (``slots`` defaults to 1; ``#`` starts a comment), as MPI reads them."""
    if not path.is_file():
        raise CliError(f"hostfile not found: {path}")
    hosts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = re.fullmatch(r"(\S+)(?:\s+slots\s*=\s*(\d+))?", text)
        if not match:
            raise CliError(f"hostfile {path} line {number}: {text!r} is not 'host slots=N'")
        hosts.append((match.group(1), int(match.group(2) or 1)))
    if not hosts:
        raise CliError(f"hostfile {path} lists no hosts ('host slots=N' lines)")
    return hosts


def _rank_hosts(hosts: list[tuple[str, int]], np: int) -> dict[int, str]:
    """Rank -> host, by Horovod's own assignment, so names match what horovodrun started."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts

    plan = get_host_assignments(parse_hosts(",".join(f"{h}:{s}" for h, s in hosts)), np)
    return {slot.rank: slot.hostname for slot in plan}


def _option(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in the script's arguments (``--flag V`` or ``--flag=V``), if given."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _check_reachable(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as err:
        raise CliError(f"host {host} is unreachable on SSH port {port} ({err.strerror or err})") from None


def _check_framework(framework: str) -> None:
    from horovod.common.util import extension_available

    extension = {"torch": "torch", "keras": "tensorflow"}[framework]
    if not extension_available(extension):
        raise CliError(f"Horovod was built without {extension}: run `make install`")
