"""Pre-flight checks of a multi-host ``hvdtrain run``: what would break between hosts, found before
any worker starts, one line per problem naming the host and the fix.

Raw horovodrun finds most of these only after its workers start (a Gloo crash, a 20 s rendezvous
timeout, a traceback on one rank) or never says what they were. Here one ssh login per host, all
at once, runs ``host_probe`` with the job's own Python and reports what the job will meet there:
the Python and project paths, the installed versions, the host's interfaces, what its own name
resolves to, and which of this machine's addresses it can connect to. From those reports
``decide`` picks the network settings horovodrun is then given:

- the workers' interface (Horovod binds Gloo to one interface *name* on every host): the user's
  ``--network-interface``, else the one name every host has on a shared network;
- the rendezvous address (this machine's, where horovodrun serves the Gloo rendezvous): one every
  host could connect to. horovodrun itself takes this machine's address on the workers' interface
  name, which the hosts cannot reach when this machine is outside their network, or has no
  interface of that name.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UsageError
from . import host_probe, hostkeys

SSH_TIMEOUT_S = (
    8  # a login plus the probe; each host's connection attempts are bounded by host_probe
)
PACKAGES = ("horovod", "torch", "tensorflow", "tensorflow-cpu", "keras")
_MISSING_PYTHON = "hvdtrain-preflight: python missing"


@dataclass(frozen=True)
class Request:
    """What the job needs on every host."""

    hosts: list[str]  # as given to -H / the discovery script, in rank order
    ssh_port: int
    python: str
    cwd: str
    script: str  # absolute
    interface: str | None = None  # --network-interface
    mpi: bool = False


@dataclass
class HostReport:
    """``host_probe``'s findings on one host (``error``: why there are none)."""

    host: str
    error: str | None = None
    hostname: str = ""
    own_addresses: list[str] = field(default_factory=list)
    interfaces: dict[str, str] = field(default_factory=dict)  # name -> "IPv4/netmask"
    missing: list[str] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    reached: list[str] = field(default_factory=list)  # this machine's addresses it connected to
    commands: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """The network settings the job is launched with."""

    interface: str  # the workers' (HOROVOD_GLOO_IFACE, MPI's btl_tcp_if_include)
    rendezvous_address: str  # this machine's address the hosts connect to
    launcher_interface: (
        str  # the interface of this machine that holds it (horovodrun's --network-interfaces)
    )


def local_interfaces() -> dict[str, str]:
    """This machine's interfaces with an IPv4 address: name -> "IPv4/netmask"."""
    import psutil

    return {
        name: f"{a.address}/{a.netmask}"
        for name, addrs in psutil.net_if_addrs().items()
        for a in addrs
        if a.family == socket.AF_INET
    }


def is_local(host: str) -> bool:
    """This machine: its own name, or a name that resolves to one of its addresses (horovodrun's
    rule) or to loopback (Debian maps a host's own name to 127.0.1.1)."""
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return False
    return _loopback(address) or address in {_address(i) for i in local_interfaces().values()}


def started_over_ssh(host: str) -> bool:
    """horovodrun's own rule for which workers it starts over ssh: a host whose address is not one
    of this machine's interfaces' (so ``127.0.0.2``, or a name Debian maps to 127.0.1.1, is reached
    over ssh although ``is_local`` counts it as this machine for the probes)."""
    if host == "localhost":
        return False
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return True
    return address not in {_address(i) for i in local_interfaces().values()}


def through_proxy(host: str, port: int) -> bool:
    """ssh reaches ``host`` through another machine (ProxyJump/ProxyCommand in the ssh config), so
    its SSH port need not be reachable from here."""
    try:
        config = subprocess.run(
            ["ssh", "-G", "-p", str(port), host], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(re.search(r"^(proxyjump|proxycommand) (?!none$)", config, flags=re.M))


def check(request: Request) -> Plan | None:
    """Probe every host at once; the plan, or ``UsageError`` with one line per problem. None when
    every host is this machine (no network between workers)."""
    if all(is_local(h) for h in request.hosts):
        return None
    from concurrent.futures import (
        ThreadPoolExecutor,  # not at start-up: --help and refused requests skip it
    )

    launcher = {
        name: interface
        for name, interface in local_interfaces().items()
        if not _loopback(interface)
    }
    with _Listener() as port, ThreadPoolExecutor(len(request.hosts)) as pool:
        arguments = {
            "paths": [request.cwd, request.script],
            "packages": list(PACKAGES),
            "port": port,
            "addresses": sorted((n, _address(i)) for n, i in launcher.items()),
            "commands": ["orted"] if request.mpi else [],
        }
        reports = list(pool.map(lambda host: probe(host, request, arguments), request.hosts))
    plan, problems = decide(request, reports, launcher, _versions())
    if problems:
        raise UsageError("\n".join(problems))
    return plan


def probe(host: str, request: Request, arguments: dict) -> HostReport:
    """Run ``host_probe`` on ``host`` with the job's Python: over ssh as horovodrun will log in
    (no password, host keys checked as ``hostkeys`` says), or here when the host is this machine."""
    run_probe = f"{shlex.quote(request.python)} - {shlex.quote(json.dumps(arguments))}"
    if is_local(host):
        command = [request.python, "-", json.dumps(arguments)]
    else:
        remote = (
            f"if [ -x {shlex.quote(request.python)} ]; then exec {run_probe}; "
            f"else echo {shlex.quote(_MISSING_PYTHON)}; fi"
        )
        command = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "PasswordAuthentication=no",
            *hostkeys.ssh_options(),
            "-o",
            f"ConnectTimeout={SSH_TIMEOUT_S - 3}",
            "-p",
            str(request.ssh_port),
            host,
            remote,
        ]
    try:
        done = subprocess.run(
            command,
            input=Path(host_probe.__file__).read_text(),
            capture_output=True,
            text=True,
            timeout=SSH_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return HostReport(
            host,
            error=f"host {host} did not answer the pre-flight check over ssh within "
            f"{SSH_TIMEOUT_S} s",
        )
    if done.stdout.strip() == _MISSING_PYTHON:
        return HostReport(
            host,
            error=f"host {host} has no {request.python}: install the same virtualenv at the "
            f"same path on every host (or share it, e.g. over NFS)",
        )
    if done.returncode != 0:
        return HostReport(host, error=_ssh_problem(host, request.ssh_port, done.stderr))
    try:
        return HostReport(host, **json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError, TypeError):
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return HostReport(host, error=f"host {host}: the pre-flight check failed there ({detail})")


def _ssh_problem(host: str, port: int, stderr: str) -> str:
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and not line.startswith("Warning: Permanently")
    ]
    said = lines[-1] if lines else "no error output"
    copy_id = f"ssh-copy-id{'' if port == 22 else f' -p {port}'} {host}"
    if denied := re.search(r"Permission denied \(([^)]*)\)", said):
        methods = denied.group(1).split(",")
        if "password" in methods or "keyboard-interactive" in methods:
            return (
                f"host {host} asks for an SSH password (ssh: {said}): hvdtrain run logs in to "
                f"every host without a prompt; set up key login, e.g. {copy_id}"
            )
        return (
            f"host {host} refused this machine's SSH key (ssh: {said}): add the key to {host}'s "
            f"authorized_keys, e.g. {copy_id}"
        )
    if changed := hostkeys.changed_key_problem(host, port, stderr):
        return changed
    return f"host {host}: ssh failed (ssh: {said})"


def decide(
    request: Request,
    reports: list[HostReport],
    launcher: dict[str, str],
    versions: dict[str, str | None],
) -> tuple[Plan | None, list[str]]:
    """The plan and the problems found in the hosts' ``reports``; ``launcher``: this machine's
    interfaces (name -> "IPv4/netmask"), ``versions``: its package versions."""
    problems = [r.error for r in reports if r.error]
    probed = [r for r in reports if not r.error]
    for report in probed:
        problems += _host_problems(request, report, versions)
    if not probed:
        return None, problems
    interface, interface_problems = _interface(request, probed)
    rendezvous, rendezvous_problems = _rendezvous(probed, launcher, interface)
    problems += interface_problems + rendezvous_problems
    if problems:
        return None, problems
    return Plan(
        interface,
        rendezvous,
        next(n for n, i in sorted(launcher.items()) if _address(i) == rendezvous),
    ), []


def _host_problems(
    request: Request, report: HostReport, versions: dict[str, str | None]
) -> list[str]:
    host, problems = report.host, []
    if request.cwd in report.missing:
        problems.append(
            f"host {host} has no {request.cwd}: the job runs there on every host; put the project "
            f"at the same path there (or share it, e.g. over NFS)"
        )
    elif request.script in report.missing:
        problems.append(
            f"host {host} has no {request.script}: put the project at the same path on every host "
            f"(or share it, e.g. over NFS)"
        )
    if not report.own_addresses:
        problems.append(
            f"host {host} cannot resolve its own name {report.hostname}: add it to {host}'s "
            f"/etc/hosts with its address on the hosts' network"
        )
    elif loopback := [a for a in report.own_addresses if _loopback(a)]:
        problems.append(
            f"host {host} resolves its own name {report.hostname} to {loopback[0]} (loopback, as "
            "in Debian's default /etc/hosts): Horovod's Gloo would tell the other hosts to "
            f"connect there; map {report.hostname} to its address on the hosts' network in "
            f"{host}'s /etc/hosts"
        )
    for package, expected in versions.items():
        found = report.versions.get(package)
        if expected is not None and found != expected:
            problems.append(
                f"host {host} has {package} {found or '(not installed)'}, this machine {expected}: "
                f"install the same Horovod, torch and TensorFlow on every host (make install)"
            )
    if request.mpi and not report.commands.get("orted", True):
        problems.append(
            f"host {host} has no Open MPI (orted is not on the PATH of an ssh login there): "
            "install openmpi-bin there, or drop --mpi"
        )
    return problems


def _interface(request: Request, reports: list[HostReport]) -> tuple[str | None, list[str]]:
    """The workers' interface: ``--network-interface``, else the name every host has an address on,
    the addresses all different (a docker0 with the same address everywhere is no network)."""

    def listed(report: HostReport) -> str:
        return (
            ", ".join(
                f"{n} {_address(i)}"
                for n, i in sorted(report.interfaces.items())
                if not _loopback(i)
            )
            or "none"
        )

    if request.interface:
        missing = [r for r in reports if request.interface not in r.interfaces]
        return request.interface, [
            f"host {r.host} has no network interface {request.interface} with an IPv4 "
            f"address (--network-interface {request.interface}); its interfaces: {listed(r)}"
            for r in missing
        ]
    common = set.intersection(
        *(set(n for n, i in r.interfaces.items() if not _loopback(i)) for r in reports)
    )
    shared = sorted(
        n for n in common if len({_address(r.interfaces[n]) for r in reports}) == len(reports)
    )
    if not shared:
        hosts = "; ".join(f"{r.host}: {listed(r)}" for r in reports)
        return None, [
            f"no network interface name is on every host with its own address ({hosts}): Horovod "
            "binds to one interface name on all hosts; give the hosts' interfaces on one network "
            "the same name, then pass --network-interface NAME"
        ]
    # Several (eth0 and ib0, say): the one on a single subnet across hosts, then the first name.
    return min(
        shared, key=lambda n: (len({_network(r.interfaces[n]) for r in reports}) != 1, n)
    ), []


def _rendezvous(
    reports: list[HostReport], launcher: dict[str, str], interface: str | None
) -> tuple[str | None, list[str]]:
    """This machine's address every host connected to: the one on the workers' interface name if
    it qualifies (what horovodrun would use), else one on the hosts' network, else any."""
    common = set.intersection(*(set(r.reached) for r in reports))
    if common:
        networks = {_network(r.interfaces[interface]) for r in reports if interface in r.interfaces}
        own = _address(launcher[interface]) if interface in launcher else None
        return min(
            common,
            key=lambda a: (a != own, not any(ipaddress.ip_address(a) in n for n in networks), a),
        ), []
    tried = ", ".join(f"{_address(i)} ({n})" for n, i in sorted(launcher.items()))
    return None, [
        f"host {r.host} cannot connect to this machine at {tried}, where the job's rendezvous "
        "server runs: run hvdtrain run on one of the hosts, or on a machine they can connect to"
        for r in reports
        if not r.reached
    ] or [
        "the hosts reach this machine at no common address "
        f"({'; '.join(f'{r.host}: {r.reached}' for r in reports)}): run hvdtrain run on one of the "
        "hosts"
    ]


def _versions() -> dict[str, str | None]:
    return {package: host_probe.version(package) for package in PACKAGES}


def _address(interface: str) -> str:
    """ "10.1.2.3" of "10.1.2.3/255.255.255.0" (or of an address alone)."""
    return interface.split("/")[0]


def _network(interface: str) -> ipaddress.IPv4Network:
    return ipaddress.ip_interface(interface).network


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(_address(address)).is_loopback


class _Listener:
    """A TCP port on every address of this machine, for the hosts to try (connections are accepted
    and closed at once); ``with _Listener() as port``."""

    def __enter__(self) -> int:
        self._socket = socket.create_server(("0.0.0.0", 0), backlog=128)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self._socket.getsockname()[1]

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            connection.close()

    def __exit__(self, *exc) -> None:
        self._socket.close()
