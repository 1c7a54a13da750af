"""The options hidden in ``**options``, made visible to type checkers and to ``help()``.

``aconnect`` / ``serve`` (and the blocking ``connect`` / ``start_server``) pass every keyword
they do not name to :meth:`PeerOptions.build`, which passes the rest to
:meth:`~pyfabric.protocol.ConnectionConfig.build`. For static typing their ``**options`` are
``Unpack`` of the TypedDicts below; for ``help()`` / ``inspect.signature`` each function gets a
``__signature__`` built *from* ``PeerOptions.build``, ``ConnectionConfig.build`` and the
``ConnectionConfig`` fields (:func:`options_signature`), so it cannot drift from what the
functions accept. ``tests/transport/test_transport_signatures.py`` checks that the TypedDicts
name exactly those options.
"""

from __future__ import annotations

import dataclasses
import inspect
import ssl as _ssl
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypedDict, TypeVar

from ..etf import Atom, DecodeLimits
from ..protocol import ConnectionConfig, MessagesUndelivered, NamePolicy
from ..runtime import Node
from ._options import PeerOptions

__all__ = ["ServeOptions", "ConnectOptions", "BlockingConnectOptions", "BlockingServeOptions", "options_signature", "option_parameters"]

F = TypeVar("F", bound=Callable[..., Any])

# ConnectionConfig fields a transport takes under another name, or not at all.
_NOT_TRANSPORT_OPTIONS = {
    "secret": "positional",
    "compress_messages": "compress",
    "heartbeat_interval": "heartbeat",
}


class ServeOptions(TypedDict, total=False):
    """The connection options of ``serve`` (see ``ConnectionConfig`` and ``PeerOptions``)."""

    allowed: Iterable[Atom | str] | Callable[[str], bool] | NamePolicy
    force_allowed: Iterable[Atom | str]
    features: Iterable[str] | None
    allow_legacy_auth: bool
    max_frame: int
    max_handshake_frame: int
    max_errors: int
    error_window: int
    max_proxies: int
    max_exports: int
    decode_limits: DecodeLimits | None
    strings: Literal["str", "list"]
    heartbeat: float
    max_pending: int
    compress: bool
    refuse_remote_exits: bool | Iterable[Atom | str]
    ack_every: int
    ack_delay: float
    outbox_frames: int
    outbox_bytes: int
    max_confirms: int
    credit_window: int
    credit_bytes: int
    credit_dest: int
    mailbox_high: int
    grant_every: int
    grant_delay: float
    on_undelivered: Callable[[MessagesUndelivered], None] | None


class ConnectOptions(ServeOptions, total=False):
    """The connection options of ``aconnect``: those of ``serve`` and ``when_disconnected``."""

    when_disconnected: Literal["wait", "error"]


class BlockingConnectOptions(ConnectOptions, total=False):
    """Everything ``connect`` passes on to ``aconnect``."""

    node: Node | None
    node_name: Atom | str | None
    ssl: _ssl.SSLContext | None
    server_hostname: str | None
    reconnect: bool
    connect_timeout: float
    handshake_timeout: float
    whereis_timeout: float
    backoff_initial: float
    backoff_max: float
    fallbacks: Iterable[tuple[str, int]]


class BlockingServeOptions(ServeOptions, total=False):
    """Everything ``start_server`` passes on to ``serve``."""

    node: Node | None
    node_name: Atom | str | None
    ssl: _ssl.SSLContext | None
    handshake_timeout: float
    session_timeout: float
    max_connections: int
    max_pending_handshakes: int
    max_pending_per_address: int
    max_auth_failures: int
    auth_failure_window: float
    auth_block_time: float
    max_kept_sessions: int
    max_write_buffer: int
    routing: bool | Callable[[str | None, str], bool]
    route_grace: float
    route_heartbeat: float
    route_max_proxies: int


def option_parameters(exclude: Iterable[str] = ()) -> list[inspect.Parameter]:
    """The keyword-only parameters ``**options`` stands for, derived from the code:
    ``PeerOptions.build``'s keywords, ``ConnectionConfig.build``'s, then the other
    ``ConnectionConfig`` fields (with their defaults)."""
    skip = set(exclude) | set(_NOT_TRANSPORT_OPTIONS)
    params: dict[str, inspect.Parameter] = {}
    for build in (PeerOptions.build, ConnectionConfig.build):
        for p in inspect.signature(build).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in skip:
                params.setdefault(p.name, p)
    for field in dataclasses.fields(ConnectionConfig):
        if field.name in skip or field.name in params:
            continue
        default = field.default if field.default is not dataclasses.MISSING else inspect.Parameter.empty
        params[field.name] = inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=field.type)
    return list(params.values())


def options_signature(fn: Callable[..., Any], *, like: Callable[..., Any] | None = None, exclude: Iterable[str] = ()) -> inspect.Signature:
    """``fn``'s signature with ``**options`` replaced by the options it stands for: those of
    ``like`` (the function ``fn`` passes them to, e.g. ``aconnect`` for ``connect``), else
    :func:`option_parameters`."""
    own = inspect.signature(fn)
    named = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in named}
    if like is not None:
        source = [p for p in inspect.signature(like).parameters.values() if p.kind is p.KEYWORD_ONLY]
    else:
        source = option_parameters(exclude)
    extra = [p for p in source if p.name not in names]
    return own.replace(parameters=[*named, *extra])


def show_options(*, like: Callable[..., Any] | None = None, exclude: Iterable[str] = ()) -> Callable[[F], F]:
    """Decorator: set ``fn.__signature__`` to :func:`options_signature` (``help()`` lists every option)."""

    def decorate(fn: F) -> F:
        fn.__signature__ = options_signature(fn, like=like, exclude=exclude)  # type: ignore[attr-defined]
        return fn

    return decorate
