"""The ``pyfabric`` command (also ``python -m pyfabric``).

Subcommands:

``certs``   write a development CA, a server certificate and client certificates
            (see :mod:`pyfabric.certs`).
``whereis``, ``send``, ``call``, ``repl``, ``stats``, ``serve``: talk to a fabric server in
            Erlang term syntax, or serve a module's processes (see :mod:`pyfabric._cli`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._cli import add_commands
from ._version import __version__

__all__ = ["main"]


def _certs(args: argparse.Namespace) -> int:
    from .certs import write_dev_certs

    hostnames = args.hostname or ["localhost"]
    ips = args.ip if args.ip is not None else ["127.0.0.1", "::1"]
    try:
        paths = write_dev_certs(
            args.out,
            hostnames=hostnames,
            ips=ips,
            clients=args.client or [],
            server=not args.no_server,
            days=args.days,
            overwrite=args.force,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"pyfabric certs: {exc}", file=sys.stderr)
        return 1
    print(f"CA:     {paths.ca_cert}  (key {paths.ca_key}: keep it private)")
    if paths.server_cert is not None:
        names = ", ".join([*hostnames, *ips])
        print(f"server: {paths.server_cert}  key {paths.server_key}  for {names}")
    for name, (cert, key) in paths.clients.items():
        print(f"client: {cert}  key {key}  ({name})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyfabric", description="pyfabric tools")
    parser.add_argument("--version", action="version", version=f"pyfabric {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    certs = sub.add_parser(
        "certs",
        help="write a development CA, server and client certificates (ECDSA P-256)",
        description="Write ca.pem/ca-key.pem (reused when present), server.pem/server-key.pem and "
        "client-NAME.pem/client-NAME-key.pem into DIR. Private keys get mode 0600; existing server "
        "and client files are only replaced with --force. For development, tests and closed deployments.",
    )
    certs.add_argument("--out", required=True, metavar="DIR", help="directory to write into (created if missing)")
    certs.add_argument("--hostname", action="append", metavar="NAME", help="server DNS name (repeatable; default localhost)")
    certs.add_argument("--ip", action="append", metavar="ADDR", help="server IP address (repeatable; default 127.0.0.1 and ::1)")
    certs.add_argument("--client", action="append", metavar="NAME", help="also write a client certificate for NAME (repeatable)")
    certs.add_argument("--no-server", action="store_true", help="do not write a server certificate (add clients to an existing CA)")
    certs.add_argument(
        "--force",
        action="store_true",
        help="replace existing server and client files (the CA is still reused when present)",
    )
    certs.add_argument("--days", type=int, default=825, help="validity of server and client certificates (default 825)")
    certs.set_defaults(run=_certs)
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyfabric`` command line; returns the exit status."""
    args = _parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
