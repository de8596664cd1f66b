"""The test hosts themselves (``hvdtrain.launch.testhosts``): separate hosts that ssh, resolve each
other's names, can lose their link, and leave nothing behind."""

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hvdtrain.launch import testhosts

pytestmark = pytest.mark.multihost


def test_hosts_are_separate_and_reach_each_other(test_hosts, tmp_path):
    hosts = test_hosts(3)
    k = hosts.instance
    assert hosts.names == [f"t{k}h1", f"t{k}h2", f"t{k}h3"]
    for i, name in enumerate(hosts.names, start=1):
        assert hosts.ssh(name, "hostname").stdout.strip() == name  # a login over ssh, no prompt
        # spawn: the host's own UTS namespace
        assert hosts.run(name, ["hostname"]).stdout.strip() == name
        # and the caller's directory
        assert hosts.run(name, ["pwd"], cwd=tmp_path).stdout.strip() == str(tmp_path)
        addresses = hosts.run(name, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert f"10.77.{k}.{10 + i}/24" in addresses
        # /etc/hosts, for every host and the launcher
        assert socket.gethostbyname(name) == f"10.77.{k}.{10 + i}"
    # host to host, by name, through ssh (what horovodrun does from the launching host)
    assert (
        hosts.run(hosts.names[0], ["ssh", hosts.names[2], "hostname"]).stdout.strip()
        == hosts.names[2]
    )
    assert hosts.job_processes(hosts.names[1]) == []  # only sshd runs there


def test_link_cut_and_restore(test_hosts):
    hosts = test_hosts(2)
    h1, h2 = hosts.names
    hosts.cut(h2)
    started = time.monotonic()
    cut = hosts.run(h1, ["ssh", "-o", "ConnectTimeout=2", h2, "true"])
    assert cut.returncode == 255 and "timed out" in cut.stderr, cut.stderr
    assert time.monotonic() - started < 10
    hosts.restore(h2)
    assert hosts.run(h1, ["ssh", h2, "hostname"]).stdout.strip() == h2


def test_host_view_can_differ(test_hosts, tmp_path):
    """What the pre-flight tests stage: a host whose name resolves to loopback (Debian's default
    /etc/hosts), a path missing on one host, a file with other content on one host."""
    hosts = test_hosts(2)
    h1, h2 = hosts.names
    other = tmp_path / "other.txt"
    other.write_text("other\n")
    mine = tmp_path / "mine.txt"
    mine.write_text("mine\n")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "file").write_text("x")
    hosts.start(
        h2,
        etc_hosts=f"127.0.0.1 localhost\n127.0.1.1 {h2}\n",
        hide=[str(hidden)],
        binds=[(str(other), str(mine))],
    )
    assert hosts.ssh(h2, f"getent hosts {h2}").stdout.split() == ["127.0.1.1", h2]
    assert hosts.ssh(h2, f"ls {hidden}").stdout == ""
    assert hosts.ssh(h2, f"cat {mine}").stdout == "other\n"
    assert hosts.ssh(h1, f"cat {mine}").stdout == "mine\n"  # only h2 sees it
    assert (hidden / "file").exists()  # nothing leaks to the machine itself


def test_link_rate_limits_what_a_host_sends(test_hosts):
    hosts = test_hosts(2, link_rate="100mbit")
    h1, h2 = hosts.names
    qdisc = hosts.run(h1, ["tc", "qdisc", "show", "dev", "eth0"]).stdout
    assert re.search(r"tbf .* rate 100Mbit", qdisc), qdisc
    # 25 MB from h1 to h2 through a 100 Mbit/s (12.5 MB/s) link: at least ~2 s.
    server = hosts.spawn(
        h2,
        [
            "python3",
            "-c",
            "import socket; s = socket.create_server(('0.0.0.0', 5001)); "
            "c, _ = s.accept(); n = 0\nwhile (b := c.recv(1 << 20)): n += len(b)\nprint(n)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    started = time.monotonic()
    hosts.run(
        h1,
        [
            "python3",
            "-c",
            f"import socket; c = socket.create_connection(('{h2}', 5001)); "
            "c.sendall(bytes(25_000_000)); c.close()",
        ],
    )
    received = int(server.communicate(timeout=60)[0])
    elapsed = time.monotonic() - started
    assert received == 25_000_000
    assert 25_000_000 / elapsed < 13.5e6, (
        f"{25_000_000 / elapsed / 1e6:.1f} MB/s through a 12.5 MB/s link"
    )


def test_down_removes_everything_even_after_a_failure(test_hosts):
    hosts = testhosts.TestHosts(2)
    with pytest.raises(RuntimeError, match="inside"):
        with hosts:
            k = hosts.instance
            hosts.spawn(hosts.names[0], ["sleep", "600"])
            raise RuntimeError("a test failing inside")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not re.search(rf"\bt{k}h\d", netns)
    assert subprocess.run(["ip", "link", "show", f"hvtbr{k}"], capture_output=True).returncode != 0
    assert f"test hosts {k}\n" not in Path("/etc/hosts").read_text()
    assert not (testhosts.STATE_ROOT / str(k)).exists()
    assert not [p for p in testhosts._netns_pids(f"t{k}h1")]


def test_a_dead_makers_set_is_reclaimed(test_hosts):
    """A set whose maker was SIGKILLed (a crashed test run) is removed by the
    next one to claim it."""
    maker = subprocess.run(
        [
            "python3",
            "-c",
            "import os, sys; sys.path.insert(0, '.'); from hvdtrain.launch.testhosts import "
            "TestHosts; h = TestHosts(1).up(); print(h.instance, flush=True); os._exit(9)",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=60,
    )
    k = int(maker.stdout)
    assert (testhosts.STATE_ROOT / str(k)).exists()  # left behind
    hosts = test_hosts(1)
    assert hosts.instance == k  # the lowest free number: the dead maker's
    assert (
        f"t{k}h1" in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
