"""The ``pg`` feature in the core, client side (docs/protocol.md section 18), sans-IO.

A client asks its server to join one of its processes to a ``pg`` group of the server's
cluster, to take it out again, or for a group's members: ``{pg_join, ReqId, GroupBin, A}``,
``{pg_leave, ReqId, GroupBin, A}`` and ``{pg_members, ReqId, GroupBin}``, answered by
``{pg_reply, ReqId, ok | {ok, Members} | {error, CodeBin}}`` (``Members`` a list of
``{pr, Id}`` / ``{pl, Id}``). :class:`PgMixin` adds the three commands to
:class:`~._connection.Connection` and keeps the requests in flight; :func:`on_pg_reply`
(named by the ``FRAMES`` table of :mod:`._established`) turns an answer into a
:class:`GroupReplied` event. As with ``global`` (section 17), only erlang_peer servers offer
``pg``: the request frames are never valid at a pyfabric peer (``unknown_frame``), and an
original peer never sees any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..etf import Atom, Pid
from ._constants import A_ERROR, A_OK, plain
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import Event
from ._rewrite import A_PL, A_PR, describe

if TYPE_CHECKING:
    from ._commands import Commands
    from ._established import Established

__all__ = [
    "A_PG_JOIN",
    "A_PG_LEAVE",
    "A_PG_MEMBERS",
    "A_PG_REPLY",
    "PG_CODES",
    "MAX_GROUP_NAME",
    "GroupReplied",
    "PgMixin",
    "group_bin",
    "on_pg_request",
    "on_pg_reply",
]

A_PG_JOIN = Atom("pg_join")
A_PG_LEAVE = Atom("pg_leave")
A_PG_MEMBERS = Atom("pg_members")
A_PG_REPLY = Atom("pg_reply")

MAX_GROUP_NAME = 255
"""Bytes of a group's name, 18.2."""

PG_CODES = frozenset({"not_allowed", "limit", "noproc", "not_member"})
"""The codes of ``{error, CodeBin}`` in a ``pg_reply`` (18.2); a server of a later version may
send others, which are passed on as they are (at most 64 characters)."""


@dataclass(frozen=True, slots=True)
class GroupReplied(Event):
    """The server's answer to our ``pg_join`` / ``pg_leave`` / ``pg_members`` (18.2):
    ``error`` is None for success, else the code (``"not_allowed"``, ``"limit"``,
    ``"noproc"``, ``"not_member"``); ``members`` the pids of a ``pg_members`` answer (our
    own processes as themselves, the others as proxies), else None."""

    req_id: int
    members: tuple[Pid, ...] | None
    error: str | None


def group_bin(group: str | bytes | Atom) -> bytes:
    """``group`` as the GroupBin of 18.2 (a ``str`` or an ``Atom`` as UTF-8, or ``bytes``; 1 to
    255 bytes), or ``LocalProtocolError`` (``bad_payload``): nothing is sent for a group the
    server could not take."""
    if group.__class__ is Atom:
        data = group.name.encode("utf-8")
    elif isinstance(group, str):
        data = group.encode("utf-8")
    elif isinstance(group, bytes):
        data = group
    else:
        raise LocalProtocolError("bad_payload", f"a group is a str, bytes or an Atom, got {type(group).__name__}")
    if not 0 < len(data) <= MAX_GROUP_NAME:
        raise LocalProtocolError("bad_payload", f"a group name is 1 to {MAX_GROUP_NAME} bytes, got {len(data)}")
    return data


# -- received frames (handlers of the FRAMES table) -----------------------------------------


def on_pg_request(est: Established, *_elements: Any) -> None:
    raise RemoteProtocolError("unknown_frame", "pg_join, pg_leave and pg_members are frames for an erlang_peer server (docs/protocol.md 18)")


def _members(est: Established, wire: Any) -> tuple[Pid, ...]:
    if type(wire) is not list or not all(
        type(m) is tuple and len(m) == 2 and (m[0] == A_PR or m[0] == A_PL) and type(m[1]) is int and m[1] > 0 for m in wire
    ):
        raise RemoteProtocolError("unknown_frame", f"pg_reply with bad Members {describe(wire)}")
    try:
        pids = est.rw.inbound(wire)  # {pl, Id}: our own process; {pr, Id}: a proxy (made if new)
    finally:
        est.flush_rw_events()
    return tuple(pids)


def on_pg_reply(est: Established, req_id: Any, result: Any) -> None:
    pending = est.our_pg
    if type(req_id) is not int or req_id not in pending:
        raise RemoteProtocolError("unknown_frame", f"pg_reply for unknown ReqId {describe(req_id)}")
    members: tuple[Pid, ...] | None = None
    error: str | None = None
    if result == A_OK:
        pass
    elif type(result) is tuple and len(result) == 2 and result[0] == A_OK:
        members = _members(est, result[1])
    elif type(result) is tuple and len(result) == 2 and result[0] == A_ERROR and type(result[1]) is bytes and result[1]:
        error = result[1].decode("utf-8", "replace")[:64]
    else:
        raise RemoteProtocolError("unknown_frame", f"pg_reply with a bad Result {describe(result)}")
    pending.discard(req_id)
    est.events.append(GroupReplied(req_id, members, error))


# -- commands ---------------------------------------------------------------------------------


class PgMixin:
    """The ``pg`` commands of :class:`~._connection.Connection` (docs/protocol.md 18)."""

    _commands: Callable[[str], Commands]  # Connection's: the state check, then its Commands

    def _pg_request(self, cmd: Commands, build: Callable[[int], bytes]) -> int:
        req_id = cmd.next_req_id
        cmd.send_rewritten(lambda: build(req_id), seq=False)
        cmd.next_req_id = req_id + 1
        cmd.est.our_pg.add(req_id)
        return req_id

    def pg_join(self, group: str | bytes | Atom, pid: Pid) -> int:
        """Client: queue ``{pg_join, ReqId, GroupBin, A}`` for local process ``pid`` (exported
        as for a link); returns ReqId, answered by :class:`GroupReplied`. Needs ``pg`` (else
        :class:`~._errors.FeatureNotSupported`); a bad group or a pid that is not a local
        process is ``LocalProtocolError`` and sends nothing."""
        cmd = self._commands("pg")
        cmd.need("pg")
        g = group_bin(group)
        return self._pg_request(cmd, lambda req: plain((A_PG_JOIN, req, g, cmd.export(pid, "pid"))))

    def pg_leave(self, group: str | bytes | Atom, pid: Pid) -> int | None:
        """Client: queue ``{pg_leave, ReqId, GroupBin, A}``; returns ReqId, answered by
        :class:`GroupReplied` (``not_member`` if ``pid`` is not in the group through this
        session). None (nothing sent) when ``pid`` was never exported on this session: it
        cannot be a member through it."""
        cmd = self._commands("pg")
        cmd.need("pg")
        g = group_bin(group)
        if type(pid) is not Pid:
            raise LocalProtocolError("bad_payload", f"pid must be a Pid, got {type(pid).__name__}")
        ident = cmd.est.session.export_ids.get(pid)
        if ident is None:
            return None
        return self._pg_request(cmd, lambda req: plain((A_PG_LEAVE, req, g, ident)))

    def pg_members(self, group: str | bytes | Atom) -> int:
        """Client: queue ``{pg_members, ReqId, GroupBin}``; returns ReqId, answered by
        :class:`GroupReplied` with the members (at most 1000, 18.2)."""
        cmd = self._commands("pg")
        cmd.need("pg")
        g = group_bin(group)
        return self._pg_request(cmd, lambda req: plain((A_PG_MEMBERS, req, g)))
