"""The process table's entries implement ProcessHandle; the node reads mailbox bounds publicly."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime_helpers import run  # noqa: F401

from pyfabric.etf import Atom, Pid
from pyfabric.runtime import Node
from pyfabric.runtime._handle import ProcessHandle
from pyfabric.runtime._proxy import Proxy


class NullHandle:
    def __init__(self) -> None:
        self.delivered: list[Any] = []

    def deliver(self, msg: Any) -> None:
        self.delivered.append(msg)

    def link_added(self, local_pid: Pid) -> None:
        pass

    def link_removed(self, local_pid: Pid) -> None:
        pass

    def exit_signal(self, from_pid: Pid, reason: Any) -> None:
        pass


def test_mailboxes_processes_and_proxies_are_process_handles(run):
    async def body(node: Node) -> list[bool]:
        seen: list[bool] = []

        async def proc_body(proc: Any) -> None:
            seen.append(isinstance(proc, ProcessHandle))

        node.spawn(proc_body)
        mb = node.mailbox()
        handle = NullHandle()
        proxy = Proxy(node.dead_pid(), handle)
        proxy.deliver("hi")
        proxy.on_stopped(Atom("gone"))
        while not seen:
            await asyncio.sleep(0)
        return [
            isinstance(mb, ProcessHandle),
            *seen,
            isinstance(proxy, ProcessHandle),
            handle.delivered == ["hi"],
            proxy.exit_reason == Atom("gone"),
            not proxy.alive,
        ]

    assert run(body) == [True] * 6


def test_max_mailbox_and_mailbox_size(run):
    async def body(node: Node) -> tuple[int, int, tuple[int, int]]:
        mb = node.mailbox(max_mailbox=7)
        mb.send(mb.pid, 1)
        return mb.max_mailbox, node.mailbox().max_mailbox, node.mailbox_size(mb.pid)

    max_mailbox, default, size = run(body)
    assert (max_mailbox, size) == (7, (1, 7))
    assert default == 100_000
