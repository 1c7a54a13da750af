"""Requests a client makes of its server whose answer comes back as an event carrying the
request's id: global names (docs/protocol.md 17) and ``pg`` groups (18).

:class:`ServerRequests` is what both have in common: it hooks the peer link's
``on_route_event`` (passing on every other event), checks that the connection is up and
offers the feature, waits for the answer of one request id within a timeout, and voids the
requests in flight when the connection is lost (their frames are connection-scoped: the
caller gets :class:`NotConnected`, and what the server did, if anything, lives on with the
session). Subclasses name the reply event, the feature and what the answer is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

from ..protocol import Connection, FeatureNotSupported
from ..runtime import Node
from ._errors import NotConnected
from ._peer import PeerLink
from ._waiters import Waiters

__all__ = ["ServerRequests"]

R = TypeVar("R")


class ServerRequests(ABC, Generic[R]):
    """The requests of one kind of one client in flight, by request id."""

    reply: type[Any]
    """The protocol event that answers a request (``GlobalReplied``, ``GroupReplied``)."""
    reply_frame: str
    """The answer's frame, for messages (``global_reply``, ``pg_reply``)."""
    feature: str
    """The negotiated feature the requests need."""
    needs: str
    """What offers the feature, for the :class:`FeatureNotSupported` message (e.g. "an
    erlang_peer server started with register_global (the 'global' feature, docs/protocol.md 17)")."""

    def __init__(self, node: Node, link: PeerLink) -> None:
        self._node = node
        self._link = link
        self._waiting: Waiters[R] = Waiters(node.loop)
        self._next = link.on_route_event
        link.on_route_event = self._on_event

    @abstractmethod
    def answer(self, ev: Any) -> R:
        """What a reply event tells its caller."""

    def _on_event(self, link: PeerLink, ev: Any) -> None:
        if ev.__class__ is self.reply:
            self._waiting.resolve(ev.req_id, self.answer(ev))
        elif self._next is not None:
            self._next(link, ev)

    def connection_lost(self) -> None:
        """Requests in flight are void (their frames are connection-scoped)."""
        self._waiting.fail_all(NotConnected(f"connection to the server lost while waiting for its {self.reply_frame}"))

    def connection(self, what: str, call: str) -> Connection:
        """The established connection for request ``what`` (``call``: the same with its
        argument, e.g. ``"join('g')"``, for messages), or the error that says why there is none:
        :class:`NotConnected`, :class:`FeatureNotSupported`."""
        link = self._link
        conn = link.conn
        if conn is None or not link.connected:
            raise NotConnected(f"{call}: not connected to {link.label}")
        if self.feature not in conn.features:
            raise FeatureNotSupported(
                self.feature,
                f"{what}() needs {self.needs}; a pyfabric server or an original one does not offer it",
            )
        return conn

    async def wait(self, req_id: int, call: str, timeout: float | None) -> R:
        """The answer to request ``req_id`` (just issued on the connection), within ``timeout`` s."""
        return await self._waiting.wait(req_id, self._link.flush, timeout, f"{call} got no answer from {self._link.label}")
