"""The process table's entries implement ProcessHandle; the node reads mailbox bounds publicly."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime_helpers import run  # noqa: F401

from pyfabric.etf import Atom, Pid
from pyfabric.runtime import Node, NotRegistered
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


def test_send_with_room_says_whether_the_mailbox_it_fed_is_below_the_mark(run):
    """``send_with_room``: delivered like ``send``; True only for a local process holding
    fewer than ``high`` messages with this one; a name that is not registered raises."""

    async def body(node: Node) -> tuple[list[bool], int, bool]:
        mb = node.mailbox(name="box")
        rooms = [node.send_with_room(mb.pid, i, 3) for i in range(3)] + [node.send_with_room(Atom("box"), 3, 3)]
        gone = node.mailbox()
        gone.close()
        try:
            node.send_with_room(Atom("nobody"), 0, 3)
        except NotRegistered:
            raised = True
        else:
            raised = False
        return rooms + [node.send_with_room(gone.pid, 0, 3)], mb.qsize(), raised

    rooms, queued, raised = run(body)
    assert rooms == [True, True, False, False, False]
    assert queued == 4 and raised


def test_service_time_is_measured_only_while_behind(run):
    """``service_time``: unknown (0.0) until the process took a message with more waiting,
    then about its own time per message (here >= 20 ms of sleep), and ``mailbox_load``
    reports it with the queue; a process that is never behind stays at 0.0."""

    async def body(node: Node) -> tuple[list[float], tuple[int, int, float], float, tuple[int, int, float]]:
        seen: list[float] = []

        async def worker(proc) -> None:
            while True:
                await proc.receive()
                seen.append(proc.service_time)
                await asyncio.sleep(0.02)

        pid = node.spawn(worker)
        for n in range(6):
            node.send(pid, n)
        while len(seen) < 6:
            await asyncio.sleep(0.01)
        idle = node.mailbox()
        idle.send(idle.pid, 1)
        await idle.receive()
        return seen, node.mailbox_load(pid), idle.service_time, node.mailbox_load(Atom("nobody"))

    seen, load, idle, unknown = run(body)
    assert seen[0] == 0.0  # the first take: nothing measured yet
    assert all(0.02 <= t < 1.0 for t in seen[1:]), seen
    assert load == (0, 100_000, seen[-1]), load  # queue empty, the last measurement kept
    assert idle == 0.0
    assert unknown == (0, 0, 0.0)
