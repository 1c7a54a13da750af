"""Shared helpers for the runtime tests (imported by name: `from runtime_helpers import ...`)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pyfabric.etf import Atom
from pyfabric.runtime import Node

NORMAL = Atom("normal")
KILL = Atom("kill")
KILLED = Atom("killed")
NOPROC = Atom("noproc")
NOCONNECTION = Atom("noconnection")
SHUTDOWN = Atom("shutdown")
EXIT = Atom("EXIT")
DOWN = Atom("DOWN")
PROCESS = Atom("process")


class AsyncioErrors(logging.Handler):
    """Collects asyncio's own error logs ('Task was destroyed but it is pending', ...)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def run() -> Callable[..., Any]:
    """``run(body, **node_options)``: ``asyncio.run`` of ``body(node)`` with a fresh Node.

    The node is closed afterwards, and the test fails if asyncio logged any warning or error
    (pending tasks destroyed, exceptions never retrieved, ...).
    """
    handler = AsyncioErrors()
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(handler)

    def runner(body: Callable[[Node], Awaitable[Any]], **options: Any) -> Any:
        async def main() -> Any:
            node = Node(**options)
            try:
                return await body(node)
            finally:
                await node.close()

        result = asyncio.run(main())
        gc.collect()
        assert not handler.records, [r.getMessage() for r in handler.records]
        return result

    yield runner
    asyncio_log.removeHandler(handler)


async def settle(rounds: int = 5) -> None:
    """Let spawned tasks run a few loop iterations."""
    for _ in range(rounds):
        await asyncio.sleep(0)
