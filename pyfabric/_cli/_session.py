"""What a command does over one connection: resolve names, send, wait for a reply, make a
``gen_server:call``. Used by the one-shot commands and by the REPL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .. import Atom, BlockingClient, BlockingMailbox, FeatureNotSupported, Pid, ReceiveTimeout, Reference
from ..etf import format as format_term
from ._common import REFUSED, TIMEOUT, USAGE, CliError

__all__ = ["Session", "destination"]

GEN_CALL = Atom("$gen_call")
DOWN = Atom("DOWN")
NOCONNECTION = Atom("noconnection")


def destination(term: Any) -> Pid | Atom | tuple[Atom, Atom]:
    """Where a term says to send: a pid, a registered name, or ``{Name, Node}``."""
    if isinstance(term, Pid):
        return term
    if isinstance(term, Atom):
        return term
    if isinstance(term, str) and term:
        return Atom(term)
    if isinstance(term, tuple) and len(term) == 2 and all(isinstance(x, Atom) for x in term):
        return (term[0], term[1])
    raise CliError(
        f"cannot send to {format_term(term)}: a destination is a registered name (ping), {{Name, Node}} or a pid",
        USAGE,
    )


class Session:
    """One connected client with one mailbox (``self()``)."""

    def __init__(self, client: BlockingClient, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self.box: BlockingMailbox = client.mailbox()
        self._refs = 0

    @property
    def node(self) -> Atom:
        return self.box.pid.node

    def functions(self) -> dict[str, Callable[..., Any]]:
        """The calls a term may contain: ``self()``, ``make_ref()``, ``whereis(Name)``."""
        return {"self/0": self.self_pid, "make_ref/0": self.make_ref, "whereis/1": self.whereis_or_undefined}

    def self_pid(self) -> Pid:
        return self.box.pid

    def make_ref(self) -> Reference:
        """A new reference of our node (made on the client's loop, which owns the node)."""
        node = self.client.async_client.node

        async def make() -> Reference:
            return node.make_ref()

        return asyncio.run_coroutine_threadsafe(make(), self.client.loop).result(self.timeout)

    def whereis(self, name: Atom | str) -> Pid | None:
        return self.client.whereis(name, timeout=self.timeout)

    def whereis_or_undefined(self, name: Any) -> Pid | Atom:
        if not isinstance(name, (Atom, str)):
            raise TypeError(f"whereis/1 takes an atom, got {format_term(name)}")
        pid = self.whereis(name)
        return Atom("undefined") if pid is None else pid

    def send(self, dest: Any, msg: Any) -> None:
        self.client.send(destination(dest), msg)

    def receive(self, timeout: float | None = None) -> Any:
        """The next message to ``self()`` (``ReceiveTimeout`` after ``timeout`` s)."""
        return self.box.receive(timeout=self.timeout if timeout is None else timeout)

    def pending(self) -> list[Any]:
        """Every message already in the mailbox, taken out."""
        messages = []
        while self.box.qsize():
            messages.append(self.box.receive(timeout=0))
        return messages

    def call(self, name: Any, request: Any, timeout: float | None = None) -> Any:
        """``gen_server:call(Name, Request, Timeout)`` semantics: send
        ``{'$gen_call', {self(), Ref}, Request}`` and return ``Reply`` from ``{Ref, Reply}``.

        The server is monitored (when it can be found with ``whereis``), so its exit ends
        the wait at once with the exit reason, as in Erlang (``CliError``, status 1).
        """
        timeout = self.timeout if timeout is None else timeout
        dest = destination(name)
        target: Any = dest
        if isinstance(dest, (Atom, str)):
            try:
                pid = self.whereis(dest)
            except FeatureNotSupported:
                pid = None  # an original server: no whereis, the name is all we have
            else:
                if pid is None:
                    raise CliError(f"no process is registered as {format_term(dest)} there (or the server does not allow it)", REFUSED)
            if pid is not None:
                target = pid
        monitor = self.box.monitor(target) if isinstance(target, Pid) else None
        ref = self.make_ref()
        self.client.send(target, (GEN_CALL, (self.box.pid, ref), request))

        def answer(msg: Any) -> bool:
            if isinstance(msg, tuple) and len(msg) == 2 and msg[0] == ref:
                return True
            return monitor is not None and isinstance(msg, tuple) and len(msg) == 5 and msg[0] == DOWN and msg[1] == monitor

        deadline = time.monotonic() + timeout
        try:
            msg = self.box.receive(match=answer, timeout=max(0.0, deadline - time.monotonic()))
        except ReceiveTimeout:
            raise CliError(f"no reply to the call within {timeout:g} s (raise --timeout to wait longer)", TIMEOUT) from None
        finally:
            if monitor is not None:
                self.box.demonitor(monitor, flush=True)
        if msg[0] == ref:
            return msg[1]
        reason = msg[4]
        raise CliError(f"the server exited during the call: {format_term(reason, node=self.node)}", REFUSED)

    def close(self) -> None:
        self.box.close()
        self.client.close()

