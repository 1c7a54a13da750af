"""The one-shot subcommands: ``whereis``, ``send``, ``call`` and ``stats``.

Each connects, does one exchange, prints its result on stdout (Erlang term syntax) and
returns an exit status (see :mod:`pyfabric._cli._common`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .. import Atom, FeatureNotSupported
from ..etf import format as format_term
from ..etf import parse
from ._common import OK, REFUSED, USAGE, CliError, open_client
from ._session import Session

__all__ = ["STATISTICS", "call", "send", "stats", "whereis"]

STATISTICS = Atom("statistics")
"""The request a statistics process answers (see ``pyfabric serve --stats NAME``)."""


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _session(args: argparse.Namespace) -> Session:
    return Session(open_client(args), args.timeout)


def _name(text: str) -> Atom:
    term = parse(text)
    if isinstance(term, str) and term:
        return Atom(term)
    if not isinstance(term, Atom):
        raise CliError(f"{text!r} is not a registered name (an atom such as ping)", USAGE)
    return term


def whereis(args: argparse.Namespace) -> int:
    """Print the pid the server has registered as NAME (our proxy of it), or ``undefined``."""
    name = _name(args.name)
    session = _session(args)
    try:
        pid = session.whereis(name)
        if pid is None:
            _out("undefined")
            return REFUSED
        _out(format_term(pid, node=session.node))
        return OK
    finally:
        session.close()


def send(args: argparse.Namespace) -> int:
    """Send TERM to DEST; with ``--reply``, print the first message that comes back."""
    session = _session(args)
    try:
        dest = parse(args.dest, functions=session.functions())
        msg = parse(args.term, functions=session.functions())
        session.send(dest, msg)
        if not args.reply:
            session.client.wait_connected(args.timeout)  # still connected: the bytes went out
            return OK
        reply = session.receive(args.timeout)  # ReceiveTimeout: exit status 3
        _out(format_term(reply, node=session.node))
        return OK
    finally:
        session.close()


def call(args: argparse.Namespace) -> int:
    """``gen_server:call(NAME, REQUEST)`` and print the reply."""
    session = _session(args)
    try:
        name = parse(args.name, functions=session.functions())
        request = parse(args.request, functions=session.functions())
        reply = session.call(name, request, args.timeout)
        _out(format_term(reply, node=session.node))
        return OK
    finally:
        session.close()


def _line(key: str, value: Any) -> str:
    if isinstance(value, (frozenset, set)):
        value = ",".join(sorted(value)) or "-"
    return f"{key}: {value}"


def stats(args: argparse.Namespace) -> int:
    """Facts and counters of one connection to HOST:PORT, and with ``--name`` the server's
    own counters (from a process answering ``gen_server:call(Name, statistics)``)."""
    started = time.monotonic()
    session = _session(args)
    try:
        connect_ms = (time.monotonic() - started) * 1000
        client = session.client
        peer = client.async_client.peer_node
        lines = [
            _line("server", "{}:{}".format(*args.address)),
            _line("mode", client.mode),
            _line("features", client.features),
            _line("server_node", format_term(peer) if peer is not None else "unknown (original server)"),
            _line("node", format_term(session.node)),
            _line("connect_ms", f"{connect_ms:.1f}"),
        ]
        try:
            started = time.monotonic()
            session.whereis(Atom("$pyfabric_stats_probe"))
            lines.append(_line("whereis_rtt_ms", f"{(time.monotonic() - started) * 1000:.1f}"))
        except FeatureNotSupported:
            lines.append(_line("whereis_rtt_ms", "- (no whereis on an original server)"))
        for key, value in client.statistics().items():
            lines.append(_line(f"client.{key}", value))
        status = OK
        if args.name is not None:
            reply = session.call(_name(args.name), STATISTICS, args.timeout)
            if isinstance(reply, dict):
                for key, value in reply.items():
                    label = key.name if isinstance(key, Atom) else format_term(key)
                    lines.append(_line(f"remote.{label}", format_term(value, node=session.node)))
            else:
                lines.append(_line("remote", format_term(reply, node=session.node)))
        for line in lines:
            _out(line)
        return status
    finally:
        session.close()
