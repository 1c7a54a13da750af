"""Per-connection (per-session) id tables: what each side exported, what proxies we hold.

A :class:`Session` outlives a :class:`~pyfabric.protocol.Connection` when the ``session``
feature is agreed: the transport hands the same object to the connection that resumes it
(client: ``Connection(..., session=old.session)``; server: the ``find_session``
callback returns it). Without that feature it is simply the connection's tables.
"""

from __future__ import annotations

from typing import Any

from ..etf import Pid

__all__ = ["Session", "GRAVES"]

GRAVES = 1024
"""Ended ids remembered per table and session: enough for the pids still in flight or held
by the peer's processes in the common case, bounded so a long session cannot grow."""


class Session:
    """The id tables of one session.

    * exports: local pids we shipped as ``{pr, Id}``; ids count from 1 and are never
      reused (an ended process's entry is removed, a later export gets a new id);
    * proxies: one proxy pid per remote id the peer shipped to us;
    * pending: frames (DEAD, link) that could not be sent while disconnected, sent
      right after a resume;
    * graves: the last :data:`GRAVES` ended exports and dead proxies, so that a pid that
      comes back after its process ended is still the same pid (``{pl, Id}`` of an ended
      export maps back to it; a dead proxy shipped back goes out as ``{pl, Id}`` and a
      ``{pr, Id}`` of a dead proxy's id is that dead proxy), docs/protocol.md 4.3.
    """

    __slots__ = (
        "id",
        "export_ids",
        "exports",
        "next_export_id",
        "proxies",
        "proxy_ids",
        "pending",
        "attached",
        "ended_exports",
        "ended_export_ids",
        "dead_proxies",
        "dead_proxy_ids",
    )

    def __init__(self, session_id: bytes | None = None) -> None:
        self.id = session_id
        self.export_ids: dict[Pid, int] = {}  # local pid -> our id
        self.exports: dict[int, Pid] = {}  # our id -> local pid
        self.next_export_id = 1
        self.proxies: dict[int, Pid] = {}  # peer's id -> proxy pid
        self.proxy_ids: dict[Pid, int] = {}  # proxy pid -> peer's id
        self.pending: list[Any] = []
        self.attached = False  # a live connection currently uses these tables
        self.ended_exports: dict[int, Pid] = {}  # our id -> local pid whose process ended
        self.ended_export_ids: dict[Pid, int] = {}  # local pid whose process ended -> our id
        self.dead_proxies: dict[int, Pid] = {}  # peer's id -> proxy pid that ended
        self.dead_proxy_ids: dict[Pid, int] = {}  # proxy pid that ended -> peer's id

    def export(self, pid: Pid) -> tuple[int, bool]:
        """Our id for ``pid``: (id, True) when this call created it."""
        ident = self.export_ids.get(pid)
        if ident is not None:
            return ident, False
        ident = self.next_export_id
        self.next_export_id = ident + 1
        self.export_ids[pid] = ident
        self.exports[ident] = pid
        return ident, True

    def unexport(self, pid: Pid) -> int | None:
        """The process ``pid`` ended: its id leaves the table (into the graves)."""
        ident = self.export_ids.pop(pid, None)
        if ident is not None:
            del self.exports[ident]
            graves = self.ended_exports
            graves[ident] = pid
            self.ended_export_ids[pid] = ident
            if len(graves) > GRAVES:
                oldest = next(iter(graves))
                self.ended_export_ids.pop(graves.pop(oldest), None)
        return ident

    def forget_export(self, pid: Pid) -> None:
        """Undo an export the peer never saw (the frame carrying it was not sent)."""
        ident = self.export_ids.pop(pid)
        del self.exports[ident]

    def drop_proxy(self, remote_id: int) -> Pid | None:
        """The peer's process ``remote_id`` ended: its proxy leaves the table (into the graves)."""
        pid = self.proxies.pop(remote_id, None)
        if pid is not None:
            self.proxy_ids.pop(pid, None)
            self.dead_proxies[remote_id] = pid
            self.dead_proxy_ids[pid] = remote_id
            if len(self.dead_proxies) > GRAVES:
                oldest = next(iter(self.dead_proxies))
                del self.dead_proxy_ids[self.dead_proxies.pop(oldest)]
        return pid

    def expire(self) -> list[tuple[Pid, int]]:
        """End the session for good: forget every table; returns the (proxy, remote id)
        pairs, which the runtime terminates with ``noconnection``."""
        proxies = list(self.proxy_ids.items())
        self.export_ids.clear()
        self.exports.clear()
        self.proxies.clear()
        self.proxy_ids.clear()
        self.pending.clear()
        self.ended_exports.clear()
        self.ended_export_ids.clear()
        self.dead_proxies.clear()
        self.dead_proxy_ids.clear()
        return proxies

    def __repr__(self) -> str:
        sid = self.id.hex() if self.id else None
        return f"Session(id={sid}, exports={len(self.exports)}, proxies={len(self.proxies)})"
