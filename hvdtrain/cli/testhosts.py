"""``hvdtrain test-hosts``: make, list and remove the test hosts of ``hvdtrain.launch.testhosts`` by
hand (root, Linux), e.g. to try a multi-host job the way the multi-host tests do."""

from __future__ import annotations

from ..core.errors import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "test-hosts",
        help="make or remove separate test hosts on this machine "
        "(network namespaces with sshd; root)",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="make COUNT hosts and keep them until `down`")
    up.add_argument("count", type=int)
    up.add_argument("--link-rate", help="limit what each host sends, e.g. 1gbit (tc tbf)")
    down = actions.add_parser("down", help="remove one set (its number from `list`), or every set")
    which = down.add_mutually_exclusive_group(required=True)
    which.add_argument("instance", type=int, nargs="?")
    which.add_argument("--all", action="store_true")
    actions.add_parser("list", help="the sets that exist now")
    parser.set_defaults(func=main)


def main(args) -> int:
    from ..launch import testhosts

    if args.action == "list":
        for k, owner, names in testhosts.instances():
            print(
                f"{k}\t{'by hand' if owner == testhosts.MANUAL else f'process {owner}'}\t"
                f"{','.join(names)}"
            )
        return 0
    if args.action == "down":
        numbers = [k for k, _, _ in testhosts.instances()] if args.all else [args.instance]
        for k in numbers:
            testhosts.remove(k)
        return 0
    try:
        hosts = testhosts.TestHosts(
            args.count, link_rate=args.link_rate, owner=testhosts.MANUAL
        ).up()
    except (testhosts.TestHostsError, ValueError) as err:
        raise UsageError(str(err)) from None
    rate = f", each sending at most {args.link_rate}" if args.link_rate else ""
    print(
        f"test host set {hosts.instance}: "
        f"{', '.join(f'{h.name} ({h.address})' for h in hosts.hosts)}{rate}"
    )
    print(f"  ssh {hosts.names[0]}            # a shell on a host")
    print(
        f"  ssh {hosts.names[0]} 'cd {_cwd()} && .venv/bin/hvdtrain run -np {args.count} "
        f"-H {','.join(f'{n}:1' for n in hosts.names)} torch_examples/digits.py'"
    )
    print(f"  hvdtrain test-hosts down {hosts.instance}")
    return 0


def _cwd() -> str:
    import os

    return os.getcwd()
