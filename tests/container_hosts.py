"""Containers of one image that are hosts of their own, as on a cluster: each its hostname, its
address on a bridge (a veth moved into the container's network namespace: Docker's own networking
stays off, ``scripts/docker-engine.sh``), and sshd on a non-default port with keys mounted at run
time, never in the image: Horovod's "Docker across hosts" recipe on one machine.

Every container mounts the same job directory (like an NFS home) and the same ``/root/.ssh``:
a client key, ``authorized_keys``, and ``known_hosts`` holding each container's host key, so ssh
checks them (``StrictHostKeyChecking yes`` in its config).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import psutil

SSH_PORT = 12345


def _sh(*argv: str, timeout: float = 60) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


class ContainerHosts:
    """``count`` containers of ``image`` named ``ctr1``...,
    up in ``__enter__``, gone in ``__exit__``."""

    def __init__(self, docker: str, image: str, count: int, root: Path):
        tag = os.getpid() % 100000
        self.docker, self.image, self.root = docker, image, root
        self.bridge = f"hvdc{tag}"
        subnet = f"10.78.{tag % 250}"
        self.names = [f"ctr{i}" for i in range(1, count + 1)]
        self.addresses = {name: f"{subnet}.{10 + i}" for i, name in enumerate(self.names, 1)}
        self.gateway = f"{subnet}.1/24"
        self.containers = {name: f"hvdtrain-test-{tag}-{name}" for name in self.names}
        self.job_dir = root / "job"

    def __enter__(self) -> ContainerHosts:
        try:
            self._keys()
            _sh("ip", "link", "add", self.bridge, "type", "bridge")
            _sh("ip", "addr", "add", self.gateway, "dev", self.bridge)
            _sh("ip", "link", "set", self.bridge, "up")
            for name in self.names:
                self._start(name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for container in self.containers.values():
            subprocess.run([self.docker, "rm", "-f", container], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def _keys(self) -> None:
        ssh = self.root / "ssh"
        ssh.mkdir(mode=0o700)
        self.job_dir.mkdir()
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "id_ed25519"))
        (ssh / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text())
        known = []
        for name in self.names:
            keydir = self.root / f"hostkey-{name}"
            keydir.mkdir(mode=0o700)
            _sh(
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                str(keydir / "ssh_host_ed25519_key"),
            )
            public = (keydir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            known.append(
                f"[{name}]:{SSH_PORT},[{self.addresses[name]}]:{SSH_PORT} {' '.join(public)}\n"
            )
        (ssh / "known_hosts").write_text("".join(known))
        (ssh / "config").write_text(
            f"Host *\n  Port {SSH_PORT}\n  IdentityFile /root/.ssh/id_ed25519\n"
            "  StrictHostKeyChecking yes\n  UserKnownHostsFile /root/.ssh/known_hosts\n"
        )

    def _start(self, name: str) -> None:
        hosts = [f"--add-host={other}:{address}" for other, address in self.addresses.items()]
        _sh(
            self.docker,
            "run",
            "-d",
            "--name",
            self.containers[name],
            "--hostname",
            name,
            "--network",
            "none",
            *hosts,
            "-v",
            f"{self.root / 'ssh'}:/root/.ssh:ro",
            "-v",
            f"{self.root / f'hostkey-{name}'}:/etc/ssh/host:ro",
            "-v",
            f"{self.job_dir}:/job",
            "-w",
            "/job",
            self.image,
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-p",
            str(SSH_PORT),
            "-h",
            "/etc/ssh/host/ssh_host_ed25519_key",
            "-o",
            "MaxStartups=100",
            "-o",
            "MaxSessions=100",
        )
        pid = self.pid(name)
        outside, inside = f"{self.bridge}x{name[-1]}", f"{self.bridge}y{name[-1]}"
        _sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        _sh("ip", "link", "set", inside, "netns", str(pid))
        _sh("ip", "link", "set", outside, "master", self.bridge, "up")
        for argv in (
            ("ip", "link", "set", inside, "name", "eth0"),
            ("ip", "addr", "add", f"{self.addresses[name]}/24", "dev", "eth0"),
            ("ip", "link", "set", "eth0", "up"),
            ("ip", "link", "set", "lo", "up"),
        ):
            _sh("nsenter", "-t", str(pid), "-n", *argv)

    def pid(self, name: str) -> int:
        """The container's first process (its sshd), as this machine numbers it."""
        return int(
            _sh(self.docker, "inspect", "-f", "{{.State.Pid}}", self.containers[name]).strip()
        )

    def exec(self, name: str, *argv: str, **popen) -> subprocess.Popen:
        """``argv`` run in container ``name`` (in /job), output captured as text."""
        return subprocess.Popen(
            [self.docker, "exec", self.containers[name], *argv],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **popen,
        )

    def worker(self, name: str, rank: int) -> int | None:
        """The pid (on this machine) of the training process of ``rank`` in container ``name``."""
        for proc in psutil.Process(self.pid(name)).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                command = " ".join(proc.cmdline())
                if (
                    proc.environ().get("HOROVOD_RANK") == str(rank)
                    and "python" in command
                    and "worker_guard" not in command
                ):
                    return proc.pid
        return None
