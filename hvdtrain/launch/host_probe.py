"""What ``hvdtrain run``'s pre-flight checks learn on one host, printed as one JSON object.

Sent as source over ssh and run by the job's own Python (``python - ARGS``), so it works on a host
where the project is missing; standard library only. ``ARGS`` is one JSON object: ``paths`` that
must exist, ``packages`` whose versions to report, the launcher's ``addresses`` ([interface,
IPv4] pairs) and the ``port`` it listens on for this probe.
"""

import fcntl
import json
import os
import shutil
import socket
import struct
import sys
import threading

_SIOCGIFADDR, _SIOCGIFNETMASK = 0x8915, 0x891B
CONNECT_TIMEOUT_S = 2.0


def interfaces() -> dict:
    """Interface name -> its IPv4 address and netmask ("10.1.2.3/255.255.255.0"), for the
    interfaces that have one (loopback included)."""
    found = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                address, netmask = (
                    socket.inet_ntoa(fcntl.ioctl(s.fileno(), op, request)[20:24])
                    for op in (_SIOCGIFADDR, _SIOCGIFNETMASK)
                )
            except OSError:
                continue  # no IPv4 address, or down
            found[name] = f"{address}/{netmask}"
    return found


def own_addresses() -> list:
    """What this host's own name resolves to here (where Gloo's peers are told to connect)."""
    try:
        return sorted(
            {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
        )
    except OSError:
        return []


def version(package: str):
    from importlib import metadata  # slow to import: only when asked

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def reachable(addresses: list, port: int) -> list:
    """The launcher's addresses this host can open a TCP connection to (tried in parallel)."""
    reached = []

    def attempt(address):
        try:
            with socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S):
                reached.append(address)
        except OSError:
            pass

    threads = [threading.Thread(target=attempt, args=(a,)) for _, a in addresses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(reached)


def main() -> None:
    request = json.loads(sys.argv[1])
    print(
        json.dumps(
            {
                "hostname": socket.gethostname(),
                "own_addresses": own_addresses(),
                "interfaces": interfaces(),
                "missing": [p for p in request["paths"] if not os.path.exists(p)],
                "versions": {p: version(p) for p in request["packages"]},
                "reached": reachable(request["addresses"], request["port"]),
                "commands": {c: shutil.which(c) is not None for c in request.get("commands", [])},
            }
        )
    )


if __name__ == "__main__":
    main()
