"""A client's view of the other client nodes of a routing server (docs/protocol.md 16.6).

:class:`ClientNodes` keeps the set of client nodes the server says are up (from
``nodes_reply``, ``nodeup``, ``nodedown``), answers :meth:`~._client.Client.nodes`, and
runs Erlang's ``monitor_node``: a local process asks to hear when a node goes down and
receives one ``('nodedown', Node)`` message when it does (at once if the node is not up),
after which the monitor is gone. When the client's session ends, or it closes, every node
is down to it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..etf import Atom, Pid
from ..protocol import FeatureNotSupported, HandshakeComplete, NodeDown, NodesReplied, NodeUp
from ..runtime import Node
from ._errors import NotConnected
from ._peer import PeerLink

__all__ = ["ClientNodes", "RouteClientMixin", "A_NODEDOWN", "to_node"]

_log = logging.getLogger("pyfabric.client")

A_NODEDOWN = Atom("nodedown")


def to_node(node: Atom | str) -> Atom:
    """``node`` as an Atom (``name@host``), or ``ValueError``."""
    atom = node if node.__class__ is Atom else Atom(str(node))
    local, sep, host = atom.name.partition("@")
    if not (local and sep and host):
        raise ValueError(f"node name must look like name@host, got {atom.name!r}")
    return atom


class ClientNodes:
    """The client nodes a client sees, and its node monitors (see the module docstring)."""

    def __init__(self, node: Node, link: PeerLink) -> None:
        self._node = node
        self._link = link
        self._up: set[Atom] = set()
        self._monitors: dict[Atom, list[Pid]] = {}
        self._waiting: dict[int, asyncio.Future[tuple[Atom, ...]]] = {}
        self._connected_before = False
        link.on_route_event = self._on_event

    # -- the connection's life ----------------------------------------------------------------

    def established(self, ev: HandshakeComplete) -> None:
        """A new connection: learn the current set (nodes we knew and it lacks are down).
        A reconnection that did not resume our session ended it: every node is down first."""
        if self._connected_before and not ev.resumed:
            self.all_down()
        self._connected_before = True
        if "route" not in ev.features:
            self.all_down()
            return
        conn = self._link.conn
        if conn is not None:
            req_id = conn.request_nodes()
            fut: asyncio.Future[tuple[Atom, ...]] = self._node.loop.create_future()
            # nobody awaits it: a connection lost before the answer must not log "never retrieved"
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._waiting[req_id] = fut
            self._link.flush()

    def connection_lost(self) -> None:
        """Requests in flight are void (their frames are connection-scoped)."""
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(NotConnected("connection to the server lost while waiting for nodes()"))

    def all_down(self) -> None:
        """The session ended or the client closed: every node is down to us."""
        for name in list(self._up | set(self._monitors)):
            self._down(name)
        self._up.clear()

    # -- route events ---------------------------------------------------------------------------

    def _on_event(self, _link: PeerLink, ev: Any) -> None:
        kind = ev.__class__
        if kind is NodesReplied:
            now = set(ev.nodes)
            for gone in self._up - now:
                self._down(gone)
            self._up = now
            for name in [n for n in self._monitors if n not in now]:
                self._down(name)
            fut = self._waiting.pop(ev.req_id, None)
            if fut is not None and not fut.done():
                fut.set_result(ev.nodes)
        elif kind is NodeUp:
            self._up.add(ev.node)
        elif kind is NodeDown:
            self._up.discard(ev.node)
            self._down(ev.node)
        else:
            _log.debug("%s: route event %s ignored at a client", self._link.label, kind.__name__)

    def _down(self, name: Atom) -> None:
        self._up.discard(name)
        for pid in self._monitors.pop(name, ()):
            self._node.send(pid, (A_NODEDOWN, name))

    # -- API ------------------------------------------------------------------------------------

    async def nodes(self, timeout: float | None) -> list[Atom]:
        """Ask the server for the client nodes we may see (docs/protocol.md 16.6)."""
        conn = self._link.conn
        if conn is None or not self._link.connected:
            raise NotConnected(f"nodes(): not connected to {self._link.label}")
        if "route" not in conn.features:
            raise FeatureNotSupported("route", "nodes() needs a server with routing enabled (the 'route' feature)")
        req_id = conn.request_nodes()
        fut: asyncio.Future[tuple[Atom, ...]] = self._node.loop.create_future()
        self._waiting[req_id] = fut
        self._link.flush()
        try:
            async with asyncio.timeout(timeout):
                return list(await fut)
        except TimeoutError:
            raise TimeoutError(f"nodes() got no answer from {self._link.label} within {timeout} s") from None
        finally:
            self._waiting.pop(req_id, None)

    async def monitor_node(self, node: Atom | str, pid: Pid, timeout: float | None) -> None:
        """``pid`` gets ``('nodedown', Node)`` once when ``node`` goes down (at once if it
        is not up now); each call adds one monitor."""
        name = to_node(node)
        if not self._node.is_alive(pid):
            return
        up = await self.nodes(timeout)
        if name in up:
            self._monitors.setdefault(name, []).append(pid)
        else:
            self._node.send(pid, (A_NODEDOWN, name))

    def demonitor_node(self, node: Atom | str, pid: Pid) -> bool:
        """Remove one monitor of ``pid`` on ``node``; True if there was one."""
        name = to_node(node)
        pids = self._monitors.get(name)
        if not pids or pid not in pids:
            return False
        pids.remove(pid)
        if not pids:
            del self._monitors[name]
        return True


class RouteClientMixin:
    """The node API of :class:`~._client.Client` (docs/protocol.md 16.6)."""

    _route_nodes: ClientNodes
    _whereis_timeout: float

    async def nodes(self, *, timeout: float | None = None) -> list[Atom]:
        """The client nodes of the server this client may see (without itself and the
        server), as atoms. Needs a server with ``routing`` (the ``route`` feature): else
        :class:`~pyfabric.protocol.FeatureNotSupported`; :class:`NotConnected` while
        disconnected."""
        return await self._route_nodes.nodes(self._whereis_timeout if timeout is None else timeout)

    async def monitor_node(self, node: Atom | str, pid: Pid, *, timeout: float | None = None) -> None:
        """Erlang's ``monitor_node(Node, true)`` for local process ``pid``: it receives
        ``(Atom('nodedown'), Atom(node))`` once when that client node goes down (its
        connection to the server is lost, within about 3 s, or its session ends), at once
        if it is not up now, and when this client's session ends or it closes. Each call
        adds one monitor; :meth:`demonitor_node` removes one."""
        await self._route_nodes.monitor_node(node, pid, self._whereis_timeout if timeout is None else timeout)

    def demonitor_node(self, node: Atom | str, pid: Pid) -> bool:
        """Remove one :meth:`monitor_node` of ``pid`` on ``node``; True if there was one."""
        return self._route_nodes.demonitor_node(node, pid)
