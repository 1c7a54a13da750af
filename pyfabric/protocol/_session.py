"""Per-connection (per-session) id tables: what each side exported, what proxies we hold.

A :class:`Session` outlives a :class:`~pyfabric.protocol.Connection` when the ``session``
feature is agreed: the transport hands the same object to the connection that resumes it
(client: ``Connection(..., session=old.session)``; server: the ``find_session``
callback returns it). Without that feature it is simply the connection's tables.
"""

from __future__ import annotations

from typing import Any

from ..etf import Pid

__all__ = ["Session"]


class Session:
    """The id tables of one session.

    * exports: local pids we shipped as ``{pr, Id}``; ids count from 1 and are never
      reused (an ended process's entry is removed, a later export gets a new id);
    * proxies: one proxy pid per remote id the peer shipped to us;
    * pending: frames (DEAD, link) that could not be sent while disconnected, sent
      right after a resume.
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
        ident = self.export_ids.pop(pid, None)
        if ident is not None:
            del self.exports[ident]
        return ident

    def drop_proxy(self, remote_id: int) -> Pid | None:
        pid = self.proxies.pop(remote_id, None)
        if pid is not None:
            self.proxy_ids.pop(pid, None)
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
        return proxies

    def __repr__(self) -> str:
        sid = self.id.hex() if self.id else None
        return f"Session(id={sid}, exports={len(self.exports)}, proxies={len(self.proxies)})"
