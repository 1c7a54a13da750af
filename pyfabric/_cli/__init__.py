"""The network subcommands of the ``pyfabric`` command line (see README "Command line").

One small module per concern: ``_common`` (options, secret, connecting, exit statuses),
``_session`` (one connection's exchanges: whereis, send, receive, gen_server calls),
``_commands`` (whereis, send, call, stats), ``_repl`` (the interactive shell) and
``_serve`` (a server for a module's processes). Everything here uses pyfabric's public API.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ._common import add_connection_options, command_logging, parse_address, run_command

__all__ = ["add_commands"]


def _runner(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if name == "serve":
            from ._serve import run_serve as fn
        elif name == "repl":
            from ._repl import run_repl as fn
        else:
            from . import _commands

            fn = getattr(_commands, name)
        with command_logging(args.verbose):
            return run_command(fn, args)

    return run


def _add(sub: Any, name: str, help_text: str, description: str, *, server: bool = False) -> argparse.ArgumentParser:
    # No abbreviations: "--secret S" must not silently mean "--secret-file S".
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=description, allow_abbrev=False)
    if not server:
        parser.add_argument("address", type=parse_address, metavar="HOST:PORT", help="the fabric server")
    add_connection_options(parser, server=server)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more diagnostics on stderr (-vv: even more)")
    parser.set_defaults(run=_runner(name))
    return parser


def add_commands(sub: Any) -> None:
    """Add ``whereis``, ``send``, ``call``, ``repl``, ``serve`` and ``stats`` to ``sub``."""
    p = _add(sub, "whereis", "print the pid a server has registered as NAME",
             "Print our proxy pid of the server's process NAME, or 'undefined' (exit status 1).")
    p.add_argument("name", metavar="NAME", help="a registered name (an atom)")

    p = _add(sub, "send", "send a term to a process of the server",
             "Send TERM (Erlang syntax; self() is this command's mailbox) to DEST: a registered "
             "name, or {Name, Node}. With --reply, wait for one message to self() and print it.")
    p.add_argument("dest", metavar="DEST", help="registered name (ping) or {Name, Node}")
    p.add_argument("term", metavar="TERM", help="the message, e.g. '{self(), hello}'")
    p.add_argument("--reply", action="store_true", help="wait for one reply to self() and print it")

    p = _add(sub, "call", "gen_server:call a process of the server and print the reply",
             "Send {'$gen_call', {self(), Ref}, REQUEST} to NAME and print Reply from {Ref, Reply} "
             "(gen_server:call semantics: the server is monitored, its exit ends the call).")
    p.add_argument("name", metavar="NAME", help="registered name of a gen_server (or {Name, Node})")
    p.add_argument("request", metavar="REQUEST", help="the request term")

    _add(sub, "repl", "an interactive shell in Erlang syntax on one connection",
         "Statements such as: P = whereis(ping).  P ! {self(), hello}.  flush().  help().  q(). "
         "Reads a script from stdin when it is not a terminal.")

    p = _add(sub, "stats", "facts and counters of a connection to a server (and the server's, with --name)",
             "Connect, then print the mode, features, server node, latencies and the client's counters; "
             "with --name NAME also the server's counters from a statistics process "
             "(pyfabric serve --stats NAME, or any process answering gen_server:call(NAME, statistics) with a map).")
    p.add_argument("--name", metavar="NAME", help="registered name of the server's statistics process")

    p = _add(sub, "serve", "serve the processes of a Python module",
             "Start a fabric server that spawns and registers each process of --module (its PROCESSES "
             "mapping: name -> async def fn(proc)). Prints 'listening on HOST:PORT'; runs until SIGINT/SIGTERM.",
             server=True)
    p.add_argument("--module", required=True, metavar="MODULE", help="importable module defining PROCESSES")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: the OS picks; the chosen one is printed)")
    p.add_argument("--allow", action="append", metavar="NAME", help="a name clients may reach (repeatable; default: every PROCESSES name)")
    p.add_argument("--stats", metavar="NAME", help="also register a statistics process under NAME (reachable by clients)")
