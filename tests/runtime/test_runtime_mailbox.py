"""Mailbox bounds, the overflow policies, queue length and statistics."""

from __future__ import annotations

import logging

import pytest
from runtime_helpers import DOWN, PROCESS, run  # noqa: F401

from pyfabric.etf import Atom
from pyfabric.runtime import DEFAULT_MAX_MAILBOX, DEFAULT_OVERFLOW, Node, ProcessExited, ProcessStatistics

OVERFLOW = Atom("mailbox_overflow")


def test_defaults_are_documented_values():
    assert DEFAULT_MAX_MAILBOX == 100_000
    assert DEFAULT_OVERFLOW == "exit"


def test_qsize_len_and_truthiness(run):
    async def body(node):
        mb = node.mailbox()
        assert mb.qsize() == 0 and len(mb) == 0
        assert mb  # an empty mailbox is still truthy
        for i in range(3):
            mb.send(mb.pid, i)
        return mb.qsize(), len(mb)

    assert run(body) == (3, 3)


def test_overflow_exit_ends_the_process_with_mailbox_overflow(run, caplog):
    async def body(node):
        watcher = node.mailbox()
        mb = node.mailbox(max_mailbox=2)
        ref = watcher.monitor(mb.pid)
        for i in range(3):
            node.send(mb.pid, i)
        assert not mb.alive
        with pytest.raises(ProcessExited) as info:
            await mb.receive(timeout=0)
        assert info.value.reason == OVERFLOW
        return await watcher.receive(timeout=1), ref, mb.pid

    with caplog.at_level(logging.WARNING, logger="pyfabric.runtime"):
        down, ref, pid = run(body)
    assert down == (DOWN, ref, PROCESS, pid, OVERFLOW)
    assert any("mailbox_overflow" in r.getMessage() for r in caplog.records)


def test_overflow_drop_new_keeps_the_oldest_and_warns_once_per_episode(run, caplog):
    async def body(node):
        mb = node.mailbox(max_mailbox=3, overflow="drop_new")
        for i in range(10):
            mb.send(mb.pid, i)
        kept = mb.queued()
        stats = mb.statistics()
        # Draining to half ends the episode; the next overflow warns again.
        await mb.receive()
        await mb.receive()
        for i in range(10, 13):
            mb.send(mb.pid, i)
        return kept, stats, mb.queued()

    with caplog.at_level(logging.WARNING, logger="pyfabric.runtime"):
        kept, stats, after = run(body)
    assert kept == [0, 1, 2]
    assert stats.dropped == 7 and stats.received == 3 and stats.alive
    assert after == [2, 10, 11]
    warnings = [r for r in caplog.records if "dropping new messages" in r.getMessage()]
    assert len(warnings) == 2


def test_overflow_drop_old_keeps_the_newest(run, caplog):
    async def body(node):
        mb = node.mailbox(max_mailbox=3, overflow="drop_old")
        for i in range(10):
            mb.send(mb.pid, i)
        return mb.queued(), mb.statistics()

    with caplog.at_level(logging.WARNING, logger="pyfabric.runtime"):
        kept, stats = run(body)
    assert kept == [7, 8, 9]
    assert stats.dropped == 7 and stats.received == 10
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1


def test_node_wide_defaults_and_per_process_override(run):
    async def body(node):
        default = node.mailbox()
        special = node.mailbox(max_mailbox=5, overflow="exit")
        return default.statistics(), special.statistics()

    default, special = run(body, max_mailbox=2, overflow="drop_old")
    assert (default.max_mailbox, default.overflow) == (2, "drop_old")
    assert (special.max_mailbox, special.overflow) == (5, "exit")


def test_spawned_process_mailbox_is_bounded_too(run):
    async def body(node):
        watcher = node.mailbox()

        async def sleeper(proc):
            await watcher.receive()  # never returns: keeps the process busy

        pid = node.spawn(sleeper, max_mailbox=1)
        ref = watcher.monitor(pid)
        node.send(pid, 1)
        node.send(pid, 2)
        return await watcher.receive(timeout=1), ref, pid

    down, ref, pid = run(body)
    assert down == (DOWN, ref, PROCESS, pid, OVERFLOW)


@pytest.mark.parametrize("kwargs", [{"max_mailbox": 0}, {"max_mailbox": -1}, {"max_mailbox": 1.5}, {"overflow": "block"}])
def test_bad_bounds_and_policies_are_refused(run, kwargs):
    async def body(node):
        with pytest.raises(ValueError):
            node.mailbox(**kwargs)
        with pytest.raises(ValueError):
            Node(**kwargs)
        return True

    assert run(body)


def test_statistics_snapshot(run):
    async def body(node):
        mb = node.mailbox(name="stats_box", trap_exit=True)
        other = node.mailbox()
        mb.link(other.pid)
        mb.monitor(other.pid)
        other.monitor(mb.pid)
        mb.send(mb.pid, "x")
        return mb.statistics(), mb.pid

    stats, pid = run(body)
    assert isinstance(stats, ProcessStatistics)
    assert stats.pid == pid
    assert (stats.queued, stats.received, stats.dropped) == (1, 1, 0)
    assert (stats.links, stats.monitors, stats.monitored_by) == (1, 1, 1)
    assert stats.trap_exit is True
    assert stats.registered_name == Atom("stats_box")
    assert stats.alive and stats.exit_reason is None
    with pytest.raises(AttributeError):
        stats.queued = 5  # frozen
