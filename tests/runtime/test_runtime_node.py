"""The node: names, allocators, liveness, shutdown cleanliness and the public surface."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from runtime_helpers import DOWN, EXIT, NOCONNECTION, PROCESS, SHUTDOWN, run, settle  # noqa: F401

import pyfabric.runtime as runtime
from pyfabric.etf import Atom, Pid, Reference
from pyfabric.runtime import Node, ProcessError
from pyfabric.runtime._ids import IdAllocator


def test_default_name_and_creation(run):
    async def body(node):
        return node.name, node.creation

    name, creation = run(body)
    assert isinstance(name, Atom)
    assert re.fullmatch(r"py_[0-9a-f]{8}@[^@.]+", name.name)
    assert 0 < creation <= 0xFFFFFFFF


def test_given_name_and_creation(run):
    async def body(node):
        return node.name, node.creation, node.make_ref(), node.mailbox().pid

    name, creation, ref, pid = run(body, name="me@host", creation=7)
    assert name == Atom("me@host") and creation == 7
    assert ref.node == name and ref.creation == 7 and len(ref.ids) == 3
    assert pid.node == name and pid.creation == 7


@pytest.mark.parametrize("name", ["nohost", "@host", "name@", 5])
def test_bad_node_names(name):
    async def body():
        with pytest.raises((ValueError, TypeError)):
            Node(name)

    asyncio.run(body())


def test_node_needs_a_running_loop():
    with pytest.raises(RuntimeError, match="running asyncio event loop"):
        Node()


def test_pids_and_refs_are_unique_and_never_reused(run):
    async def body(node):
        pids = set()
        for _ in range(200):
            mb = node.mailbox()
            pids.add(mb.pid)
            mb.close()
        refs = {node.make_ref() for _ in range(1000)}
        return pids, refs

    pids, refs = run(body)
    assert len(pids) == 200 and all(isinstance(p, Pid) for p in pids)
    assert len(refs) == 1000 and all(isinstance(r, Reference) for r in refs)


def test_pid_id_wraps_into_the_serial():
    ids = IdAllocator(Atom("py@host"), 7, next_id=0xFFFFFFFF)
    a = ids.new_pid()
    b = ids.new_pid()
    assert (a.id, a.serial, a.creation) == (0xFFFFFFFF, 0, 7)
    assert (b.id, b.serial) == (1, 1)


def test_reference_words_fit_erlang_ranges():
    ref = IdAllocator(Atom("py@host"), 7, next_ref=(1 << 60) + 5).new_ref()
    assert ref.ids[0] < (1 << 18) and all(word <= 0xFFFFFFFF for word in ref.ids)
    assert ref.ids == (5, 0, 1 << 10)


def test_send_to_dead_or_foreign_pids_is_a_silent_no_op(run):
    async def body(node):
        mb = node.mailbox()
        mb.close()
        node.send(mb.pid, "x")
        node.send(Pid(Atom("other@host"), 1, 0, 1), "x")
        with pytest.raises(TypeError):
            node.send(3.5, "x")
        return True

    assert run(body)


def test_is_alive_and_processes(run):
    async def body(node):
        a, b = node.mailbox(), node.mailbox()
        b.close()
        return node.is_alive(a.pid), node.is_alive(b.pid), node.processes() == [a.pid]

    assert run(body) == (True, False, True)


def test_close_ends_everything_cleanly():
    async def body():
        node = Node()
        seen = {}
        events = []
        observer = node.mailbox(trap_exit=True)

        class Handle:
            def deliver(self, msg): ...
            def link_added(self, pid): ...
            def link_removed(self, pid): ...
            def exit_signal(self, pid, reason): ...

        async def worker(proc):
            try:
                await proc.receive()
            finally:
                events.append("cleanup")

        pids = [node.spawn(worker, trap_exit=True) for _ in range(3)]
        proxy = node.new_proxy(Handle())
        box = node.mailbox()
        for pid in [*pids, proxy, box.pid, observer.pid]:
            node.watch(pid, lambda p, reason: seen.__setitem__(p, reason))
        await settle()
        await node.close()
        assert node.closed and node.processes() == []
        assert not node.process_tasks()
        with pytest.raises(ProcessError, match="closed"):
            node.spawn(worker)
        with pytest.raises(ProcessError):
            node.mailbox()
        with pytest.raises(ProcessError):
            node.new_proxy(Handle())
        node.send(box.pid, "dropped")
        await node.close()  # idempotent
        return seen, pids, proxy, box.pid, observer.pid, events

    seen, pids, proxy, box, observer, events = asyncio.run(body())
    assert all(seen[p] == SHUTDOWN for p in [*pids, box, observer])
    assert seen[proxy] == NOCONNECTION
    assert events == ["cleanup"] * 3


def test_async_with_closes_and_no_asyncio_warnings(run):
    async def body(node):
        async with Node() as inner:
            async def forever(proc):
                await asyncio.sleep(3600)

            for _ in range(5):
                inner.spawn(forever)
            await settle()
        return inner.processes(), inner.closed

    assert run(body) == ([], True)  # the run fixture fails on any asyncio warning


def test_a_process_may_close_its_own_node(run):
    async def body(node):
        done = asyncio.get_running_loop().create_future()

        async def closer(proc):
            await node.close()
            done.set_result(proc.alive)

        node.spawn(closer)
        return await asyncio.wait_for(done, 1), node.closed

    assert run(body) == (False, True)


def test_close_gives_up_on_tasks_that_ignore_cancellation(caplog):
    async def body():
        node = Node()
        release = asyncio.Event()

        async def stubborn(proc):
            while True:
                try:
                    await release.wait()
                    return
                except asyncio.CancelledError:
                    continue

        node.spawn(stubborn)
        await settle()
        await node.close(timeout=0.02)
        release.set()
        await settle()

    with caplog.at_level(logging.WARNING, logger="pyfabric.runtime"):
        asyncio.run(body())
    assert any("ignored cancellation" in r.getMessage() for r in caplog.records)


def test_public_surface_is_curated():
    assert sorted(runtime.__all__) == sorted(set(runtime.__all__))
    for name in runtime.__all__:
        assert hasattr(runtime, name), name
    public = {n for n in dir(runtime) if not n.startswith("_")}
    assert public == set(runtime.__all__)
    for name in runtime.__all__:
        obj = getattr(runtime, name)
        if callable(obj) and not isinstance(obj, type(Atom)) and getattr(obj, "__module__", "").startswith("pyfabric"):
            assert obj.__doc__, name


def test_errors_form_a_closed_hierarchy():
    from pyfabric.runtime import NameTaken, NoProcess, NotRegistered, ProcessExit, ProcessExited, ReceiveTimeout

    for cls in (NameTaken, NoProcess, NotRegistered, ProcessExited, ReceiveTimeout):
        assert issubclass(cls, ProcessError)
    assert issubclass(ReceiveTimeout, TimeoutError)
    assert not issubclass(ProcessExit, ProcessError)
