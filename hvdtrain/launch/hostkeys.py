"""Host key checking for every ssh a job makes: hvdtrain's pre-flight probes, Horovod's own ssh
command (patched to ask here, ``scripts/patch_horovod.py``) and mpirun's.

Trust on first use: a host seen for the first time has its key recorded in known_hosts
(``StrictHostKeyChecking=accept-new``), a host whose key changed since is refused (a reinstalled
node, or someone in the middle); the pre-flight probe names it before any worker starts.
``hvdtrain run --no-host-key-check`` (``NO_CHECK_ENV=1``, which reaches horovodrun too) accepts any
key and records none, for throwaway clusters whose hosts are remade with new keys all the time.

Standard library only: Horovod's launcher imports it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

NO_CHECK_ENV = "HVDTRAIN_NO_HOST_KEY_CHECK"
CHECKED = ("-o", "StrictHostKeyChecking=accept-new")
UNCHECKED = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null")


def ssh_options(environ: Mapping[str, str] | None = None) -> list[str]:
    """ssh's host key options for this job (``environ``: the launcher's, by default)."""
    environ = os.environ if environ is None else environ
    return list(UNCHECKED if environ.get(NO_CHECK_ENV) == "1" else CHECKED)


def changed_key_problem(host: str, port: int, stderr: str) -> str | None:
    """The one line for ssh's ``stderr`` when it refused ``host`` because its key changed (None for
    any other failure): the host, where the old key is, and ssh-keygen's command that removes it."""
    if "Host key verification failed" not in stderr:
        return None
    name = host if port == 22 else f"[{host}]:{port}"
    offending = re.search(r"Offending \S+ key in (\S+):(\d+)", stderr)
    where = f" in {offending.group(1)} line {offending.group(2)}" if offending else ""
    remove = f"ssh-keygen -R {name}" + (f" -f {offending.group(1)}" if offending else "")
    return (
        f"host {host}'s SSH host key differs from the one recorded{where} (the host was "
        f"reinstalled, or someone is in the middle): if {host} was reinstalled, remove the old "
        f"key with {remove}"
    )
