"""The ``route`` feature in the core (docs/protocol.md section 16), sans-IO.

A routing server's transport gives each client connection a :class:`RouteHooks`: the
``route_heartbeat`` it offers, the check of a client node name at frame 4
(``claim_node``) and the resolution of a ``{Name, Node}`` destination (``lookup``). The
received route frames are handled by the functions below (the ``FRAMES`` table of
:mod:`._established` names them); :class:`RouteMixin` adds the route commands to
:class:`~._connection.Connection`. What to forward, to whom, and when a node is up or down
is the transport's (``pyfabric.transport._router``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..etf import Atom
from ._constants import (
    A_NODEDOWN,
    A_NODES,
    A_NODES_REPLY,
    A_NODEUP,
    A_UNDEFINED,
    A_WHEREIS_NODE,
    A_WHEREIS_REPLY,
    plain,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import MessageRouted, NodeDown, NodesReplied, NodesRequested, NodeUp, WhereisNodeRequested
from ._global import GlobalReplied
from ._pg import GroupReplied
from ._rewrite import describe
from ._session import Session

if TYPE_CHECKING:
    from ._commands import Commands
    from ._established import Established

__all__ = ["RouteHooks", "ROUTE", "LOCAL", "REFUSED", "UNKNOWN", "ROUTE_EVENTS", "node_from_bin", "route_verdict", "RouteMixin"]

log = logging.getLogger("pyfabric.protocol")

# What RouteHooks.lookup says about the Node of a {Name, Node} destination (16.3).
ROUTE = "route"  # a client of this server the policy lets the sender reach
LOCAL = "local"  # this server's own node
REFUSED = "refused"  # a client node the policy refuses: not_allowed
UNKNOWN = "unknown"  # no such node: dropped like a message to an unregistered name

MAX_NODE_BYTES = 255

ROUTE_EVENTS = (MessageRouted, WhereisNodeRequested, NodesRequested, NodesReplied, NodeUp, NodeDown, GlobalReplied, GroupReplied)
"""The events the transport hands to its ``on_route_event`` hook: those of the `route` feature
(its router, a client's nodes) and the client's answers of `global` and `pg` (sections 17, 18)."""


@dataclass(frozen=True, slots=True)
class RouteHooks:
    """What a routing server tells one client connection (docs/protocol.md 16).

    ``heartbeat``: the ``route_heartbeat`` offered, ms. ``claim_node(node, resumed)``: at
    frame 4, may the client hold ``node`` (``resumed``: the session this handshake resumes,
    or None)? ``lookup(from_node, node)``: :data:`ROUTE`, :data:`LOCAL`, :data:`REFUSED`
    or :data:`UNKNOWN` for the ``Node`` of a received ``{Name, Node}``; ``from_node`` is
    the sender's client node name (None: a client without one, 16.1).
    """

    heartbeat: int
    claim_node: Callable[[Atom, Session | None], bool]
    lookup: Callable[[Atom | None, Atom], str]


def node_from_bin(value: Any) -> Atom | None:
    """A node name received as a binary (``name@host``, UTF-8, at most 255 bytes), or None."""
    if type(value) is not bytes or not 0 < len(value) <= MAX_NODE_BYTES:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    local, sep, host = text.partition("@")
    if not (local and sep and host):
        return None
    return Atom(text)


def _name_from_bin(value: Any) -> Atom | None:
    if type(value) is not bytes:
        return None
    try:
        return Atom(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, TypeError):
        return None


# -- received frames (handlers of the FRAMES table) -----------------------------------------


def route_verdict(est: Established, target: Atom, node: Atom) -> str:
    """What a routing server does with ``{Name, Node}`` (16.3): :data:`LOCAL` (deliver
    here), :data:`ROUTE` (forward: emit :class:`MessageRouted`), :data:`UNKNOWN` (drop, like
    a message to an unregistered name); a node the policy refuses raises ``not_allowed``."""
    hooks = est.hub
    if hooks is None:
        return LOCAL
    verdict = hooks.lookup(est.route_from, node)
    if verdict == REFUSED:
        log.warning("peer %s: message to %s on client node %s refused by the routing policy", est.peer, target.name, node.name)
        raise RemoteProtocolError("not_allowed", f"node {node.name!r} is not reachable from this client")
    if verdict == UNKNOWN:
        log.debug("peer %s: message to %s on unknown node %s dropped", est.peer, target.name, node.name)
    return verdict


def on_whereis_node(est: Established, req_id: Any, name_bin: Any, node_bin: Any) -> None:
    if est.hub is None:
        raise RemoteProtocolError("unknown_frame", "whereis_node is a frame for a server")
    if type(req_id) is not int or req_id < 1 or type(name_bin) is not bytes or type(node_bin) is not bytes:
        raise RemoteProtocolError("unknown_frame", "whereis_node frame with a bad ReqId, NameBin or NodeBin")
    if req_id in est.their_whereis:
        raise RemoteProtocolError("unknown_frame", f"whereis ReqId {req_id} is already pending")
    name = _name_from_bin(name_bin)
    node = node_from_bin(node_bin)
    verdict = est.hub.lookup(est.route_from, node) if node is not None else UNKNOWN
    if name is None or node is None or verdict in (REFUSED, UNKNOWN) or (verdict == LOCAL and not est.policy(name)):
        log.warning("peer %s: whereis %r on node %r answered undefined", est.peer, name_bin[:80], node_bin[:80])
        est.writer.write(plain((A_WHEREIS_REPLY, req_id, A_UNDEFINED)))
        return
    est.their_whereis.add(req_id)
    est.events.append(WhereisNodeRequested(req_id, name, node))


def on_nodes(est: Established, req_id: Any) -> None:
    if est.hub is None:
        raise RemoteProtocolError("unknown_frame", "nodes is a frame for a server")
    if type(req_id) is not int or req_id < 1 or req_id in est.their_nodes:
        raise RemoteProtocolError("unknown_frame", f"nodes frame with a bad or pending ReqId {describe(req_id)}")
    est.their_nodes.add(req_id)
    est.events.append(NodesRequested(req_id))


def on_nodes_reply(est: Established, req_id: Any, nodes: Any) -> None:
    if est.hub is not None or type(req_id) is not int or req_id not in est.our_nodes:
        raise RemoteProtocolError("unknown_frame", f"nodes_reply for unknown ReqId {describe(req_id)}")
    if type(nodes) is not list:
        raise RemoteProtocolError("unknown_frame", "nodes_reply with a list that is not a proper list")
    names = []
    for item in nodes:
        node = node_from_bin(item)
        if node is None:
            raise RemoteProtocolError("unknown_frame", f"nodes_reply with a bad node {describe(item)}")
        names.append(node)
    est.our_nodes.discard(req_id)
    est.events.append(NodesReplied(req_id, tuple(dict.fromkeys(names))))


def _node_notice(est: Established, node_bin: Any, what: str) -> Atom:
    if est.hub is not None:
        raise RemoteProtocolError("unknown_frame", f"{what} is a frame for a client")
    node = node_from_bin(node_bin)
    if node is None:
        raise RemoteProtocolError("unknown_frame", f"{what} with a bad node {describe(node_bin)}")
    return node


def on_nodeup(est: Established, node_bin: Any) -> None:
    est.events.append(NodeUp(_node_notice(est, node_bin, "nodeup")))


def on_nodedown(est: Established, node_bin: Any) -> None:
    est.events.append(NodeDown(_node_notice(est, node_bin, "nodedown")))


# -- commands ---------------------------------------------------------------------------------


def _node_bin(node: Atom | str) -> bytes:
    text = node.name if node.__class__ is Atom else str(node)
    data = text.encode("utf-8")
    if node_from_bin(data) is None:
        raise LocalProtocolError("unknown_id", f"bad node name {text!r}: it must look like name@host")
    return data


class RouteMixin:
    """The route commands of :class:`~._connection.Connection` (docs/protocol.md 16.5, 16.6)."""

    _commands: Callable[[str], Commands]  # Connection's: the state check, then its Commands

    def whereis_node(self, name: Atom | str, node: Atom | str) -> int:
        """Client: queue ``{whereis_node, ReqId, NameBin, NodeBin}``; returns ReqId, answered
        by ``WhereisReplied`` like :meth:`whereis`."""
        cmd = self._commands("whereis_node")
        cmd.need("route")
        text = name.name if name.__class__ is Atom else str(name)
        node_bin = _node_bin(node)
        req_id = cmd.next_req_id
        cmd.queue(plain((A_WHEREIS_NODE, req_id, text.encode("utf-8"), node_bin)))
        cmd.next_req_id = req_id + 1
        cmd.est.our_whereis.add(req_id)
        return req_id

    def request_nodes(self) -> int:
        """Client: queue ``{nodes, ReqId}``; returns ReqId (answered by ``NodesReplied``)."""
        cmd = self._commands("nodes")
        cmd.need("route")
        req_id = cmd.next_req_id
        cmd.queue(plain((A_NODES, req_id)))
        cmd.next_req_id = req_id + 1
        cmd.est.our_nodes.add(req_id)
        return req_id

    def reply_nodes(self, req_id: int, nodes: Iterable[Atom | str]) -> None:
        """Server: answer a ``NodesRequested`` with the client nodes the peer may see."""
        cmd = self._commands("reply_nodes")
        their = cmd.est.their_nodes
        if req_id not in their:
            raise LocalProtocolError("unknown_id", f"no pending nodes request {req_id!r}")
        cmd.queue(plain((A_NODES_REPLY, req_id, [_node_bin(n) for n in nodes])))
        their.discard(req_id)

    def node_up(self, node: Atom | str) -> None:
        """Server: queue ``{nodeup, NodeBin}``."""
        cmd = self._commands("node_notice")
        cmd.need("route")
        cmd.queue(plain((A_NODEUP, _node_bin(node))))

    def node_down(self, node: Atom | str) -> None:
        """Server: queue ``{nodedown, NodeBin}``."""
        cmd = self._commands("node_notice")
        cmd.need("route")
        cmd.queue(plain((A_NODEDOWN, _node_bin(node))))
