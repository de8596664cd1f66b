"""What the user asks of the launcher (``Request``: ``hvdtrain run``'s flags), checked into a
``Job`` before any worker starts: every user error is one ``UsageError`` line, found here rather
than by horovodrun after its workers started.
"""

from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core import tuning
from ..core.errors import UsageError
from ..core.slurm import SlurmError
from . import hosts as host_lists
from . import preflight, slurm
from .hosts import Hosts

FRAMEWORKS = ("auto", "torch", "keras")
COOLDOWN_LIMITS = (1, 3600)  # what horovodrun accepts for --blacklist-cooldown-range


@dataclass(frozen=True)
class Request:
    """A job as asked for; ``None``: not given (``np``: the Slurm allocation's, or the elastic
    bounds'; ``hang_timeout``: ``$HVDTRAIN_HANG_TIMEOUT`` or the default)."""

    script: str
    args: tuple[str, ...] = ()
    np: int | None = None
    hosts: str | None = None  # -H host:slots,...
    hostfile: str | None = None
    mpi: bool = False
    framework: str = "auto"
    ssh_port: int = 22
    network_interface: str | None = None
    hang_timeout: int | None = None  # seconds
    elastic: bool = False
    min_np: int | None = None
    max_np: int | None = None
    host_discovery_script: str | None = None
    blacklist_cooldown_range: tuple[int, int] | None = None
    all_ranks: bool = False
    host_key_check: bool = True  # --no-host-key-check: False
    secret_env: tuple[str, ...] = ()  # --secret-env NAME ...


@dataclass(frozen=True)
class Job:
    """A checked request: how many workers, on which hosts, and the hang bound in seconds."""

    request: Request
    np: int
    hosts: Hosts  # elastic: what the discovery script offered at launch
    hang_timeout: int
    min_np: int | None = None  # elastic only


def _check_local_interface(name: str) -> None:
    """A job on this machine alone: the pre-flight checks that test the interface on every host
    do not run, and horovodrun would ignore a name this machine does not have."""
    interfaces = preflight.local_interfaces()
    if name not in interfaces:
        raise UsageError(
            f"this machine has no network interface {name} with an IPv4 address "
            f"(--network-interface {name}); its interfaces: {', '.join(sorted(interfaces))}"
        )


def check(request: Request) -> Job:
    """Validate ``request`` before anything starts; ``UsageError`` on bad input."""
    if request.framework not in FRAMEWORKS:
        raise UsageError(
            f"unknown framework {request.framework!r}; allowed: {', '.join(FRAMEWORKS)}"
        )
    hang_timeout = _hang_timeout(request.hang_timeout)
    try:
        slurm.check_launcher()
    except SlurmError as err:
        raise UsageError(str(err)) from None
    if request.elastic:
        np, min_np, hosts = _check_elastic(request)
    else:
        (np, hosts), min_np = _check_static(request), None
    if Path(request.script).is_dir():
        raise UsageError(f"script {request.script} is a directory: name the training script in it")
    if not Path(request.script).is_file():
        raise UsageError(f"script not found: {request.script}")
    _check_script(request.script, request.framework)
    if request.network_interface and not any(preflight.started_over_ssh(h) for h, _ in hosts):
        _check_local_interface(request.network_interface)
    for host, _ in hosts:
        if preflight.started_over_ssh(host) and not preflight.through_proxy(host, request.ssh_port):
            host_lists.check_reachable(host, request.ssh_port)
    if request.framework != "auto":
        _check_framework(request.framework)
    for name in request.secret_env:
        if name not in os.environ:
            raise UsageError(f"--secret-env {name}: {name} is not set in this environment")
    return Job(request, np, hosts, hang_timeout, min_np)


# What a script of each framework imports (any of these, or a module inside one).
FRAMEWORK_MODULES = {
    "torch": ("torch", "hvdtrain.torch", "horovod.torch"),
    "keras": ("keras", "tensorflow", "hvdtrain.keras", "horovod.tensorflow", "horovod.keras"),
}


def _check_script(script: str, framework: str) -> None:
    """The script is Python that compiles (else every rank would print the same traceback after
    Horovod started) and, with ``--framework``, does not import only the other framework."""
    try:
        tree = ast.parse(Path(script).read_bytes(), filename=script)
    except (SyntaxError, ValueError) as err:  # ValueError: null bytes (a binary file), Python 3.10
        where = f", line {err.lineno}" if getattr(err, "lineno", None) else ""
        raise UsageError(
            f"script {script}{where}: not valid Python "
            f"({type(err).__name__}: {getattr(err, 'msg', err)})"
        ) from None
    if framework == "auto":
        return
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)

    def uses(name: str) -> bool:
        return any(
            module == m or module.startswith(m + ".")
            for module in imported
            for m in FRAMEWORK_MODULES[name]
        )

    (other,) = set(FRAMEWORK_MODULES) - {framework}
    if uses(other) and not uses(framework):
        raise UsageError(
            f"--framework {framework}, but {script} imports {other} and not {framework}"
            + (" or tensorflow" if framework == "keras" else "")
        )


def _hang_timeout(given: int | None) -> int:
    """``--hang-timeout`` when given,
    else ``$HVDTRAIN_HANG_TIMEOUT`` or the default: parsed once."""
    try:
        return tuning.hang_timeout() if given is None else tuning.check_hang_timeout(given)
    except ValueError as err:
        raise UsageError(str(err) if given is None else f"--hang-timeout: {err}") from None


def _check_each_host_once(hosts: Hosts) -> None:
    """A host named twice gets two sets of ranks that each count from its local rank 0: Gloo's
    rendezvous then aborts every worker in C++ (``EnforceNotMet: rank < size``)."""
    for name in dict.fromkeys(h for h, _ in hosts):
        slots = [s for h, s in hosts if h == name]
        if len(slots) > 1:
            raise UsageError(
                f"host {name} is listed {len(slots)} times: list it once with all its slots, "
                f"e.g. {name}:{sum(slots)}"
            )


def _check_static(request: Request) -> tuple[int, Hosts]:
    for flag, value in (
        ("--min-np", request.min_np),
        ("--max-np", request.max_np),
        ("--host-discovery-script", request.host_discovery_script),
        ("--blacklist-cooldown-range", request.blacklist_cooldown_range),
    ):
        if value is not None:
            raise UsageError(f"{flag} needs --elastic")
    allocation = _slurm_allocation(request)
    np = allocation.tasks if allocation else request.np
    if np is None:
        raise UsageError("-np is required (or --elastic with --min-np)")
    if np < 1:
        raise UsageError(f"-np must be >= 1, got {np}")
    if allocation:
        hosts = allocation.hosts
    elif request.hostfile:
        hosts = host_lists.read_hostfile(Path(request.hostfile))
    else:
        hosts = host_lists.parse_host_list(request.hosts or f"localhost:{np}")
    _check_each_host_once(hosts)
    slots = sum(slot for _, slot in hosts)
    if np > slots:
        raise UsageError(
            f"-np {np} needs {np} slots but the hosts offer {slots} "
            f"({','.join(f'{h}:{s}' for h, s in hosts)})"
        )
    return np, hosts


def _check_elastic(request: Request) -> tuple[int, int, Hosts]:
    """Elastic flags and the discovery script (run once now): the workers to start with, the
    fewest to go on with, and the hosts offered now."""
    if request.hosts or request.hostfile:
        raise UsageError(
            "--elastic takes its hosts from --host-discovery-script, not -H/--hostfile"
        )
    if request.mpi:
        raise UsageError("--elastic runs on Gloo; drop --mpi")
    if not request.host_discovery_script:
        raise UsageError("--elastic needs --host-discovery-script")
    min_np, max_np = request.min_np if request.min_np is not None else request.np, request.max_np
    if min_np is None:
        raise UsageError("--elastic needs --min-np (or -np)")
    if min_np < 1:
        raise UsageError(f"--min-np must be >= 1, got {min_np}")
    if max_np is not None and max_np < min_np:
        raise UsageError(f"--max-np {max_np} is below --min-np {min_np}")
    if request.blacklist_cooldown_range:
        low, high = request.blacklist_cooldown_range
        if not COOLDOWN_LIMITS[0] <= low <= high <= COOLDOWN_LIMITS[1]:
            raise UsageError(
                f"--blacklist-cooldown-range {low} {high}: need {COOLDOWN_LIMITS[0]} <= MIN <= MAX "
                f"<= {COOLDOWN_LIMITS[1]} seconds"
            )
    hosts = host_lists.discover_hosts(request.host_discovery_script)
    slots = sum(s for _, s in hosts)
    np = request.np if request.np is not None else max(min_np, min(slots, max_np or slots))
    if not min_np <= np <= (max_np or np):
        bounds = f"--min-np {min_np}" + (f" and --max-np {max_np}" if max_np else "")
        raise UsageError(f"-np {np} must lie within {bounds}")
    if slots < np:
        print(
            f"hvdtrain: warning: the discovery script offers {slots} slots for -np {np}; "
            "horovodrun waits for more (up to its --elastic-timeout)",
            file=sys.stderr,
        )
    return np, min_np, hosts


def _slurm_allocation(request: Request) -> slurm.Allocation | None:
    """Inside a Slurm allocation without -H/--hostfile: its hosts, one worker per task (a
    different -np is refused)."""
    if request.hosts or request.hostfile:
        return None
    try:
        allocation = slurm.allocation()
        if allocation is not None:
            slurm.check_world_size(allocation, request.np)
    except SlurmError as err:
        raise UsageError(str(err)) from None
    return allocation


def _check_framework(framework: str) -> None:
    from horovod.common.util import extension_available

    extension = {"torch": "torch", "keras": "tensorflow"}[framework]
    if not extension_available(extension):
        raise UsageError(f"Horovod was built without {extension}: run `make install`")
