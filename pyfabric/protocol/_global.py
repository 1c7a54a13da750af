"""The ``global`` feature in the core, client side (docs/protocol.md section 17), sans-IO.

A client asks its server to register one of its processes under a cluster-wide name:
``{register_global, ReqId, NameBin, A}`` and ``{unregister_global, ReqId, NameBin}``,
answered by ``{global_reply, ReqId, ok | {error, CodeBin}}``. :class:`GlobalMixin` adds
the two commands to :class:`~._connection.Connection` and keeps the requests in flight;
:func:`on_global_reply` (named by the ``FRAMES`` table of :mod:`._established`) turns an
answer into a :class:`GlobalReplied` event. Only erlang_peer servers offer ``global``:
a pyfabric server never does (it cannot join Erlang distribution, 17.1), so the two
request frames are never valid at a pyfabric peer (:func:`on_register_global`,
:func:`on_unregister_global`: ``unknown_frame``). An original peer never sees any of
them: it neither offers nor accepts the feature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..etf import Atom, Pid
from ._constants import A_ERROR, A_OK, plain
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import Event
from ._rewrite import describe

if TYPE_CHECKING:
    from ._commands import Commands
    from ._established import Established

__all__ = [
    "A_REGISTER_GLOBAL",
    "A_UNREGISTER_GLOBAL",
    "A_GLOBAL_REPLY",
    "GLOBAL_CODES",
    "MAX_GLOBAL_NAME",
    "GlobalReplied",
    "GlobalMixin",
    "global_name_bin",
    "on_register_global",
    "on_unregister_global",
    "on_global_reply",
]

A_REGISTER_GLOBAL = Atom("register_global")
A_UNREGISTER_GLOBAL = Atom("unregister_global")
A_GLOBAL_REPLY = Atom("global_reply")

MAX_GLOBAL_NAME = 255
"""Bytes of a global name (UTF-8), 17.2."""

GLOBAL_CODES = frozenset({"in_use", "not_allowed", "limit", "noproc", "not_registered"})
"""The codes of ``{error, CodeBin}`` in a ``global_reply`` (17.2); a server of a later
version may send others, which are passed on as they are (at most 64 characters)."""


@dataclass(frozen=True, slots=True)
class GlobalReplied(Event):
    """The server's answer to our ``register_global`` / ``unregister_global`` (17.2):
    ``error`` is None for ``ok``, else the code (``"in_use"``, ``"not_allowed"``,
    ``"limit"``, ``"noproc"``, ``"not_registered"``)."""

    req_id: int
    error: str | None


def global_name_bin(name: Atom | str) -> bytes:
    """``name`` as the NameBin of 17.2 (UTF-8, 1 to 255 bytes), or ``LocalProtocolError``
    (``bad_payload``): nothing is sent for a name the server could not take."""
    text = name.name if name.__class__ is Atom else name
    if not isinstance(text, str):
        raise LocalProtocolError("bad_payload", f"a global name is an Atom or a str, got {type(name).__name__}")
    data = text.encode("utf-8")
    if not 0 < len(data) <= MAX_GLOBAL_NAME:
        raise LocalProtocolError("bad_payload", f"a global name is 1 to {MAX_GLOBAL_NAME} bytes of UTF-8, got {len(data)}")
    return data


# -- received frames (handlers of the FRAMES table) -----------------------------------------


def on_register_global(est: Established, *_elements: Any) -> None:
    raise RemoteProtocolError("unknown_frame", "register_global is a frame for an erlang_peer server (docs/protocol.md 17)")


def on_unregister_global(est: Established, *_elements: Any) -> None:
    raise RemoteProtocolError("unknown_frame", "unregister_global is a frame for an erlang_peer server (docs/protocol.md 17)")


def on_global_reply(est: Established, req_id: Any, result: Any) -> None:
    pending = est.our_global
    if type(req_id) is not int or req_id not in pending:
        raise RemoteProtocolError("unknown_frame", f"global_reply for unknown ReqId {describe(req_id)}")
    if result == A_OK:
        error = None
    elif type(result) is tuple and len(result) == 2 and result[0] == A_ERROR and type(result[1]) is bytes and result[1]:
        error = result[1].decode("utf-8", "replace")[:64]
    else:
        raise RemoteProtocolError("unknown_frame", f"global_reply with a bad Result {describe(result)}")
    pending.discard(req_id)
    est.events.append(GlobalReplied(req_id, error))


# -- commands ---------------------------------------------------------------------------------


class GlobalMixin:
    """The ``global`` commands of :class:`~._connection.Connection` (docs/protocol.md 17)."""

    _commands: Callable[[str], Commands]  # Connection's: the state check, then its Commands

    def register_global(self, name: Atom | str, pid: Pid) -> int:
        """Client: queue ``{register_global, ReqId, NameBin, A}`` for local process ``pid``
        (exported as for a link); returns ReqId, answered by :class:`GlobalReplied`.
        Needs ``global`` (else :class:`~._errors.FeatureNotSupported`); a bad name or a
        pid that is not a local process is ``LocalProtocolError`` and sends nothing."""
        cmd = self._commands("global")
        cmd.need("global")
        name_bin = global_name_bin(name)
        req_id = cmd.next_req_id
        cmd.send_rewritten(lambda: plain((A_REGISTER_GLOBAL, req_id, name_bin, cmd.export(pid, "pid"))), seq=False)
        cmd.next_req_id = req_id + 1
        cmd.est.our_global.add(req_id)
        return req_id

    def unregister_global(self, name: Atom | str) -> int:
        """Client: queue ``{unregister_global, ReqId, NameBin}``; returns ReqId, answered
        by :class:`GlobalReplied` (``not_registered`` if no process of our session holds
        the name)."""
        cmd = self._commands("global")
        cmd.need("global")
        name_bin = global_name_bin(name)
        req_id = cmd.next_req_id
        cmd.queue(plain((A_UNREGISTER_GLOBAL, req_id, name_bin)))
        cmd.next_req_id = req_id + 1
        cmd.est.our_global.add(req_id)
        return req_id
