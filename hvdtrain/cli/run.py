"""``hvdtrain run``: its flags, turned into a ``launch.request.Request`` that ``launch.job`` runs
through horovodrun (see ``hvdtrain.launch`` for what the launcher adds to horovodrun)."""

from __future__ import annotations

import os
import sys

from ..core import tuning
from ..core.errors import UsageError
from ..launch.request import FRAMEWORKS, Request


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="launch SCRIPT on N workers (horovodrun, Gloo by default)"
    )
    parser.add_argument(
        "-np",
        "--num-proc",
        dest="np",
        type=int,
        help="number of workers (elastic: to start with; in a Slurm allocation: its task count)",
    )
    hosts = parser.add_mutually_exclusive_group()
    hosts.add_argument(
        "-H", "--hosts", help="host:slots,... (default: the Slurm allocation's, else localhost:NP)"
    )
    hosts.add_argument("--hostfile", help="file of 'host slots=N' lines")
    parser.add_argument(
        "--mpi", action="store_true", help="use MPI instead of Gloo (Horovod built with MPI)"
    )
    parser.add_argument(
        "--framework", default="auto", help=f"one of {', '.join(FRAMEWORKS)}: checked before launch"
    )
    parser.add_argument("--ssh-port", type=int, default=22, help="SSH port of remote hosts")
    parser.add_argument(
        "--network-interface",
        metavar="NAME",
        help="the interface the workers talk over, on every host (default: the one name all "
        "hosts have an address on)",
    )
    parser.add_argument(
        "--hang-timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help=f"end a job whose workers froze or diverged within about this long "
        f"(default ${tuning.HANG_TIMEOUT_ENV} or {tuning.DEFAULT_HANG_TIMEOUT})",
    )
    elastic = parser.add_argument_group("elastic mode (Horovod elastic on Gloo)")
    elastic.add_argument(
        "--elastic", action="store_true", help="survive worker failures; hosts may come and go"
    )
    elastic.add_argument("--min-np", type=int, help="fewest workers training may continue with")
    elastic.add_argument("--max-np", type=int, help="most workers the job scales up to")
    elastic.add_argument(
        "--host-discovery-script",
        metavar="PATH",
        help="executable printing the available 'host:slots' lines",
    )
    elastic.add_argument(
        "--blacklist-cooldown-range",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="let a host whose worker failed rejoin after a cooldown (MIN*2^failures s, "
        "at most MAX); without it the host is left out for the rest of the job",
    )
    parser.add_argument(
        "--all-ranks",
        action="store_true",
        help="show every worker's output, prefixed [rank@host] (default: rank 0's as the script "
        "wrote it; the others' only on stderr)",
    )
    parser.add_argument(
        "--no-host-key-check",
        dest="host_key_check",
        action="store_false",
        help="accept any SSH host key and record none (throwaway clusters only; default: a host's "
        "key is recorded in known_hosts the first time, and a changed key is refused)",
    )
    parser.add_argument(
        "--secret-env",
        action="append",
        default=[],
        metavar="NAME",
        help="an environment variable that holds a secret although its name does not look like "
        "one: it reaches the workers on no command line (repeatable)",
    )
    # Optional to argparse so that a missing one is hvdtrain's line, not "required: script, args".
    parser.add_argument("script", nargs="?", help="the training script (python file)")
    parser.add_argument("args", nargs="...", help="arguments passed to the script")
    parser.set_defaults(func=main)


# How the command reads, for the lines that say a script or its flags are misplaced.
SYNOPSIS = "hvdtrain run [run flags] SCRIPT [script flags]"


def request(args) -> Request:
    """The ``launch.request.Request`` the flags ask for."""
    if args.script is None:
        raise UsageError(f"run: name the training script: {SYNOPSIS}")
    cooldown = tuple(args.blacklist_cooldown_range) if args.blacklist_cooldown_range else None
    return Request(
        script=args.script,
        args=tuple(args.args),
        np=args.np,
        hosts=args.hosts,
        hostfile=args.hostfile,
        mpi=args.mpi,
        framework=args.framework,
        ssh_port=args.ssh_port,
        network_interface=args.network_interface,
        hang_timeout=args.hang_timeout,
        elastic=args.elastic,
        min_np=args.min_np,
        max_np=args.max_np,
        host_discovery_script=args.host_discovery_script,
        blacklist_cooldown_range=cooldown,
        all_ranks=args.all_ranks,
        host_key_check=args.host_key_check,
        secret_env=tuple(args.secret_env),
    )


def main(args) -> int:
    from ..launch import job

    returncode = job.run(request(args))
    if "mlflow" in sys.modules:
        # Everything is written and flushed; MLflow's modules would take seconds of CPU to finalize
        # on a busy host, between the job's last line and the launcher's exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(returncode)
    return returncode
