"""A client's global names: its processes registered in Erlang's ``global`` through an
erlang_peer server (docs/protocol.md section 17, docs/cluster.md).

:class:`GlobalNames` sends the requests of :class:`~pyfabric.protocol.Connection` and
matches the server's answers (``GlobalReplied`` events, which the peer link hands to its
``on_route_event`` hook) to the callers waiting for them. A request pending when the
connection is lost is void (17.2): its caller gets :class:`NotConnected`; the
registration itself, if the server made it, lives on with the session.

What the registration is tied to is the server's: it ends when the process ends (its
DEAD reaches the server, which ends its proxy) or when the client's session ends (closed,
or a reconnection that could not resume it); a reconnection that resumes the session
keeps it. Nothing is re-registered for the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..etf import Atom, Pid
from ..protocol import GlobalReplied
from ._errors import GlobalNameError, GlobalNameInUse, NotConnected
from ._options import PeerOptions
from ._server_requests import ServerRequests

__all__ = ["GlobalNames", "GlobalClientMixin"]

_log = logging.getLogger("pyfabric.client")


def _text(name: Atom | str) -> str:
    if name.__class__ is Atom:
        return name.name
    if not isinstance(name, str):
        raise TypeError(f"a global name is an Atom or a str, got {type(name).__name__}")
    return name


class GlobalNames(ServerRequests[str | None]):
    """The ``global`` requests of one client in flight (see the module docstring)."""

    reply = GlobalReplied
    reply_frame = "global_reply"
    feature = "global"
    needs = "an erlang_peer server started with register_global (the 'global' feature, docs/protocol.md 17)"

    def answer(self, ev: Any) -> str | None:
        return ev.error  # type: ignore[no-any-return]

    async def request(self, what: str, name: Atom | str, pid: Pid | None, timeout: float | None) -> None:
        """Send ``register_global`` (``pid`` given) or ``unregister_global`` and wait for
        the answer; raises the typed error of a refusal."""
        text = _text(name)
        call = f"{what}({text!r})"
        conn = self.connection(what, call)
        req_id = conn.register_global(text, pid) if pid is not None else conn.unregister_global(text)
        code = await self.wait(req_id, call, timeout)
        if code is None:
            _log.info("%s: %s %s ok", self._link.label, what, text)
            return
        if code == "in_use":
            raise GlobalNameInUse(code, text, f"{call}: the name is registered to another process")
        reasons = {
            "not_allowed": "the server's register_global option refuses the name",
            "limit": "the server could not create the name or the proxy (its limits)",
            "noproc": "the process has ended",
            "not_registered": "no process of this client's session holds the name",
        }
        raise GlobalNameError(code, text, f"{call}: {reasons.get(code, 'refused by the server')} ({code})")


class GlobalClientMixin:
    """The global-name API of :class:`~._client.Client` (docs/protocol.md 17)."""

    _global_names: GlobalNames
    _whereis_timeout: float
    _connect_timeout: float
    _state: str
    options: PeerOptions
    host: str
    port: int
    wait_connected: Callable[[float | None], Awaitable[None]]

    async def _ready(self, what: str) -> None:
        """Connected, or wait for it (``whereis``, ``register_global``, ``unregister_global``):
        :class:`NotConnected` at once when closed or with ``when_disconnected="error"``, else
        once ``connect_timeout`` seconds pass without a reconnection."""
        if self._state == "connected":
            return
        if self._state == "closed":
            raise NotConnected(f"{what}: the client of {self.host}:{self.port} is closed")
        if self.options.when_disconnected == "error":
            raise NotConnected(
                f"{what}: not connected to {self.host}:{self.port} (reconnecting); "
                "retry later, or pass when_disconnected='wait' to wait for the reconnection"
            )
        try:
            await self.wait_connected(self._connect_timeout)
        except TimeoutError:
            raise NotConnected(
                f"{what}: still not connected to {self.host}:{self.port} after "
                f"{self._connect_timeout} s (connect_timeout); retry later or await wait_connected()"
            ) from None

    async def register_global(self, name: Atom | str, pid: Pid, *, timeout: float | None = None) -> None:
        """Register local process ``pid`` in Erlang's ``global`` as ``name``, through the
        server (docs/protocol.md 17): any process of the Erlang cluster, and any client of
        a server that allows the name, then reaches it by that name. Needs an erlang_peer
        server started with ``register_global`` (else
        :class:`~pyfabric.protocol.FeatureNotSupported`).

        The name ends when ``pid`` ends, when :meth:`unregister_global` removes it, or when
        this client's session ends (closed, or a reconnection that could not resume it: the
        caller registers again if it wants); it survives a reconnection that resumes the
        session. Registering the same name again for the same process is a no-op.

        Raises :class:`GlobalNameInUse` (held by another process), :class:`GlobalNameError`
        (``.code``: ``not_allowed``, ``limit``, ``noproc``), :class:`NotConnected` (as
        :meth:`whereis` while disconnected, or when the connection is lost before the
        answer: the registration may then have been made), ``TimeoutError`` after
        ``timeout`` s (default ``whereis_timeout``)."""
        if type(pid) is not Pid:
            raise TypeError(f"register_global needs a Pid, got {type(pid).__name__}")
        await self._ready("register_global")
        await self._global_names.request("register_global", name, pid, self._whereis_timeout if timeout is None else timeout)

    async def unregister_global(self, name: Atom | str, *, timeout: float | None = None) -> None:
        """Remove a global name that :meth:`register_global` gave one of this client's
        processes. Raises :class:`GlobalNameError` with code ``not_registered`` if this
        client's session does not hold it (nothing changes), and as
        :meth:`register_global` otherwise."""
        await self._ready("unregister_global")
        await self._global_names.request("unregister_global", name, None, self._whereis_timeout if timeout is None else timeout)
