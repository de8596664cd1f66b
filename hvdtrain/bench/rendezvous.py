"""A fresh Gloo rendezvous server for each extra Horovod init in one process.

horovodrun's rendezvous server serves one init per job: when the ranks finish a scope it clears
the finished lists of every scope, so the keys of some scopes are never cleared and a second init
(horovod.tensorflow beside horovod.torch, or an init after a shutdown) can read the first init's
stale addresses and fail to connect. Before each later init rank 0 starts a new server, the way
Horovod's elastic driver re-rendezvouses, with the job's host plan (``HVDTRAIN_BENCH_HOSTS``, set
by ``hvdtrain bench --hosts``; one host otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
from horovod.runner.http.http_server import RendezvousServer

HOSTS_ENV = "HVDTRAIN_BENCH_HOSTS"  # horovodrun's -H of the job


def fresh_rendezvous(
    rank: int, size: int, broadcast_object: Callable[[Any], Any]
) -> RendezvousServer | None:
    """Point this rank's next ``hvd.init`` at a new server;
    rank 0 returns it (stop it at the end)."""
    server, port = None, None
    if rank == 0:
        server = RendezvousServer()
        port = server.start()
        hosts = (
            os.environ.get(HOSTS_ENV) or f"{os.environ.get('HOROVOD_HOSTNAME', 'localhost')}:{size}"
        )
        server.init(get_host_assignments(parse_hosts(hosts), size))
    os.environ["HOROVOD_GLOO_RENDEZVOUS_PORT"] = str(broadcast_object(port))
    return server
