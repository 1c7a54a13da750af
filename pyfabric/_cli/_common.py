"""What every network subcommand of ``pyfabric`` shares: the address, the secret, TLS and
node options, logging, connecting, and turning errors into a message and an exit status.

Exit statuses (also in README "Command line"):

- 0: done;
- 1: the other side said no: a name is not registered (or not allowed), a call ended
  with an exit of the server, the server does not support the request;
- 2: bad usage: arguments, a term that does not parse, no secret given;
- 3: no reply within ``--timeout``;
- 4: cannot connect: unreachable, authentication or TLS failure, connection lost.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import (
    AuthenticationError,
    BlockingClient,
    ConnectFailed,
    DecodeError,
    EncodeError,
    FeatureNotSupported,
    LocalProtocolError,
    NotConnected,
    ProtocolError,
    ReceiveTimeout,
    TransportError,
    connect,
)
from ..etf import ParseError

__all__ = [
    "OK",
    "REFUSED",
    "TIMEOUT",
    "UNREACHABLE",
    "USAGE",
    "CliError",
    "add_connection_options",
    "add_secret_options",
    "log",
    "open_client",
    "parse_address",
    "read_secret",
    "run_command",
]

OK, REFUSED, USAGE, TIMEOUT, UNREACHABLE = 0, 1, 2, 3, 4
SECRET_ENV = "PYFABRIC_SECRET"
DEFAULT_TIMEOUT = 5.0

log = logging.getLogger("pyfabric.cli")


class CliError(Exception):
    """A failure to report: ``message`` (what went wrong and what to do) and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``; argparse type."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:5555)")
    return host, int(port)


def add_secret_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("authentication")
    group.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help=f"read the shared secret from FILE (one trailing newline is ignored); otherwise ${SECRET_ENV}, "
        "otherwise a prompt on the terminal. Never on the command line, where other users can see it.",
    )
    group.add_argument(
        "--allow-legacy-auth",
        action="store_true",
        help="accept the original protocol's MD5 authentication (original peers only; weak: trusted networks or TLS)",
    )


def add_connection_options(parser: argparse.ArgumentParser, *, server: bool = False) -> None:
    add_secret_options(parser)
    tls = parser.add_argument_group("TLS")
    if server:
        tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve TLS with this certificate chain (PEM)")
        tls.add_argument("--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)")
        tls.add_argument("--tls-ca", type=Path, metavar="FILE", help="require client certificates signed by this CA (mutual TLS)")
    else:
        tls.add_argument("--tls-ca", type=Path, metavar="FILE", help="connect with TLS, verifying the server against this CA (PEM)")
        tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate for mutual TLS (PEM; needs --tls-ca)")
        tls.add_argument("--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)")
        tls.add_argument("--tls-server-name", metavar="NAME", help="host name to check in the server's certificate (default: HOST)")
    parser.add_argument("--node-name", metavar="NAME", help="our node name (default: a generated pyfabric_... name)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"connect, handshake and reply timeout (default {DEFAULT_TIMEOUT:g})",
    )


def read_secret(args: argparse.Namespace) -> bytes:
    """The secret from ``--secret-file``, ``$PYFABRIC_SECRET`` or a terminal prompt."""
    path: Path | None = args.secret_file
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read the secret file {path}: {exc.strerror or exc}", USAGE) from None
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        if not data:
            raise CliError(f"the secret file {path} is empty", USAGE)
        return data
    env = os.environ.get(SECRET_ENV)
    if env:
        return env.encode("utf-8")
    if not _have_terminal():
        raise CliError(
            f"no secret: use --secret-file FILE or set {SECRET_ENV} (there is no terminal to ask on; "
            "secrets are never taken from the command line)",
            USAGE,
        )
    try:
        text = getpass.getpass("fabric secret: ")
    except (EOFError, KeyboardInterrupt):
        raise CliError("no secret entered", USAGE) from None
    if not text:
        raise CliError("no secret entered", USAGE)
    return text.encode("utf-8")


def _have_terminal() -> bool:
    """Whether getpass can ask (it reads the controlling terminal, not stdin)."""
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return False


def _client_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    from ..tls import client_context

    if args.tls_ca is None:
        if args.tls_cert is not None or args.tls_key is not None:
            raise CliError("--tls-cert/--tls-key need --tls-ca (the CA that signed the server's certificate)", USAGE)
        return None
    try:
        return client_context(args.tls_ca, certfile=args.tls_cert, keyfile=args.tls_key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CliError(f"cannot load the TLS files: {exc}", USAGE) from None


def open_client(args: argparse.Namespace) -> BlockingClient:
    """Connect to ``args.address`` (no reconnecting: a command is one exchange)."""
    host, port = args.address
    secret = read_secret(args)
    ctx = _client_ssl(args)
    options: dict[str, Any] = {
        "node_name": args.node_name,
        "ssl": ctx,
        "reconnect": False,
        "when_disconnected": "error",
        "allow_legacy_auth": args.allow_legacy_auth,
        "connect_timeout": args.timeout,
        "handshake_timeout": args.timeout,
        "whereis_timeout": args.timeout,
        "send_timeout": args.timeout,
    }
    if ctx is not None and args.tls_server_name:
        options["server_hostname"] = args.tls_server_name
    log.info("connecting to %s:%d%s", host, port, " (TLS)" if ctx else "")
    return connect(host, port, secret, **options)


def _explain(exc: BaseException, args: argparse.Namespace) -> CliError:
    where = "{}:{}".format(*args.address) if getattr(args, "address", None) else "the peer"
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, ParseError):
        return CliError(f"bad term: {exc.reason} at line {exc.line}, column {exc.column}", USAGE)
    if isinstance(exc, AuthenticationError):
        return CliError(
            f"authentication with {where} failed: {exc}. Check the secret (--secret-file or {SECRET_ENV}); "
            "an original (2010) server also needs --allow-legacy-auth",
            UNREACHABLE,
        )
    if isinstance(exc, ConnectFailed) and isinstance(exc.__cause__, ssl.SSLError):
        return CliError(
            f"{exc}. TLS failed: check that --tls-ca is the CA that signed the server's certificate "
            "and that the certificate names the host (or pass --tls-server-name)",
            UNREACHABLE,
        )
    if isinstance(exc, ConnectFailed):
        return CliError(f"{exc}. Is a fabric server listening there (and is TLS on for both or neither)?", UNREACHABLE)
    if isinstance(exc, ssl.SSLError):
        return CliError(f"TLS with {where} failed: {exc}. Check --tls-ca and the server's certificate", UNREACHABLE)
    if isinstance(exc, NotConnected):
        return CliError(f"the connection to {where} was lost: {exc}", UNREACHABLE)
    if isinstance(exc, FeatureNotSupported):
        hint = ""
        if getattr(exc, "feature", None) == "whereis":
            hint = " (an original server has no whereis: send to the name instead, e.g. pyfabric send HOST:PORT NAME TERM)"
        return CliError(f"{where} cannot do this: {exc}{hint}", REFUSED)
    if isinstance(exc, ReceiveTimeout):
        return CliError(f"no reply from {where} within {args.timeout:g} s (raise --timeout to wait longer)", TIMEOUT)
    if isinstance(exc, TimeoutError):
        return CliError(f"{where} did not answer within {args.timeout:g} s (raise --timeout to wait longer)", TIMEOUT)
    if isinstance(exc, (EncodeError, DecodeError)):
        return CliError(f"this term cannot be sent: {exc}", USAGE)
    if isinstance(exc, LocalProtocolError):
        return CliError(f"{where} cannot take this: {exc}", REFUSED)
    if isinstance(exc, (ProtocolError, TransportError)):
        return CliError(f"fabric error with {where}: {exc}", UNREACHABLE)
    if isinstance(exc, OSError):
        return CliError(f"{where}: {exc}", UNREACHABLE)
    raise exc


def run_command(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``fn(args)``; report a failure through logging and return its exit status."""
    try:
        return fn(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - each known kind is explained, others re-raised
        error = _explain(exc, args)
        log.error("%s", error)
        return error.status


@contextlib.contextmanager
def command_logging(verbosity: int) -> Iterator[None]:
    """Diagnostics on stderr while a command runs: our errors always; the library's own
    warnings with -v, info with -vv. The previous logging setup is restored afterwards
    (``main`` may run inside a program or a test that has its own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("pyfabric: %(message)s" if verbosity == 0 else "pyfabric: %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("pyfabric")
    saved = (root.handlers[:], root.level, root.propagate, log.level)
    root.handlers[:] = [handler]
    root.propagate = False
    # The command reports every failure once itself: the library's own warnings about the
    # same event (e.g. a failed authentication) only with -v.
    root.setLevel({0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO}.get(verbosity, logging.DEBUG))
    log.setLevel(logging.INFO if verbosity >= 1 else logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:], level, root.propagate, log_level = saved
        root.setLevel(level)
        log.setLevel(log_level)
