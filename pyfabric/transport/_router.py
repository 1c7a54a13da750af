"""A routing server's hub: client node names, ``{Name, Node}`` between clients, node notices.

One :class:`Router` per :class:`~._server.Server` started with ``routing`` not False
(docs/protocol.md section 16). It owns the table of client node names (name -> the
:class:`~._peer.PeerLink` of the session holding it), decides with the ``routing`` policy
who may see and reach whom, forwards routed messages and ``whereis_node`` requests to the
target client's link, pushes ``nodeup`` / ``nodedown``, and runs the grace timer that ends
the other clients' proxies for a lost client's processes (16.4). The server tells it of
each connection's life (:meth:`established`, :meth:`lost`, :meth:`session_ended`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..etf import Atom
from ..protocol import (
    HandshakeComplete,
    LocalProtocolError,
    MessageRouted,
    NodesRequested,
    RouteHooks,
    Session,
    WhereisNodeRequested,
)
from ..protocol._route import LOCAL, REFUSED, ROUTE, UNKNOWN
from ..runtime import Node
from ._errors import NotConnected, SendQueueFull
from ._peer import PeerLink

__all__ = ["Router", "RoutingPolicy", "check_routing", "DEFAULT_ROUTE_GRACE", "DEFAULT_ROUTE_HEARTBEAT", "DEFAULT_ROUTE_MAX_PROXIES"]

_log = logging.getLogger("pyfabric.server")

RoutingPolicy = bool | Callable[[str | None, str], bool]
"""``routing``: False (no routing), True (every client sees and reaches every other), or a
predicate ``(from_node, to_node) -> bool`` (``from_node`` None: a client without a node name)."""

DEFAULT_ROUTE_GRACE = 10.0
"""Seconds after a client's connection is lost before the other clients' proxies for its
processes end with ``noconnection`` (unless it resumed meanwhile; docs/protocol.md 16.4)."""
DEFAULT_ROUTE_HEARTBEAT = 1.0
"""Largest heartbeat interval (s) a routing client may announce: ``nodedown`` within 3 s."""
DEFAULT_ROUTE_MAX_PROXIES = 10_000
"""Proxies one client connection may create at a routing server (and so at each other client)."""

_A_NOCONNECTION = Atom("noconnection")
_WHEREIS_TIMEOUT = 5.0


def check_routing(routing: Any, grace: float, heartbeat: float, max_proxies: int) -> None:
    """``ValueError`` / ``TypeError`` naming a bad routing option."""
    if not (routing is True or routing is False or callable(routing)):
        raise TypeError(f"routing must be True, False or a predicate (from_node, to_node) -> bool, not {routing!r}")
    if not grace >= 0:
        raise ValueError("route_grace must not be negative (seconds)")
    if not 0.001 <= heartbeat <= 3600:
        raise ValueError("route_heartbeat must be between 0.001 and 3600 seconds")
    if max_proxies < 1:
        raise ValueError("route_max_proxies must be at least 1")


class Router:
    """The node table and routing decisions of one server (see the module docstring)."""

    def __init__(
        self,
        node: Node,
        policy: RoutingPolicy,
        *,
        grace: float,
        heartbeat: float,
        end_session: Callable[[PeerLink], None],
        links: Callable[[], Iterable[PeerLink]],
    ) -> None:
        self._node = node
        self._policy = policy
        self._grace = grace
        self._end_session = end_session
        self._links = links
        self._holders: dict[Atom, PeerLink] = {}  # client node name -> session's link
        self._names: dict[PeerLink, Atom] = {}
        self._up: set[PeerLink] = set()  # named links whose connection is established
        self._timers: dict[PeerLink, asyncio.TimerHandle] = {}
        self._warned: set[tuple[str | None, str]] = set()
        self.hooks = RouteHooks(heartbeat=max(1, round(heartbeat * 1000)), claim_node=self._claim, lookup=self._lookup)

    # -- policy -------------------------------------------------------------------------------

    def may(self, from_node: Atom | None, to_node: Atom) -> bool:
        """May ``from_node`` see and reach ``to_node``? A predicate that raises says no."""
        policy = self._policy
        if policy is True:
            return True
        if policy is False:
            return False
        source = from_node.name if from_node is not None else None
        try:
            return bool(policy(source, to_node.name))
        except Exception:
            key = (source, to_node.name)
            if key not in self._warned:
                self._warned.add(key)
                _log.warning("routing predicate raised for %s -> %s; treated as False", source, to_node.name, exc_info=True)
            return False

    def nodes_for(self, link: PeerLink) -> list[Atom]:
        """The client nodes ``link``'s client may see now (docs/protocol.md 16.6)."""
        me = self._names.get(link)
        return [name for name, holder in self._holders.items() if holder is not link and holder in self._up and self.may(me, name)]

    def holder(self, node: Atom) -> PeerLink | None:
        """The link of the session holding the client node name ``node`` (connected or kept)."""
        return self._holders.get(node)

    @property
    def node_names(self) -> list[Atom]:
        """Every client node name held now (connected or not)."""
        return list(self._holders)

    # -- hooks of the core (RouteHooks) -------------------------------------------------------

    def _claim(self, node: Atom, resumed: Session | None) -> bool:
        if node == self._node.name:
            return False
        holder = self._holders.get(node)
        if holder is None or (resumed is not None and holder.session is resumed):
            return True
        # Held by a connected client: refused; by a kept session: taken over (16.1).
        return not holder.connected

    def _lookup(self, from_node: Atom | None, node: Atom) -> str:
        if node == self._node.name:
            return LOCAL
        if node not in self._holders:
            return UNKNOWN
        return ROUTE if self.may(from_node, node) else REFUSED

    # -- connection life ----------------------------------------------------------------------

    def established(self, link: PeerLink, ev: HandshakeComplete) -> None:
        """``link`` (the session's link) is connected: take its name, tell the others."""
        self._cancel_grace(link)
        link.on_route_event = self._on_event
        if "route" not in ev.features or ev.peer_node is None:
            return
        name = ev.peer_node
        old = self._names.get(link)
        if old is not None and old != name:
            self._release(link)  # a rename (16.1)
        holder = self._holders.get(name)
        if holder is not None and holder is not link:
            _log.info("client node %s taken over by %s; its old session ends", name.name, link.label)
            self._release(holder)
            self._end_session(holder)
        self._holders[name] = link
        self._names[link] = name
        self._up.add(link)
        self._notify(link, up=True)

    def lost(self, link: PeerLink) -> None:
        """``link``'s connection is gone, its session kept: ``nodedown`` now, grace timer."""
        if link in self._up:
            self._up.discard(link)
            self._notify(link, up=False)
        self._cancel_grace(link)
        if self._grace > 0:
            self._timers[link] = self._node.loop.call_later(self._grace, self._grace_over, link)
        else:
            self._grace_over(link)

    def session_ended(self, link: PeerLink) -> None:
        """``link``'s session is over (expired, ended, or it had none): its name is free."""
        self._cancel_grace(link)
        self._release(link)

    def _release(self, link: PeerLink) -> None:
        if link in self._up:
            self._up.discard(link)
            self._notify(link, up=False)
        name = self._names.pop(link, None)
        if name is not None and self._holders.get(name) is link:
            del self._holders[name]

    def _cancel_grace(self, link: PeerLink) -> None:
        timer = self._timers.pop(link, None)
        if timer is not None:
            timer.cancel()

    def _grace_over(self, lost: PeerLink) -> None:
        """End every other connection's export of our proxies for ``lost``'s processes (16.4)."""
        self._timers.pop(lost, None)
        if lost.connected or lost.session is None:
            return
        theirs = lost.session.proxy_ids
        if not theirs:
            return
        ended = 0
        for link in self._links():
            session = link.session
            if link is lost or session is None:
                continue
            for pid in [pid for pid in session.export_ids if pid in theirs]:
                link.end_export(pid, _A_NOCONNECTION)
                ended += 1
        if ended:
            _log.info("%s: not back within %s s: %d proxies of its processes at other clients end (noconnection)", lost.label, self._grace, ended)

    def _notify(self, subject: PeerLink, *, up: bool) -> None:
        name = self._names.get(subject)
        if name is None:
            return
        for link in list(self._up):
            if link is subject or not self.may(self._names.get(link), name):
                continue
            conn = link.conn
            if conn is None or not link.connected:
                continue
            try:
                if up:
                    conn.node_up(name)
                else:
                    conn.node_down(name)
            except LocalProtocolError as exc:  # not expected: the link agreed `route`
                _log.warning("%s: node notice for %s not sent: %s", link.label, name.name, exc)
                continue
            link.flush()

    # -- route events of a client connection --------------------------------------------------

    def _on_event(self, link: PeerLink, ev: Any) -> None:
        kind = ev.__class__
        if kind is MessageRouted:
            self._forward(link, ev)
        elif kind is WhereisNodeRequested:
            self._whereis(link, ev)
        elif kind is NodesRequested:
            conn = link.conn
            if conn is not None:
                conn.reply_nodes(ev.req_id, self.nodes_for(link))
        else:
            _log.debug("%s: route event %s ignored at a server", link.label, kind.__name__)

    def _forward(self, link: PeerLink, ev: MessageRouted) -> None:
        """Send a routed message on to its client node; its credit on the sender's hop comes
        back once it is issued there. A confirmed send is end to end (16.8): sent on as a
        confirmed send when that hop has ``acks`` and answered with the client's result, else
        answered once written there; refusals are answered at once."""
        target = self._holders.get(ev.node)
        code: str | None = None
        answer = (lambda result: self._answer(link, ev.ref, result)) if ev.ref else None
        if target is None:
            _log.debug("%s: message to %s on %s dropped: the node is gone", link.label, ev.name.name, ev.node.name)
            code = "noproc"
        else:
            try:
                if answer is not None:
                    target.send_routed(ev.name, ev.payload, answer)
                    answer = None  # answered by the next hop
                else:
                    target.send(ev.name, ev.payload)
            except (LocalProtocolError, NotConnected, SendQueueFull) as exc:
                _log.warning("%s: message to %s on %s dropped: %s", link.label, ev.name.name, ev.node.name, exc)
                code = exc.code if isinstance(exc, LocalProtocolError) else "limit"
        if answer is not None:
            answer(code)
        conn = link.conn
        if conn is not None and ev.credit is not None:
            conn.credit_returned(ev.credit)

    @staticmethod
    def _answer(link: PeerLink, ref: int, code: str | None) -> None:
        """Answer the sender's confirmed send ``ref`` (kept for its replay while it is
        disconnected; nothing once its session is gone)."""
        conn = link.conn
        if conn is None or link.session is None or link.session.outbox is None:
            return
        conn.send_result(ref, code)
        link.flush()

    def _whereis(self, link: PeerLink, ev: WhereisNodeRequested) -> None:
        conn = link.conn
        if conn is None:
            return
        if ev.node == self._node.name:
            self._reply_whereis(link, conn, ev.req_id, self._node.whereis(ev.name))
            return
        target = self._holders.get(ev.node)
        target_conn = target.conn if target is not None else None
        if target is None or not target.connected or target_conn is None or "whereis" not in target_conn.features:
            conn.reply_whereis(ev.req_id, None)
            return
        self._node.loop.create_task(self._ask(link, conn, target, ev))

    async def _ask(self, link: PeerLink, conn: Any, target: PeerLink, ev: WhereisNodeRequested) -> None:
        try:
            pid = await target.whereis(ev.name, _WHEREIS_TIMEOUT)
        except (NotConnected, TimeoutError, LocalProtocolError) as exc:
            _log.info("%s: whereis %s on %s answered undefined: %s", link.label, ev.name.name, ev.node.name, exc)
            pid = None
        if link.conn is conn and link.connected:  # the asking connection is still the same
            self._reply_whereis(link, conn, ev.req_id, pid)

    @staticmethod
    def _reply_whereis(link: PeerLink, conn: Any, req_id: int, pid: Any) -> None:
        try:
            conn.reply_whereis(req_id, pid)
        except LocalProtocolError as exc:  # max_exports reached: the client learns nothing
            _log.warning("%s: whereis answered undefined: %s", link.label, exc)
            conn.reply_whereis(req_id, None)
        link.flush()

    def close(self) -> None:
        """The server closes: stop the grace timers."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
