"""Callers waiting for the answer to a request sent on a connection, by request id.

One :class:`Waiters` table is kept per kind of request (``whereis`` in
:class:`~._peer.PeerLink`, global names and ``pg`` groups in
:class:`~._server_requests.ServerRequests`): a caller waits for its id within a timeout, the
answer's event resolves it, and losing the connection fails every request in flight (their
frames are connection-scoped). Only asyncio here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Waiters"]

R = TypeVar("R")


class Waiters(Generic[R]):
    """Futures of the requests of one kind in flight."""

    __slots__ = ("_loop", "_futures")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._futures: dict[int, asyncio.Future[R]] = {}

    async def wait(self, req_id: int, flush: Callable[[], None], timeout: float | None, what: str) -> R:
        """The answer to request ``req_id`` (just issued; ``flush`` writes it out), within
        ``timeout`` s; :class:`TimeoutError` naming ``what`` (e.g. "whereis('x') ... from
        server") otherwise."""
        fut: asyncio.Future[R] = self._loop.create_future()
        self._futures[req_id] = fut
        flush()
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise TimeoutError(f"{what} within {timeout} s") from None
        finally:
            self._futures.pop(req_id, None)

    def resolve(self, req_id: int, value: R) -> None:
        """The answer to ``req_id`` arrived (ignored if nobody waits for it any more)."""
        fut = self._futures.pop(req_id, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def fail_all(self, exc: Exception) -> None:
        """The connection is gone: every request in flight gets ``exc``."""
        futures, self._futures = self._futures, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(exc)
