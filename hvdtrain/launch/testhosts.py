"""Test hosts: several separate network hosts on one Linux machine, for multi-host tests and
benchmarks (root only).

Each host is a network namespace on a bridge, with its own hostname (a UTS namespace), an address
``10.77.<instance>.<10+i>``, an sshd on a generated key (so ``ssh <host>`` and horovodrun work
without prompts; its host key is recorded the first time, in the set's own known_hosts, and
checked from then on, as on a real cluster) and optionally a link rate (``tc tbf`` on what it
sends). The file system is shared by all hosts, like an NFS home on a cluster, so the same
virtualenv path works everywhere.
Names are ``t<instance>h<i>`` (``t0h1``, ``t0h2`` ...) so that several sets can exist at once, each
made by its own process; a set whose maker died is removed by the next one that takes its number.

What is changed outside the namespaces, and removed by ``down``: a bridge ``hvtbr<instance>``, a
block of names in ``/etc/hosts``, a block in ``~/.ssh/config`` and the state directory
``/run/hvdtrain-test-hosts/<instance>``. Measured facts these rely on: ``../shared/test-hosts.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

STATE_ROOT = Path("/run/hvdtrain-test-hosts")
ETC_HOSTS = Path("/etc/hosts")
SSH_CONFIG = Path.home() / ".ssh" / "config"
MAX_INSTANCES = 100
SSHD = "/usr/sbin/sshd"
NEEDED_COMMANDS = {
    "ip": "iproute2",
    "tc": "iproute2",
    SSHD: "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nsenter": "util-linux",
    "unshare": "util-linux",
}
MANUAL = "manual"  # owner of a set made by ``hvdtrain test-hosts up``: kept until ``down``


class TestHostsError(RuntimeError):
    """The machine cannot make test hosts (not root, a missing tool);
    the message says what to do."""


def unavailable_reason() -> str | None:
    """Why test hosts cannot be made here, in one line; None when they can."""
    if os.uname().sysname != "Linux":
        return "test hosts need Linux network namespaces"
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, a bridge, sshd)"
    missing = sorted({pkg for cmd, pkg in NEEDED_COMMANDS.items() if shutil.which(cmd) is None})
    if missing:
        return f"test hosts need {', '.join(missing)} (apt-get install {' '.join(missing)})"
    return None


@dataclass(frozen=True)
class Host:
    name: str  # its hostname, network namespace and /etc/hosts name
    address: str
    peer: str  # the bridge end of its link, in the root namespace


class TestHosts:
    """``count`` hosts; ``with TestHosts(3) as hosts:`` makes them and always removes them.

    ``link_rate`` (e.g. ``"1gbit"``) limits what each host sends. Commands run on a host with
    ``spawn``/``run`` (environment and working directory kept, like a job started there) or ``ssh``.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, count: int, *, link_rate: str | None = None, owner: str | None = None):
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.count = count
        self.link_rate = link_rate
        self.owner = owner or str(os.getpid())
        self.instance: int | None = None
        self.hosts: list[Host] = []

    # --- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> TestHosts:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> TestHosts:
        reason = unavailable_reason()
        if reason:
            raise TestHostsError(reason)
        self.instance = _claim_instance(self.owner)
        try:
            k = self.instance
            self.hosts = [
                Host(f"t{k}h{i}", f"10.77.{k}.{10 + i}", f"vt{k}h{i}")
                for i in range(1, self.count + 1)
            ]
            key = self.state / "id_ed25519"
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.state / "host_key"))
            (self.state / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
            _sh("ip", "link", "add", self.bridge, "type", "bridge")
            _sh("ip", "addr", "add", f"10.77.{k}.1/24", "dev", self.bridge)
            _sh("ip", "link", "set", self.bridge, "up")
            for host in self.hosts:
                self._make(host)
            with _locked():  # other sets edit the same files at the same time
                _edit_block(
                    ETC_HOSTS, self._marker, "".join(f"{h.address} {h.name}\n" for h in self.hosts)
                )
            SSH_CONFIG.parent.mkdir(mode=0o700, exist_ok=True)
            self.jump([], via=None)
            for host in self.hosts:
                self.start(host.name)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Remove everything ``up`` made; safe to call twice or after a failed ``up``."""
        if self.instance is not None:
            remove(self.instance)
            self.instance = None

    # --- what tests do to hosts -------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no test host {name!r}; hosts: {', '.join(self.names)}")

    def start(
        self,
        name: str,
        *,
        etc_hosts: str | None = None,
        hide: Sequence[str] = (),
        binds: Sequence[tuple[str, str]] = (),
        sshd_options: Sequence[str] = (),
        host_key: Path | None = None,
    ) -> None:
        """(Re)start the host's sshd, the process every later command on the host descends from.

        ``etc_hosts``: the host's own /etc/hosts (e.g. its name on a loopback address, as Debian
        writes it); ``hide``: paths that do not exist on this host (an empty directory over them);
        ``binds``: ``(source, target)`` files mounted over others (another version of a file);
        ``sshd_options``: lines added to its sshd's configuration (``PasswordAuthentication yes``);
        ``host_key``: another host key than the set's own (a reinstalled host).
        """
        host = self.host(name)
        self.stop(name)
        setup = [f"hostname {host.name}"]
        if etc_hosts is not None:
            own = self.state / f"hosts-{host.name}"
            own.write_text(etc_hosts)
            setup.append(f"mount --bind {own} /etc/hosts")
        setup += [f"mount -t tmpfs -o size=1m,mode=0 none {shlex.quote(path)}" for path in hide]
        setup += [f"mount --bind {shlex.quote(src)} {shlex.quote(dst)}" for src, dst in binds]
        config = self.state / f"sshd-{host.name}.conf"
        # sshd takes the first value it reads for an option: the caller's come first.
        config.write_text(
            "".join(f"{line}\n" for line in sshd_options)
            + _sshd_config(host, self.state, host_key or self.state / "host_key")
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # Debian's sshd refuses to start without it
        setup.append(f"exec {SSHD} -D -e -f {config}")
        log = open(self.state / f"sshd-{host.name}.log", "ab")
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                host.name,
                "unshare",
                "--uts",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                " && ".join(setup),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 10
        while self._sshd_pid(host) is None or not self._port_open(host):
            if time.monotonic() > deadline:
                raise TestHostsError(
                    f"sshd on test host {name} did not start; see {self.state}/sshd-{name}.log"
                )
            time.sleep(0.05)

    def stop(self, name: str) -> None:
        """The host goes away: every process on it is killed (sshd included)."""
        host = self.host(name)
        survivors = _kill_all(host.name)
        if survivors:
            raise TestHostsError(f"processes on test host {name} survive SIGKILL: {survivors}")

    def jump(self, names: Sequence[str], via: str | None) -> None:
        """ssh reaches ``names`` through host ``via`` (ProxyJump, like a cluster behind a login
        node), or directly again with ``via=None``."""
        k = self.instance
        detour = f"Host {' '.join(names)}\n  ProxyJump {via}\n" if names and via else ""
        with _locked():
            _edit_block(
                SSH_CONFIG,
                self._marker,
                f"{detour}Host t{k}h*\n  IdentityFile {self.state / 'id_ed25519'}\n"
                # Host keys are checked as on a real cluster (trust on first use), in a
                # known_hosts file of the set's own.
                f"  StrictHostKeyChecking accept-new\n"
                f"  UserKnownHostsFile {self.state / 'known_hosts'}\n  LogLevel ERROR\n"
                "  ConnectTimeout 5\n",
            )

    def cut(self, name: str) -> None:
        """The host's link goes down (its processes keep running, unreachable)."""
        self.run_root(name, "ip", "link", "set", "eth0", "down")

    def restore(self, name: str) -> None:
        self.run_root(name, "ip", "link", "set", "eth0", "up")

    def processes(self, name: str) -> list[int]:
        """Pids of the processes running on the host, its sshd included."""
        return _netns_pids(self.host(name).name)

    def job_processes(self, name: str) -> list[str]:
        """``pid command`` of each process on the host other than its sshd: what a finished job
        must not leave behind."""
        sshd = self._sshd_pid(self.host(name))
        found = []
        for pid in self.processes(name):
            with contextlib.suppress(OSError):
                if pid != sshd:
                    command = (
                        Path(f"/proc/{pid}/cmdline")
                        .read_bytes()
                        .replace(b"\0", b" ")
                        .decode()
                        .strip()
                    )
                    found.append(f"{pid} {command}")
        return found

    def spawn(self, name: str, argv: Sequence[str], **popen) -> subprocess.Popen:
        """Start ``argv`` on the host (its network, hostname and mounts) with this process's
        environment and working directory unless ``popen`` says otherwise."""
        host = self.host(name)
        pid = self._sshd_pid(host)
        if pid is None:
            raise TestHostsError(f"test host {name} is stopped")
        # Entering a mount namespace moves to its root directory: the working directory is set
        # again.
        workdir = os.fspath(popen.pop("cwd", None) or os.getcwd())
        return subprocess.Popen(
            [
                "nsenter",
                "--target",
                str(pid),
                "--net",
                "--uts",
                "--mount",
                f"--wd={workdir}",
                "--",
                *argv,
            ],
            **popen,
        )

    def run(
        self, name: str, argv: Sequence[str], timeout: float = 60, **kwargs
    ) -> subprocess.CompletedProcess:
        proc = self.spawn(
            name, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
        )
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def ssh(self, name: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``command`` through ``ssh <host>``, as a user logs in (a login environment)."""
        return subprocess.run(
            ["ssh", "-o", "BatchMode=yes", name, command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run_root(self, name: str, *argv: str) -> None:
        """A command in the host's network namespace only (link and traffic settings)."""
        _sh("ip", "netns", "exec", self.host(name).name, *argv)

    # --- internals -------------------------------------------------------------------------------
    @property
    def state(self) -> Path:
        return STATE_ROOT / str(self.instance)

    @property
    def bridge(self) -> str:
        return f"hvtbr{self.instance}"

    @property
    def _marker(self) -> str:
        return _marker(self.instance)

    def _make(self, host: Host) -> None:
        _sh("ip", "netns", "add", host.name)
        _sh(
            "ip",
            "link",
            "add",
            host.peer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.name,
        )
        _sh("ip", "link", "set", host.peer, "master", self.bridge, "up")
        for argv in (
            ("ip", "addr", "add", f"{host.address}/24", "dev", "eth0"),
            ("ip", "link", "set", "eth0", "up"),
            ("ip", "link", "set", "lo", "up"),
        ):
            self.run_root(host.name, *argv)
        if self.link_rate:
            self.run_root(
                host.name,
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                self.link_rate,
                "burst",
                "512kb",
                "latency",
                "50ms",
            )

    def _sshd_pid(self, host: Host) -> int | None:
        for pid in _netns_pids(host.name):
            with contextlib.suppress(OSError):
                if (
                    Path(f"/proc/{pid}/exe").resolve() == Path(SSHD).resolve()
                    and f"sshd-{host.name}.conf" in Path(f"/proc/{pid}/cmdline").read_text()
                ):
                    return pid
        return None

    def _port_open(self, host: Host) -> bool:
        import socket

        with (
            contextlib.suppress(OSError),
            socket.create_connection((host.address, 22), timeout=0.5),
        ):
            return True
        return False


# --- instances: numbered sets, one owner each -----------------------------------------------------
@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One process at a time edits instances and the shared files (/etc/hosts, ~/.ssh/config)."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(STATE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _claim_instance(owner: str) -> int:
    with _locked():
        for k in range(MAX_INSTANCES):
            state = STATE_ROOT / str(k)
            if state.exists() and _owner_alive(state):
                continue
            _remove_instance(k)  # what a dead owner left behind
            state.mkdir(mode=0o700)
            (state / "owner").write_text(owner)
            return k
    raise TestHostsError(
        f"all {MAX_INSTANCES} test host sets are in use (hvdtrain test-hosts down --all)"
    )


def _owner_alive(state: Path) -> bool:
    try:
        owner = (state / "owner").read_text().strip()
    except OSError:
        return False
    if owner == MANUAL:
        return True
    return owner.isdigit() and Path(f"/proc/{owner}").exists()


def instances() -> list[tuple[int, str, list[str]]]:
    """Sets that exist now: (instance, owner, host names)."""
    found = []
    for state in sorted(STATE_ROOT.glob("[0-9]*"), key=lambda p: int(p.name)):
        owner = (state / "owner").read_text().strip() if (state / "owner").exists() else "?"
        k = int(state.name)
        found.append((k, owner, sorted(n for n in _netns_names() if re.fullmatch(rf"t{k}h\d+", n))))
    return found


def remove(k: int) -> None:
    """Remove set ``k`` and everything it changed outside its namespaces, whoever made it."""
    with _locked():
        _remove_instance(k)


def _remove_instance(k: int) -> None:
    for name in _netns_names():
        if re.fullmatch(rf"t{k}h\d+", name):
            _kill_all(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    # The links go with their namespace, but only once the kernel has cleaned it up (later, in the
    # background): deleted here so that the same names can be made again at once.
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for link in re.findall(rf"^\d+: (vt{k}h\d+|hvtbr{k})[@:]", links, flags=re.M):
        subprocess.run(["ip", "link", "del", link], capture_output=True)
    _edit_block(ETC_HOSTS, _marker(k), "")
    if SSH_CONFIG.exists():
        _edit_block(SSH_CONFIG, _marker(k), "")
    shutil.rmtree(STATE_ROOT / str(k), ignore_errors=True)


def _marker(k: int) -> str:
    return f"hvdtrain test hosts {k}"


def _edit_block(path: Path, marker: str, body: str) -> None:
    """Replace (or remove, with an empty ``body``) the block between marker lines in ``path``."""
    text = path.read_text() if path.exists() else ""
    begin, end = f"# begin {marker}\n", f"# end {marker}\n"
    text = re.sub(re.escape(begin) + r".*?" + re.escape(end), "", text, flags=re.S)
    if body:
        text = text + ("" if not text or text.endswith("\n") else "\n") + begin + body + end
    # In place (not a rename): /etc/hosts may be a bind mount that cannot be replaced.
    with open(path, "r+" if path.exists() else "w") as f:
        f.write(text)
        f.truncate()


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_all(namespace: str) -> list[int]:
    """SIGKILL every process in ``namespace`` until none is left
    (for up to 2.5 s); the survivors."""
    for _ in range(50):
        pids = _netns_pids(namespace)
        if not pids:
            return []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    return _netns_pids(namespace)


def _netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _sshd_config(host: Host, state: Path, host_key: Path) -> str:
    return "\n".join(
        [
            f"ListenAddress {host.address}",
            "Port 22",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {state / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            # horovodrun opens several sessions per host at once (checks, task services, workers).
            "MaxStartups 200",
            "MaxSessions 200",
            f"PidFile {state / f'sshd-{host.name}.pid'}",
            "LogLevel ERROR",
            "",
        ]
    )


def _sh(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise TestHostsError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")
