"""Issue 12: each problem between hosts is found before any worker starts, within seconds: exit 2
and one line naming the host and the fix. One set of test hosts for the module; each test gives
the second host a different view (sshd settings, /etc/hosts, hidden paths, another file, an
interface name, routes) and puts it back afterwards.

The job is launched on the first host (or, for the rendezvous, from outside the hosts' network);
its script would leave a file behind if any worker started.
"""

import importlib.metadata
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from horovod.runner.util import remote

from hvdtrain.launch import preflight
from tests import docs_table
from tests.multihost import finish, job_env, run

pytestmark = pytest.mark.multihost
BOUND_S = 10


@pytest.fixture(scope="module")
def hosts(module_test_hosts):
    return module_test_hosts(3)


@pytest.fixture
def h2(hosts):
    """The second host's name; its normal view is restored after the test."""
    yield hosts.names[1]
    hosts.start(hosts.names[1])


@pytest.fixture
def worker(tmp_path):
    script = tmp_path / "proj" / "train.py"
    script.parent.mkdir()
    script.write_text(f"open({str(tmp_path / 'started')!r}, 'w')\n")
    return script


# ``hvdtrain run`` timed from the call of its main function: the checks' own time, without the
# import of the CLI (seconds on a loaded machine until the CLI imports lazily).
TIMED_MAIN = (
    "import sys, time\nfrom hvdtrain.cli import main\nstarted = time.monotonic()\n"
    "code = main(sys.argv[1:])\n"
    "print(f'main: {time.monotonic() - started:.2f} s', file=sys.stderr)\nsys.exit(code)"
)


def refused(hosts, tmp_path, worker, *flags, on=None):
    """Launch a 2-host job (first two hosts) on the first host, or from outside the hosts'
    network; the error lines it printed, once it was seen to exit 2 in time, no worker started."""
    h1, h2 = hosts.names[:2]
    command = [
        sys.executable,
        "-c",
        TIMED_MAIN,
        "run",
        "-np",
        "2",
        "-H",
        f"{h1}:1,{h2}:1",
        *flags,
        str(worker),
    ]
    started = time.monotonic()
    if on == "outside":
        proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=job_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    else:
        proc = hosts.spawn(
            h1,
            command,
            cwd=tmp_path,
            env=job_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    out, err, took = finish(proc, started, timeout=60)
    *lines, timing = err.strip().splitlines()
    checks = float(re.fullmatch(r"main: ([\d.]+) s", timing).group(1))
    print(f"\n{checks:.1f} s ({took:.1f} s with the CLI's start): {lines[-1]}")
    assert proc.returncode == 2, err
    assert checks < BOUND_S, f"{checks:.1f} s: {err}"
    assert not (tmp_path / "started").exists()
    return [line for line in lines if not line.startswith("hvdtrain: warning:")]


def test_ssh_key_refused(hosts, h2, tmp_path, worker):
    empty = tmp_path / "no_keys"
    empty.write_text("")
    hosts.start(h2, binds=[(str(empty), str(hosts.state / "authorized_keys"))])
    assert refused(hosts, tmp_path, worker) == [
        f"hvdtrain: error: host {h2} refused this machine's SSH key (ssh: root@{h2}: Permission "
        f"denied (publickey).): add the key to {h2}'s authorized_keys, e.g. ssh-copy-id {h2}"
    ]


def test_ssh_asks_for_a_password(hosts, h2, tmp_path, worker):
    empty = tmp_path / "no_keys"
    empty.write_text("")
    hosts.start(
        h2,
        binds=[(str(empty), str(hosts.state / "authorized_keys"))],
        sshd_options=["PasswordAuthentication yes"],
    )
    assert refused(hosts, tmp_path, worker) == [
        f"hvdtrain: error: host {h2} asks for an SSH password (ssh: root@{h2}: Permission denied "
        "(publickey,password).): hvdtrain run logs in to every host without a prompt; set up key "
        f"login, e.g. ssh-copy-id {h2}"
    ]


def test_host_name_resolving_to_loopback(hosts, h2, tmp_path, worker):
    h1, _, h3 = hosts.names
    others = "".join(f"{hosts.host(n).address} {n}\n" for n in (h1, h3))
    hosts.start(h2, etc_hosts=f"127.0.0.1 localhost\n127.0.1.1 {h2}\n{others}")  # Debian's default
    assert refused(hosts, tmp_path, worker) == [
        f"hvdtrain: error: host {h2} resolves its own name {h2} to 127.0.1.1 (loopback, as in "
        "Debian's default /etc/hosts): Horovod's Gloo would tell the other hosts to connect "
        f"there; map {h2} to its address on the hosts' network in {h2}'s /etc/hosts"
    ]


def test_python_missing_on_a_host(hosts, h2, tmp_path, worker):
    hosts.start(h2, hide=[sys.prefix])
    assert refused(hosts, tmp_path, worker) == [
        f"hvdtrain: error: host {h2} has no {sys.executable}: install the same virtualenv at the "
        "same path on every host (or share it, e.g. over NFS)"
    ]


def test_project_missing_on_a_host(hosts, h2, tmp_path, worker):
    hosts.start(h2, hide=[str(worker.parent)])
    assert refused(hosts, tmp_path, worker) == [
        f"hvdtrain: error: host {h2} has no {worker}: put the project at the same path on every "
        "host (or share it, e.g. over NFS)"
    ]
    hosts.start(h2, hide=[str(tmp_path.parent)])  # the working directory itself is missing
    assert refused(hosts, tmp_path, worker) == [
        f"hvdtrain: error: host {h2} has no {tmp_path}: the job runs there on every host; put the "
        "project at the same path there (or share it, e.g. over NFS)"
    ]


def test_versions_differ_between_hosts(hosts, h2, tmp_path, worker):
    torch = importlib.metadata.distribution("torch")
    metadata = Path(torch._path) / "METADATA"
    older = tmp_path / "METADATA"
    older.write_text(
        re.sub(r"^Version: .*$", "Version: 2.12.0", metadata.read_text(), count=1, flags=re.M)
    )
    hosts.start(h2, binds=[(str(older), str(metadata))])
    assert refused(hosts, tmp_path, worker) == [
        f"hvdtrain: error: host {h2} has torch 2.12.0, this machine {torch.version}: install the "
        "same Horovod, torch and TensorFlow on every host (make install)"
    ]


def test_no_common_interface_and_a_missing_network_interface(hosts, h2, tmp_path, worker):
    h1 = hosts.names[0]
    for step in (["down"], ["name", "ens5"], ["up"]):
        hosts.run_root(h2, "ip", "link", "set", "eth0" if step != ["up"] else "ens5", *step)
    try:
        a1, a2 = hosts.host(h1).address, hosts.host(h2).address
        assert refused(hosts, tmp_path, worker) == [
            "hvdtrain: error: no network interface name is on every host with its own address "
            f"({h1}: eth0 {a1}; {h2}: ens5 {a2}): Horovod binds to one interface name on all "
            "hosts; give the hosts' interfaces on one network the same name, then pass "
            "--network-interface NAME"
        ]
        assert refused(hosts, tmp_path, worker, "--network-interface", "eth0") == [
            f"hvdtrain: error: host {h2} has no network interface eth0 with an IPv4 address "
            f"(--network-interface eth0); its interfaces: ens5 {a2}"
        ]
    finally:
        for step in (["down"], ["name", "eth0"], ["up"]):
            hosts.run_root(h2, "ip", "link", "set", "ens5" if step != ["up"] else "eth0", *step)


def test_rendezvous_unreachable_from_the_hosts(hosts, tmp_path, worker):
    """Launched from outside the hosts' network (this machine's root namespace), reaching them over
    ssh through a login node (the third host), while they cannot connect back to it."""
    h1, h2, h3 = hosts.names
    bridge = f"10.77.{hosts.instance}.1"
    hosts.jump([h1, h2], via=h3)
    for name in (h1, h2):
        hosts.run_root(name, "ip", "route", "add", "blackhole", f"{bridge}/32")
    try:
        lines = refused(hosts, tmp_path, worker, on="outside")
    finally:
        hosts.jump([], via=None)
        for name in (h1, h2):
            hosts.run_root(name, "ip", "route", "del", "blackhole", f"{bridge}/32")
    assert len(lines) == 2
    for name, line in zip((h1, h2), lines):
        match = re.fullmatch(
            rf"hvdtrain: error: host {name} cannot connect to this machine at (.+), where the "
            r"job's rendezvous server runs: run hvdtrain run on one of the hosts, or on a machine "
            r"they can connect to",
            line,
        )
        assert match and f"{bridge} (hvtbr{hosts.instance})" in match.group(1).split(", "), line


def test_launched_outside_the_hosts_network_the_reachable_address_is_chosen(hosts):
    """horovodrun would serve the rendezvous on this machine's eth0 (the hosts' interface name),
    which the hosts cannot reach; the pre-flight check picks the bridge's address they reach."""
    h1, h2 = hosts.names[:2]
    request = preflight.Request(
        hosts=[h1, h2],
        ssh_port=22,
        python=sys.executable,
        cwd=str(Path.cwd()),
        script=str(Path(__file__)),
    )
    started = time.monotonic()
    plan = preflight.check(request)
    took = time.monotonic() - started
    print(f"\npre-flight checks of 2 hosts from outside their network: {took:.1f} s")
    assert took < BOUND_S
    assert plan == preflight.Plan(
        interface="eth0",
        rendezvous_address=f"10.77.{hosts.instance}.1",
        launcher_interface=f"hvtbr{hosts.instance}",
    )


CHANGED_KEY = (
    "a host's SSH host key changed since it was first reached (a reinstalled node, or someone in "
    "the middle)"
)


def test_changed_host_key_is_refused_before_launch(hosts, h2, tmp_path, worker):
    """Issue 26: a host's key is recorded the first time (trust on first use) and a host whose key
    changed since (reinstalled, or someone in the middle) is refused before any worker starts; a
    throwaway cluster opts out with --no-host-key-check, which also reaches Horovod's own ssh."""
    known_hosts = hosts.state / "known_hosts"
    first = run_job(hosts, tmp_path, worker)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "started").exists()
    recorded = known_hosts.read_text()
    line = recorded_line(known_hosts, h2)  # the launching host, h1, is not reached over ssh
    (tmp_path / "started").unlink()

    reinstalled = tmp_path / "new_host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(reinstalled)], check=True
    )
    hosts.start(h2, host_key=reinstalled)
    lines = refused(hosts, tmp_path, worker)
    assert lines == [
        f"hvdtrain: error: host {h2}'s SSH host key differs from the one recorded in {known_hosts} "
        f"line {line} (the host was reinstalled, or someone is in the middle): if {h2} was "
        f"reinstalled, remove the old key with ssh-keygen -R {h2} -f {known_hosts}"
    ]
    docs_table.row(CHANGED_KEY).check(lines[0], 2, HOST=h2)
    assert known_hosts.read_text() == recorded
    # Horovod's own ssh command (its host check and every remote worker's) refuses it too.
    horovod_ssh = subprocess.run(
        remote.get_ssh_command("true", h2), shell=True, capture_output=True, text=True
    )
    assert horovod_ssh.returncode == 255
    assert horovod_ssh.stderr.splitlines()[-1] == "Host key verification failed."

    opted_out = run_job(hosts, tmp_path, worker, "--no-host-key-check")
    assert opted_out.returncode == 0, opted_out.stderr
    assert (tmp_path / "started").exists()
    assert known_hosts.read_text() == recorded  # nothing recorded without the check


def run_job(hosts, tmp_path, worker, *flags):
    """The 2-host job of ``refused``, run to its end."""
    h1, h2 = hosts.names[:2]
    return run(hosts, h1, "-np", "2", "-H", f"{h1}:1,{h2}:1", *flags, str(worker), cwd=tmp_path)


def recorded_line(known_hosts, name):
    """The line of ``known_hosts`` that holds ``name``'s key (Debian hashes the names)."""
    found = subprocess.run(
        ["ssh-keygen", "-F", name, "-f", str(known_hosts)], capture_output=True, text=True
    ).stdout
    return int(re.search(rf"^# Host {name} found: line (\d+)", found, flags=re.M).group(1))
