"""Selective receive: patterns, predicates, order, timeouts, wake-ups without rescans."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_helpers import run, settle  # noqa: F401  (run is a fixture)

from pyfabric.etf import Atom, FrozenDict, FrozenList
from pyfabric.runtime import ANY, ProcessError, ProcessExited, ReceiveTimeout
from pyfabric.runtime._match import compile_match


def drain(mb):
    items = mb.queued()
    return items


# -- patterns (pure) -----------------------------------------------------------------------


def matches(pattern, msg):
    matcher = compile_match(pattern)
    return True if matcher is None else matcher(msg)


@pytest.mark.parametrize(
    "pattern, msg, expected",
    [
        (ANY, object(), True),
        (None, 1, True),
        (int, 5, True),
        (int, "5", False),
        (str, "x", True),
        ((Atom("ok"), ANY), (Atom("ok"), 1), True),
        ((Atom("ok"), ANY), (Atom("ok"), 1, 2), False),
        ((Atom("ok"), ANY), [Atom("ok"), 1], False),
        ((Atom("ok"), ANY), ("ok", 1), False),
        ((Atom("ok"), int), (Atom("ok"), "1"), False),
        ([1, ANY], [1, 2], True),
        ([1, ANY], FrozenList([1, 2]), True),
        ([1, ANY], (1, 2), False),
        ([1, ANY], [1, 2, 3], False),
        ({"a": 1}, {"a": 1, "b": 2}, True),
        ({"a": 1}, FrozenDict({"a": 1}), True),
        ({"a": 1}, {"b": 1}, False),
        ({"a": 1}, {"a": 2}, False),
        ({"a": ANY}, ("a",), False),
        ({}, {"anything": 1}, True),
        (Atom("ok"), Atom("ok"), True),
        (Atom("ok"), "ok", False),
        ("ok", Atom("ok"), False),
        (1, 1, True),
        (1, 1.0, False),
        (1, True, False),
        (True, 1, False),
        (True, True, True),
        (1.5, 1.5, True),
        (1.0, 1, False),
        (b"x", b"x", True),
        (b"x", "x", False),
        (((1, ANY), [ANY, {"k": (str, ANY)}]), ((1, 0), [None, {"k": ("s", 9)}]), True),
        (((1, ANY), [ANY, {"k": (str, ANY)}]), ((1, 0), [None, {"k": (3, 9)}]), False),
    ],
)
def test_pattern_rules(pattern, msg, expected):
    assert matches(pattern, msg) is expected


def test_predicate_is_called_and_nested_callables_compare_by_equality():
    assert matches(lambda m: m == 3, 3)
    assert not matches(lambda m: m == 3, 4)
    assert matches((len, ANY), (len, 1))  # nested callable: equality, not a call
    assert not matches((len, ANY), ("abc", 1))


def test_any_is_a_singleton_with_a_readable_repr():
    assert repr(ANY) == "ANY"
    assert type(ANY)() is ANY


# -- receive -------------------------------------------------------------------------------


def test_receive_returns_messages_in_fifo_order(run):
    async def body(node):
        mb = node.mailbox()
        for i in range(5):
            mb.send(mb.pid, i)
        return [await mb.receive() for _ in range(5)]

    assert run(body) == [0, 1, 2, 3, 4]


def test_selective_receive_skips_and_preserves_order(run):
    async def body(node):
        mb = node.mailbox()
        for msg in [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("c", 5)]:
            node.send(mb.pid, msg)
        first_b = await mb.receive(("b", ANY))
        c = await mb.receive(lambda m: m[0] == "c")
        rest = [await mb.receive(timeout=0) for _ in range(3)]
        return first_b, c, rest

    first_b, c, rest = run(body)
    assert first_b == ("b", 2)
    assert c == ("c", 5)
    assert rest == [("a", 1), ("a", 3), ("b", 4)]


def test_receive_waits_for_a_matching_message(run):
    async def body(node):
        mb = node.mailbox()

        async def sender(proc, dest):
            proc.send(dest, "noise")
            await asyncio.sleep(0.01)
            proc.send(dest, ("reply", 42))

        node.spawn(sender, mb.pid)
        got = await mb.receive(("reply", int), timeout=2)
        return got, drain(mb)

    assert run(body) == (("reply", 42), ["noise"])


def test_timeout_raises_receive_timeout_and_keeps_messages(run):
    async def body(node):
        mb = node.mailbox()
        mb.send(mb.pid, "other")
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ReceiveTimeout) as info:
            await mb.receive("wanted", timeout=0.05)
        elapsed = loop.time() - start
        assert isinstance(info.value, TimeoutError)
        assert info.value.timeout == 0.05
        assert 0.04 <= elapsed < 1.0
        return drain(mb)

    assert run(body) == ["other"]


def test_timeout_zero_polls(run):
    async def body(node):
        mb = node.mailbox()
        with pytest.raises(ReceiveTimeout):
            await mb.receive(timeout=0)
        mb.send(mb.pid, 1)
        with pytest.raises(ReceiveTimeout):
            await mb.receive(str, timeout=0)
        assert await mb.receive(int, timeout=0) == 1
        return True

    assert run(body)


def test_message_arriving_with_the_timeout_wins(run):
    async def body(node):
        mb = node.mailbox()
        loop = asyncio.get_running_loop()
        # Both callbacks fire in the same loop iteration as the timer: the scan runs first.
        loop.call_later(0.02, mb.send, mb.pid, "late")
        return await mb.receive(timeout=0.02)

    assert run(body) == "late"


def test_already_checked_messages_are_not_rechecked_while_waiting(run):
    async def body(node):
        mb = node.mailbox()
        for i in range(10):
            mb.send(mb.pid, i)
        calls = []

        def wanted(msg):
            calls.append(msg)
            return msg == "end"

        async def feeder(proc, dest):
            for i in range(10, 20):
                proc.send(dest, i)
                await asyncio.sleep(0)
            proc.send(dest, "end")

        node.spawn(feeder, mb.pid)
        assert await mb.receive(wanted, timeout=2) == "end"
        return calls

    calls = run(body)
    assert calls == list(range(20)) + ["end"]  # each message checked exactly once


def test_drop_old_while_waiting_does_not_skip_new_messages(run):
    async def body(node):
        mb = node.mailbox(max_mailbox=3, overflow="drop_old")
        mb.send(mb.pid, 1)
        mb.send(mb.pid, 2)
        task = asyncio.ensure_future(mb.receive(lambda m: m == "x" or m == 5, timeout=2))
        await settle()
        for m in [3, 4, 5]:  # 3 fills the box; 4 and 5 push 1 and 2 out
            mb.send(mb.pid, m)
        got = await task
        return got, drain(mb)

    assert run(body) == (5, [3, 4])


def test_demonitor_flush_while_another_task_waits_rescans(run):
    async def body(node):
        mb = node.mailbox()
        other = node.mailbox()
        ref = mb.monitor(other.pid)
        mb.send(mb.pid, "a")
        other.close()  # queues a DOWN
        mb.send(mb.pid, "b")
        task = asyncio.ensure_future(mb.receive("z", timeout=2))
        await settle()
        assert mb.demonitor(ref, flush=True) is False  # already fired, but flushed
        mb.send(mb.pid, "z")
        got = await task
        return got, drain(mb)

    assert run(body) == ("z", ["a", "b"])


def test_concurrent_receive_on_one_process_is_refused(run):
    async def body(node):
        mb = node.mailbox()
        first = asyncio.ensure_future(mb.receive(timeout=2))
        await settle()
        with pytest.raises(ProcessError, match="another receive"):
            await mb.receive(timeout=1)
        mb.send(mb.pid, "x")
        with pytest.raises(ProcessError, match="another receive"):
            await mb.receive(timeout=0)  # even when a message is queued
        return await first

    assert run(body) == "x"


def test_receive_after_exit_raises_process_exited_with_reason(run):
    async def body(node):
        mb = node.mailbox()
        mb.send(mb.pid, "lost")
        mb.close(Atom("bye"))
        with pytest.raises(ProcessExited) as info:
            await mb.receive(timeout=0)
        assert info.value.reason == Atom("bye")
        assert info.value.pid == mb.pid
        assert mb.qsize() == 0
        return True

    assert run(body)


def test_receive_waiting_when_mailbox_is_killed_raises_process_exited(run):
    async def body(node):
        mb = node.mailbox()
        killer = node.mailbox()
        task = asyncio.ensure_future(mb.receive())
        await settle()
        killer.exit(mb.pid, Atom("kill"))
        with pytest.raises(ProcessExited) as info:
            await task
        return info.value.reason

    assert run(body) == Atom("killed")


def test_cancelled_receive_leaves_mailbox_usable(run):
    async def body(node):
        mb = node.mailbox()
        task = asyncio.ensure_future(mb.receive())
        await settle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        mb.send(mb.pid, "after")
        return await mb.receive(timeout=1)

    assert run(body) == "after"


def test_receive_inside_asyncio_timeout(run):
    async def body(node):
        mb = node.mailbox()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await mb.receive()
        mb.send(mb.pid, 1)
        return await mb.receive(timeout=0)

    assert run(body) == 1


# -- model-based: random interleavings of sends and selective receives -------------------

tags = st.sampled_from(["a", "b", "c"])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), tags, st.integers(0, 3)),
        st.tuples(st.just("recv"), st.one_of(st.none(), tags), st.one_of(st.none(), st.integers(0, 3))),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_selective_receive_matches_a_list_model(ops):
    async def body():
        from pyfabric.runtime import Node

        async with Node() as node:
            mb = node.mailbox()
            model: list[tuple[str, int]] = []
            for op in ops:
                if op[0] == "send":
                    msg = (op[1], op[2])
                    mb.send(mb.pid, msg)
                    model.append(msg)
                    continue
                tag, number = op[1], op[2]
                pattern = (ANY if tag is None else tag, ANY if number is None else number)
                expected = next((m for m in model if (tag in (None, m[0])) and number in (None, m[1])), None)
                if expected is None:
                    with pytest.raises(ReceiveTimeout):
                        await mb.receive(pattern, timeout=0)
                else:
                    model.remove(expected)
                    assert await mb.receive(pattern, timeout=0) == expected
                assert mb.queued() == model

    asyncio.run(body())


@settings(max_examples=60, deadline=None)
@given(
    queued=st.lists(st.tuples(tags, st.integers(0, 3)), max_size=10),
    later=st.lists(st.tuples(tags, st.integers(0, 3)), max_size=10),
    want=tags,
)
def test_waiting_receive_takes_the_first_match_in_arrival_order(queued, later, want):
    async def body():
        from pyfabric.runtime import Node

        async with Node() as node:
            mb = node.mailbox()
            for msg in queued:
                mb.send(mb.pid, msg)
            everything = queued + later
            expected = next((m for m in everything if m[0] == want), None)
            # Short timeout only when it must expire; a generous one when a match comes.
            waiting = asyncio.ensure_future(mb.receive((want, ANY), timeout=0.01 if expected is None else 5))
            await asyncio.sleep(0)
            for msg in later:
                mb.send(mb.pid, msg)
                await asyncio.sleep(0)
            if expected is None:
                with pytest.raises(ReceiveTimeout):
                    await waiting
                assert mb.queued() == everything
            else:
                assert await waiting == expected
                rest = list(everything)
                rest.remove(expected)
                assert mb.queued() == rest

    asyncio.run(body())
