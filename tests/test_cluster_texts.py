"""Issue 12, without hosts: how the pre-flight reports of several hosts become a plan (which
interface, which rendezvous address) or problem lines, and how the launcher reads mpirun's and
the worker guard's texts (copied from real runs). The multi-host tests run the same on hosts."""

import signal

from hvdtrain.launch import parsers, preflight

VERSIONS = {
    "horovod": "0.28.1",
    "torch": "2.13.0",
    "tensorflow": "2.21.0",
    "tensorflow-cpu": None,
    "keras": "3.15.1",
}
REQUEST = preflight.Request(
    hosts=["n1", "n2"], ssh_port=22, python="/v/bin/python", cwd="/p", script="/p/train.py"
)


def report(
    host: str, interfaces: dict[str, str], reached: list[str], **extra
) -> preflight.HostReport:
    return preflight.HostReport(
        host,
        hostname=host,
        own_addresses=[interfaces["eth0"].split("/")[0]] if "eth0" in interfaces else ["10.9.9.9"],
        interfaces=interfaces,
        versions=dict(VERSIONS),
        reached=reached,
        **extra,
    )


def test_the_interface_on_one_network_is_chosen_and_docker0_never():
    launcher = {"eth0": "10.0.0.1/255.255.255.0", "docker0": "172.17.0.1/255.255.0.0"}
    reports = [
        report(
            f"n{i}",
            {
                "lo": "127.0.0.1/255.0.0.0",
                "docker0": "172.17.0.1/255.255.0.0",
                "eth0": f"10.0.0.1{i}/255.255.255.0",
                "ib0": f"192.168.{i}.1/255.255.255.0",
            },
            reached=["10.0.0.1", "172.17.0.1"],
        )
        for i in (1, 2)
    ]
    plan, problems = preflight.decide(REQUEST, reports, launcher, VERSIONS)
    # docker0: the same address everywhere; ib0: two different networks; eth0: one network.
    assert problems == [] and plan == preflight.Plan("eth0", "10.0.0.1", "eth0")


def test_a_launcher_outside_the_hosts_network_serves_on_the_address_they_reach():
    launcher = {"eth0": "192.0.2.2/255.255.255.0", "br0": "10.0.0.1/255.255.255.0"}
    reports = [
        report(f"n{i}", {"eth0": f"10.0.0.1{i}/255.255.255.0"}, reached=["10.0.0.1"])
        for i in (1, 2)
    ]
    plan, problems = preflight.decide(REQUEST, reports, launcher, VERSIONS)
    assert problems == [] and plan == preflight.Plan("eth0", "10.0.0.1", "br0")


def test_problems_are_one_line_per_host():
    launcher = {"eth0": "10.0.0.1/255.255.255.0"}
    reports = [
        report(
            "n1", {"eth0": "10.0.0.11/255.255.255.0"}, reached=["10.0.0.1"], missing=["/p/train.py"]
        ),
        report("n2", {"eth0": "10.0.0.12/255.255.255.0"}, reached=[]),
        preflight.HostReport("n3", error="host n3 asks for an SSH password (...)"),
    ]
    reports[1].versions["torch"] = "2.12.0"
    reports[1].own_addresses = ["127.0.1.1"]
    plan, problems = preflight.decide(REQUEST, reports, launcher, VERSIONS)
    assert plan is None and problems == [
        "host n3 asks for an SSH password (...)",
        "host n1 has no /p/train.py: put the project at the same path on every host (or share it, "
        "e.g. over NFS)",
        "host n2 resolves its own name n2 to 127.0.1.1 (loopback, as in Debian's default "
        "/etc/hosts): Horovod's Gloo would tell the other hosts to connect there; map n2 to its "
        "address on the hosts' network in n2's /etc/hosts",
        "host n2 has torch 2.12.0, this machine 2.13.0: install the same Horovod, torch and "
        "TensorFlow on every host (make install)",
        "host n2 cannot connect to this machine at 10.0.0.1 (eth0), where the job's rendezvous "
        "server runs: run hvdtrain run on one of the hosts, or on a machine they can connect to",
    ]


def test_ssh_failures_are_told_apart():
    problem = preflight._ssh_problem
    assert problem("n2", 22, "root@n2: Permission denied (publickey).\n").startswith(
        "host n2 refused this machine's SSH key (ssh: root@n2: Permission denied (publickey).)"
    )
    assert problem("n2", 2222, "root@n2: Permission denied (publickey,password).\n").endswith(
        "set up key login, e.g. ssh-copy-id -p 2222 n2"
    )
    assert problem("n2", 22, "Host key verification failed.\n").startswith(
        "host n2's SSH host key differs"
    )


MPI_SIGKILL = """\
--------------------------------------------------------------------------
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
--------------------------------------------------------------------------
--------------------------------------------------------------------------
mpirun noticed that process rank 1 with PID 2622 on node t0h2 exited on signal 9 (Killed).
--------------------------------------------------------------------------
"""
MPI_EXIT = """\
--------------------------------------------------------------------------
mpirun detected that one or more processes exited with non-zero status, thus causing
the job to be terminated. The first process to do so was:

  Process name: [[9871,1],1]
  Exit code:    3
--------------------------------------------------------------------------
"""
MPI_WARNING = """\
--------------------------------------------------------------------------
WARNING: There was an error initializing an OpenFabrics device.
--------------------------------------------------------------------------
"""


def read(text: str) -> tuple[list[tuple[int, int]], list[str]]:
    notices, shown = parsers.MpiNotices(), []
    for line in text.splitlines(keepends=True):
        shown += notices.feed(line)
    return notices.failures, shown + notices.flush()


def test_mpirun_notices_give_rank_and_status_and_are_hidden():
    assert read(MPI_SIGKILL) == ([(1, 128 + signal.SIGKILL)], [])
    assert read(MPI_EXIT) == ([(1, 3)], [])
    assert read("an ordinary line\n" + MPI_WARNING) == (
        [],
        ["an ordinary line\n", *MPI_WARNING.splitlines(True)],
    )
    assert read("ORTE has lost communication with a remote daemon.\n")[0] == [
        (parsers.DAEMON_LOST, 255)
    ]
    assert parsers.split_worker_line("[1,1]<stderr>:text") == (1, "stderr", "text")


def test_guard_notices_are_found_anywhere_in_a_line():
    chunk = (
        "[1,0]<stderr>:epoch 1:  20%|██ | 5/25[1,1]<stderr>:hvdtrain-guard: worker frozen by "
        "SIGSTOP[1,1]<stderr>:\n"
    )
    assert parsers.guard_notices(chunk) == [(1, "frozen", signal.SIGSTOP)]
    assert (
        parsers.without_guard_notices(chunk)
        == "[1,0]<stderr>:epoch 1:  20%|██ | 5/25[1,1]<stderr>:\n"
    )
    assert parsers.guard_notices("[3]<stderr>:hvdtrain-guard: worker killed by SIGKILL\n") == [
        (3, "killed", signal.SIGKILL)
    ]
    assert parsers.guard_notices("[3]<stderr>:hvdtrain-guard: worker continued\n") == [
        (3, "continued", None)
    ]
    assert (
        parsers.guard_notices("[3]<stdout>:my own hvdtrain-guard: worker killed by SIGKILL\n") == []
    )
