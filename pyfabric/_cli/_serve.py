"""``pyfabric serve``: a fabric server exposing the processes a Python module defines.

The module (``--module pkg.mod``, imported with the current directory on ``sys.path``, as
``python -m`` does) defines ``PROCESSES``, a mapping from a registered name to an
``async def fn(proc)`` process function (``proc`` is a :class:`pyfabric.Process`)::

    async def echo(proc):
        while True:
            sender, msg = await proc.receive()
            proc.send(sender, (proc.pid, msg))

    PROCESSES = {"echo": echo}

Each is spawned once and registered under its name; clients may reach by name the ones
listed with ``--allow`` (default: all of them). A process that ends is logged and its name
is gone (no restart). ``--stats NAME`` also registers a process that answers
``gen_server:call(NAME, statistics)`` with the server's counters (``pyfabric stats
HOST:PORT --name NAME`` asks it); clients may reach it even under a reserved name such as
``fabric_stats`` (the option is the operator's explicit opt-in). The command prints ``listening on HOST:PORT`` once the
server accepts connections, and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from .. import Atom, Pid, Process, Server, serve
from ..etf import format as format_term
from ._common import OK, USAGE, CliError, read_secret

__all__ = ["load_processes", "run_serve", "statistics_process"]

_log = logging.getLogger("pyfabric.cli")
GEN_CALL = Atom("$gen_call")
STATISTICS = Atom("statistics")
NORMAL = Atom("normal")
SHUTDOWN = Atom("shutdown")

ProcessFunction = Callable[[Process], Coroutine[Any, Any, Any]]


def load_processes(module_name: str) -> dict[str, ProcessFunction]:
    """The ``PROCESSES`` mapping of ``module_name``, checked."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import --module {module_name}: {exc}", USAGE) from None
    processes = getattr(module, "PROCESSES", None)
    if not isinstance(processes, Mapping) or not processes:
        raise CliError(
            f"module {module_name} defines no PROCESSES: add PROCESSES = {{'name': async_function, ...}} to it",
            USAGE,
        )
    checked: dict[str, ProcessFunction] = {}
    for name, fn in processes.items():
        if not isinstance(name, str) or not name:
            raise CliError(f"{module_name}.PROCESSES: the key {name!r} is not a name (a non-empty str)", USAGE)
        if not asyncio.iscoroutinefunction(fn):
            raise CliError(f"{module_name}.PROCESSES[{name!r}] is not an async function (async def fn(proc): ...)", USAGE)
        checked[name] = fn
    return checked


async def statistics_process(proc: Process, server: Server) -> None:
    """Answer ``gen_server:call(Name, statistics)`` with the server's counters (a map)."""
    while True:
        msg = await proc.receive()
        if not (isinstance(msg, tuple) and len(msg) == 3 and msg[0] == GEN_CALL):
            continue  # not a call: ignored, as a gen_server logs and drops it
        _, sender, request = msg
        if not (isinstance(sender, tuple) and len(sender) == 2 and isinstance(sender[0], Pid)):
            continue
        node = server.node
        if request == STATISTICS:
            reply: Any = {Atom(k): v for k, v in server.statistics().items()}
            reply[Atom("processes")] = len(node.processes())
            reply[Atom("registered")] = sorted(node.registered(), key=lambda a: a.name)
        else:
            reply = (Atom("error"), (Atom("unknown_request"), request))
        proc.send(sender[0], (sender[1], reply))


def _server_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    from ..tls import server_context

    if args.tls_cert is None:
        if args.tls_key is not None or args.tls_ca is not None:
            raise CliError("--tls-key/--tls-ca need --tls-cert (the server's certificate)", USAGE)
        return None
    try:
        return server_context(args.tls_cert, args.tls_key, cafile=args.tls_ca, require_client_cert=args.tls_ca is not None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CliError(f"cannot load the TLS files: {exc}", USAGE) from None


async def _serve(args: argparse.Namespace, processes: dict[str, ProcessFunction], allowed: list[str], secret: bytes) -> int:
    ctx = _server_ssl(args)
    try:
        server = await serve(
            args.host,
            args.port,
            secret,
            allowed=allowed,
            force_allowed=[args.stats] if args.stats else [],
            ssl=ctx,
            node_name=args.node_name,
            allow_legacy_auth=args.allow_legacy_auth,
        )
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", 4) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for name, fn in processes.items():
            pid = server.spawn(fn, name=name)
            server.node.watch(pid, _ended(name))
        if args.stats is not None:
            server.spawn(statistics_process, server, name=args.stats)
        host = f"[{args.host}]" if ":" in args.host else args.host
        sys.stdout.write(f"listening on {host}:{server.port}\n")
        sys.stdout.flush()
        _log.info("serving %s (reachable by name: %s)", ", ".join(processes), ", ".join(allowed) or "none")
        await stop.wait()
        _log.info("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
    return OK


def _ended(name: str) -> Callable[[Pid, Any], None]:
    def ended(pid: Pid, reason: Any) -> None:
        level = logging.INFO if reason in (NORMAL, SHUTDOWN) else logging.WARNING
        _log.log(level, "process %s (%s) ended: %s; clients cannot reach it any more", name, format_term(pid), format_term(reason))

    return ended


def run_serve(args: argparse.Namespace) -> int:
    processes = load_processes(args.module)
    allowed = list(args.allow) if args.allow else list(processes)
    unknown = [name for name in allowed if name not in processes]
    if unknown:
        raise CliError(f"--allow {unknown[0]}: {args.module}.PROCESSES has no such name (it has {', '.join(processes)})", USAGE)
    if args.stats is not None:
        if args.stats in processes:
            raise CliError(f"--stats {args.stats}: the module already has a process of that name", USAGE)
        allowed.append(args.stats)
    secret = read_secret(args)
    return asyncio.run(_serve(args, processes, allowed, secret))
