"""Monitors: the exact DOWN shape, noproc, demonitor (with flush) and multiple monitors."""

from __future__ import annotations

import pytest
from runtime_helpers import DOWN, KILL, KILLED, NOPROC, NORMAL, PROCESS, run, settle  # noqa: F401

from pyfabric.etf import Atom, Reference
from pyfabric.runtime import ReceiveTimeout

BOOM = Atom("boom")


def test_down_message_has_the_erlang_shape(run):
    async def body(node):
        watcher, target = node.mailbox(), node.mailbox()
        ref = watcher.monitor(target.pid)
        target.close(BOOM)
        return await watcher.receive(timeout=0), ref, target.pid, node

    msg, ref, pid, node = run(body)
    assert msg == (DOWN, ref, PROCESS, pid, BOOM)
    assert type(msg) is tuple and len(msg) == 5
    assert type(msg[0]) is Atom and msg[0].name == "DOWN"
    assert type(msg[2]) is Atom and msg[2].name == "process"
    assert isinstance(ref, Reference) and ref.node == node.name


def test_monitor_fires_on_normal_exit_and_does_not_link(run):
    async def body(node):
        watcher, target = node.mailbox(), node.mailbox()
        ref = watcher.monitor(target.pid)
        assert watcher.statistics().links == 0
        target.close()
        return await watcher.receive(timeout=0), ref, target.pid, watcher.alive

    msg, ref, pid, alive = run(body)
    assert msg == (DOWN, ref, PROCESS, pid, NORMAL) and alive


def test_monitor_of_a_dead_or_unknown_pid_gives_noproc(run):
    async def body(node):
        watcher, target = node.mailbox(), node.mailbox()
        target.close(BOOM)
        ref = watcher.monitor(target.pid)
        return await watcher.receive(timeout=0), ref, target.pid

    msg, ref, pid = run(body)
    assert msg == (DOWN, ref, PROCESS, pid, NOPROC)


def test_multiple_monitors_each_fire_once_with_distinct_refs(run):
    async def body(node):
        w1, w2, target = node.mailbox(), node.mailbox(), node.mailbox()
        refs = [w1.monitor(target.pid), w1.monitor(target.pid), w2.monitor(target.pid)]
        assert len(set(refs)) == 3
        target.close(BOOM)
        got1 = [await w1.receive(timeout=0) for _ in range(2)]
        got2 = [await w2.receive(timeout=0)]
        with pytest.raises(ReceiveTimeout):
            await w1.receive(timeout=0)
        return refs, got1, got2, target.pid

    refs, got1, got2, pid = run(body)
    assert sorted(m[1].ids for m in got1) == sorted([refs[0].ids, refs[1].ids])
    assert got2 == [(DOWN, refs[2], PROCESS, pid, BOOM)]


def test_demonitor_stops_the_down(run):
    async def body(node):
        watcher, target = node.mailbox(), node.mailbox()
        ref = watcher.monitor(target.pid)
        assert watcher.demonitor(ref) is True
        assert watcher.demonitor(ref) is False
        assert target.statistics().monitored_by == 0
        target.close(BOOM)
        return watcher.qsize()

    assert run(body) == 0


def test_demonitor_flush_removes_an_already_queued_down_only(run):
    async def body(node):
        watcher, t1, t2 = node.mailbox(), node.mailbox(), node.mailbox()
        r1 = watcher.monitor(t1.pid)
        r2 = watcher.monitor(t2.pid)
        watcher.send(watcher.pid, "before")
        t1.close(BOOM)
        t2.close(BOOM)
        watcher.send(watcher.pid, (DOWN, r1, PROCESS, t1.pid))  # 4-tuple: not a DOWN, kept
        assert watcher.demonitor(r1, flush=False) is False  # already fired
        assert watcher.qsize() == 4
        assert watcher.demonitor(r1, flush=True) is False
        rest = [await watcher.receive(timeout=0) for _ in range(3)]
        return rest, r2, t1.pid, t2.pid

    rest, r2, p1, p2 = run(body)
    assert rest[0] == "before"
    assert rest[1] == (DOWN, r2, PROCESS, p2, BOOM)
    assert len(rest[2]) == 4


def test_monitor_via_killed_process(run):
    async def body(node):
        watcher, target, killer = node.mailbox(), node.mailbox(trap_exit=True), node.mailbox()
        ref = watcher.monitor(target.pid)
        killer.exit(target.pid, KILL)
        return await watcher.receive(timeout=0), ref, target.pid

    msg, ref, pid = run(body)
    assert msg == (DOWN, ref, PROCESS, pid, KILLED)


def test_monitors_held_by_a_dead_watcher_are_removed(run):
    async def body(node):
        watcher, target = node.mailbox(), node.mailbox()
        watcher.monitor(target.pid)
        watcher.close()
        return target.statistics().monitored_by

    assert run(body) == 0


def test_monitoring_a_spawned_process(run):
    async def body(node):
        watcher = node.mailbox()

        async def worker(proc):
            await proc.receive()

        pid = node.spawn(worker)
        ref = watcher.monitor(pid)
        node.send(pid, "done")
        return await watcher.receive(timeout=1), ref, pid

    msg, ref, pid = run(body)
    assert msg == (DOWN, ref, PROCESS, pid, NORMAL)


def test_self_monitor_is_harmless(run):
    async def body(node):
        a = node.mailbox()
        ref = a.monitor(a.pid)
        assert a.demonitor(ref) is True
        a.monitor(a.pid)
        a.close()
        return a.exit_reason

    assert run(body) == NORMAL
