"""The sessions of a server's clients, kept across their reconnects (docs/protocol.md 7).

:class:`KeptSessions` maps each session id to the :class:`~._peer.PeerLink` that owns the
session, finds the one a resume asks for, keeps a disconnected client's session for
``session_timeout`` (at most ``max_kept`` of them: the oldest expires first) and ends
sessions for good. ``on_ended`` hears of every session that ends (the routing server frees
the client's node name, docs/protocol.md 16).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..protocol import Session
from ._peer import PeerLink

__all__ = ["KeptSessions"]

_log = logging.getLogger("pyfabric.server")


class KeptSessions:
    """Session id -> owning link, and the expiry timers of the disconnected ones."""

    def __init__(self, session_timeout: float, max_kept: int, on_ended: Callable[[PeerLink], None] | None = None) -> None:
        self.session_timeout = session_timeout
        self.max_kept = max_kept
        self.links: dict[bytes, PeerLink] = {}
        self.expiry: dict[bytes, asyncio.TimerHandle] = {}
        self.on_ended = on_ended

    def find(self, session_id: bytes) -> Session | None:
        """The session a resume asks for (the handshake's ``find_session``)."""
        link = self.links.get(session_id)
        if link is None:
            return None
        if link.connected:
            # The client is back (authenticated) while its old connection still looks up
            # to us (half-open: its end vanished without a FIN): the resume wins.
            _log.info("%s: session resumed from a new connection; closing the old one", link.label)
            link.close()
        return link.session

    def resumed(self, session_id: bytes) -> PeerLink:
        """The client resumed ``session_id``: its link, the expiry cancelled."""
        timer = self.expiry.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        return self.links[session_id]

    def keep(self, session_id: bytes) -> None:
        """The client is disconnected: keep its session for a resume, for ``session_timeout``."""
        old = self.expiry.pop(session_id, None)
        if old is not None:
            old.cancel()
        self.expiry[session_id] = asyncio.get_running_loop().call_later(self.session_timeout, self.expire, session_id)
        while len(self.expiry) > self.max_kept:
            oldest = next(iter(self.expiry))
            self.expiry.pop(oldest).cancel()
            _log.info("more than %d sessions kept for a resume: the oldest expires now", self.max_kept)
            self.expire(oldest)

    def end(self, session_id: bytes, reason: str | None) -> None:
        """End a kept session at once (``reason`` None: its link already reported it)."""
        timer = self.expiry.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        link = self.links.pop(session_id, None)
        if link is not None:
            self._ended(link)
            if reason is not None:
                link.expire(reason)

    def end_link(self, link: PeerLink) -> None:
        """End ``link``'s kept session, if it has one (a new client took its node name)."""
        if link.session is not None and link.session.id is not None:
            self.end(link.session.id, "session_expired")

    def expire(self, session_id: bytes) -> None:
        self.expiry.pop(session_id, None)
        link = self.links.pop(session_id, None)
        if link is not None and not link.connected:
            self._ended(link)
            _log.info("%s: session expired after %s s without a resume", link.label, self.session_timeout)
            link.expire()

    def _ended(self, link: PeerLink) -> None:
        if self.on_ended is not None:
            self.on_ended(link)

    def close(self) -> None:
        """The server closes: every kept session ends (``closed``)."""
        for timer in self.expiry.values():
            timer.cancel()
        self.expiry.clear()
        for link in list(self.links.values()):
            self._ended(link)
            link.expire("closed")
        self.links.clear()
