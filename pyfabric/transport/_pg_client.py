"""A client's ``pg`` groups: its processes joined to process groups of an erlang_peer
server's cluster, and the groups' members (docs/protocol.md section 18, docs/cluster.md
section 5).

:class:`ClientGroups` sends the requests of :class:`~pyfabric.protocol.Connection` and
matches the server's answers (``GroupReplied`` events, which the peer link hands to its
``on_route_event`` hook) to the callers waiting for them, exactly as
:mod:`._global_client` does for global names. A request pending when the connection is lost
is void (18.2): its caller gets :class:`NotConnected`; a membership the server made lives on
with the session.

Membership is the server's: it ends when the process ends (its DEAD reaches the server,
which ends its proxy), with ``leave``, or when the client's session ends; a reconnection that
resumes the session keeps it. Nothing is joined again for the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..etf import Atom, Pid
from ..protocol import GroupReplied
from ..protocol._pg import group_bin
from ._errors import GroupError
from ._server_requests import ServerRequests

__all__ = ["ClientGroups", "PgClientMixin"]

_log = logging.getLogger("pyfabric.client")

_REASONS = {
    "not_allowed": "the server's client_groups option refuses the group",
    "limit": "this session's processes are in the most groups a server allows (64), or a server limit",
    "noproc": "the process has ended",
    "not_member": "the process is not in the group through this client",
}


class ClientGroups(ServerRequests[tuple[tuple[Pid, ...] | None, str | None]]):
    """The ``pg`` requests of one client in flight (see the module docstring)."""

    reply = GroupReplied
    reply_frame = "pg_reply"
    feature = "pg"
    needs = "a clustered erlang_peer server started with client_groups (the 'pg' feature, docs/protocol.md 18)"

    def answer(self, ev: Any) -> tuple[tuple[Pid, ...] | None, str | None]:
        return ev.members, ev.error

    async def request(self, what: str, group: str | bytes | Atom, pid: Pid | None, timeout: float | None) -> tuple[Pid, ...]:
        """Send ``pg_join`` / ``pg_leave`` (``pid`` given) or ``pg_members`` and wait for the
        answer: the members (empty for join and leave); raises :class:`GroupError` for a
        refusal."""
        g = group_bin(group)
        call = f"{what}({g!r})"
        conn = self.connection(what, call)
        if what == "join":
            assert pid is not None
            req_id: int | None = conn.pg_join(g, pid)
        elif what == "leave":
            assert pid is not None
            req_id = conn.pg_leave(g, pid)
        else:
            req_id = conn.pg_members(g)
        if req_id is None:  # leave of a process never exported here: not a member through us
            raise GroupError("not_member", g, f"{call}: {_REASONS['not_member']} (not_member)")
        members, code = await self.wait(req_id, call, timeout)
        if code is not None:
            raise GroupError(code, g, f"{call}: {_REASONS.get(code, 'refused by the server')} ({code})")
        _log.debug("%s: %s %r ok", self._link.label, what, g)
        return members or ()


class PgClientMixin:
    """The ``pg`` group API of :class:`~._client.Client` (docs/protocol.md 18)."""

    _client_groups: ClientGroups
    _whereis_timeout: float
    _ready: Callable[[str], Awaitable[None]]

    async def join(self, group: str | bytes, pid: Pid, *, timeout: float | None = None) -> None:
        """Join local process ``pid`` to the ``pg`` group ``group`` of the server's cluster
        (docs/protocol.md 18; ``group`` a ``str``, UTF-8, or ``bytes``, 1 to 255 bytes): the
        server joins its proxy for ``pid`` to ``{fabric_peer_group, GroupBin}`` of its scope,
        so Erlang processes and the clients of every server see it among the members. Needs
        a clustered erlang_peer server started with ``client_groups`` (else
        :class:`~pyfabric.protocol.FeatureNotSupported`). Joining again is a no-op.

        Membership ends when ``pid`` ends, with :meth:`leave`, or when this client's session
        ends; it survives a reconnection that resumes the session.

        Raises :class:`GroupError` (``.code``: ``not_allowed``, ``limit``, ``noproc``),
        :class:`NotConnected` (as :meth:`whereis` while disconnected, or when the connection is
        lost before the answer: the process may then have joined), ``TimeoutError`` after
        ``timeout`` s (default ``whereis_timeout``)."""
        if type(pid) is not Pid:
            raise TypeError(f"join needs a Pid, got {type(pid).__name__}")
        await self._ready("join")
        await self._client_groups.request("join", group, pid, self._whereis_timeout if timeout is None else timeout)

    async def leave(self, group: str | bytes, pid: Pid, *, timeout: float | None = None) -> None:
        """Take local process ``pid`` out of group ``group``. Raises :class:`GroupError` with
        code ``not_member`` if it is not in the group through this client, and as
        :meth:`join` otherwise."""
        if type(pid) is not Pid:
            raise TypeError(f"leave needs a Pid, got {type(pid).__name__}")
        await self._ready("leave")
        await self._client_groups.request("leave", group, pid, self._whereis_timeout if timeout is None else timeout)

    async def members(self, group: str | bytes, *, timeout: float | None = None) -> list[Pid]:
        """The members of group ``group`` on every node of the cluster (at most 1000, as
        ``pg:get_members/2`` gives them; eventually consistent: a join at another server
        shows a moment later): this client's own processes as themselves, every other
        member as a proxy pid to send to, link or monitor. Raises as :meth:`join`
        (``not_allowed`` for a group the server refuses)."""
        await self._ready("members")
        return list(await self._client_groups.request("members", group, None, self._whereis_timeout if timeout is None else timeout))
