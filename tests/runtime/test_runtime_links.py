"""Links, exit signals, exit/2, trap_exit and how a process's end becomes its exit reason."""

from __future__ import annotations

import asyncio
import logging

import pytest
from runtime_helpers import EXIT, KILL, KILLED, NOPROC, NORMAL, run, settle  # noqa: F401

from pyfabric.etf import Atom
from pyfabric.runtime import Node, NoProcess, ProcessExit, ProcessExited, ReceiveTimeout
from pyfabric.runtime._signals import Action, exit_signal_action

BOOM = Atom("boom")


# -- the signal table (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "reason, via_link, trapping, from_self, expected",
    [
        (KILL, False, False, False, (Action.EXIT, KILLED)),
        (KILL, False, True, False, (Action.EXIT, KILLED)),
        (KILL, False, True, True, (Action.EXIT, KILLED)),
        (KILL, True, True, False, (Action.MESSAGE, KILL)),
        (KILL, True, False, False, (Action.EXIT, KILL)),
        (NORMAL, True, False, False, (Action.IGNORE, None)),
        (NORMAL, False, False, False, (Action.IGNORE, None)),
        (NORMAL, False, False, True, (Action.EXIT, NORMAL)),
        (NORMAL, False, True, True, (Action.MESSAGE, NORMAL)),
        (NORMAL, True, True, False, (Action.MESSAGE, NORMAL)),
        (BOOM, False, False, False, (Action.EXIT, BOOM)),
        (BOOM, True, True, False, (Action.MESSAGE, BOOM)),
        ("kill", False, False, False, (Action.EXIT, "kill")),  # a str is not the atom kill
        ("normal", True, False, False, (Action.EXIT, "normal")),
        ((BOOM, 1), True, False, False, (Action.EXIT, (BOOM, 1))),
    ],
)
def test_exit_signal_table(reason, via_link, trapping, from_self, expected):
    assert exit_signal_action(reason, via_link=via_link, trapping=trapping, from_self=from_self) == expected


# -- links -----------------------------------------------------------------------------------


def test_link_propagates_in_both_directions(run):
    async def body(node):
        a, b = node.mailbox(), node.mailbox()
        a.link(b.pid)
        assert b.statistics().links == 1  # symmetric
        b.close(BOOM)
        assert a.exit_reason == BOOM
        c, d = node.mailbox(), node.mailbox()
        d.link(c.pid)
        c.close(BOOM)
        return d.exit_reason

    assert run(body) == BOOM


def test_normal_exit_is_ignored_by_a_non_trapping_linked_process(run):
    async def body(node):
        a, b = node.mailbox(), node.mailbox()
        a.link(b.pid)
        b.close()
        return a.alive, a.statistics().links, a.qsize()

    assert run(body) == (True, 0, 0)


def test_custom_reasons_propagate_along_chains(run):
    async def body(node):
        chain = [node.mailbox() for _ in range(5)]
        for left, right in zip(chain, chain[1:]):
            left.link(right.pid)
        reason = (Atom("shutdown"), {"why": [1, 2]})
        chain[-1].close(reason)
        return [m.exit_reason for m in chain]

    reason = (Atom("shutdown"), {"why": [1, 2]})
    assert run(body) == [reason] * 5


def test_long_chains_do_not_recurse(run):
    async def body(node):
        chain = [node.mailbox() for _ in range(20_000)]
        for left, right in zip(chain, chain[1:]):
            left.link(right.pid)
        chain[0].close(BOOM)
        return all(m.exit_reason == BOOM for m in chain), len(node.processes())

    assert run(body) == (True, 0)


def test_trap_exit_turns_signals_into_exit_messages_and_stops_the_chain(run):
    async def body(node):
        a, b, c = node.mailbox(), node.mailbox(trap_exit=True), node.mailbox()
        a.link(b.pid)
        b.link(c.pid)
        c.close(BOOM)
        msg = await b.receive(timeout=0)
        return msg, c.pid, b.alive, a.alive

    msg, c_pid, b_alive, a_alive = run(body)
    assert msg == (EXIT, c_pid, BOOM)
    assert isinstance(msg[0], Atom) and msg[0].name == "EXIT"
    assert b_alive and a_alive


def test_trapping_process_receives_normal_exits_too(run):
    async def body(node):
        a, b = node.mailbox(), node.mailbox()
        a.trap_exit = True
        a.link(b.pid)
        b.close()
        return await a.receive(timeout=0), b.pid

    msg, b_pid = run(body)
    assert msg == (EXIT, b_pid, NORMAL)


def test_kill_via_exit2_is_untrappable_and_links_see_killed(run):
    async def body(node):
        killer = node.mailbox()
        victim = node.mailbox(trap_exit=True)
        friend = node.mailbox(trap_exit=True)
        bystander = node.mailbox()
        victim.link(friend.pid)
        victim.link(bystander.pid)
        killer.exit(victim.pid, KILL)
        return victim.exit_reason, await friend.receive(timeout=0), victim.pid, bystander.exit_reason

    reason, msg, victim_pid, bystander_reason = run(body)
    assert reason == KILLED
    assert msg == (EXIT, victim_pid, KILLED)
    assert bystander_reason == KILLED  # killed is an ordinary reason for the links


def test_kill_arriving_through_a_link_is_trappable(run):
    async def body(node):
        dying = node.mailbox()
        trapper = node.mailbox(trap_exit=True)
        plain = node.mailbox()
        next_in_chain = node.mailbox()
        dying.link(trapper.pid)
        dying.link(plain.pid)
        plain.link(next_in_chain.pid)
        dying.close(KILL)  # the process ends with reason kill: its links get `kill`
        return await trapper.receive(timeout=0), dying.pid, plain.exit_reason, next_in_chain.exit_reason

    msg, dying_pid, plain_reason, next_reason = run(body)
    assert msg == (EXIT, dying_pid, KILL)
    assert plain_reason == KILL  # a non-trapping process dies with `kill`, not `killed`
    assert next_reason == KILL


def test_link_to_self_and_repeated_links_are_no_ops(run):
    async def body(node):
        a, b = node.mailbox(), node.mailbox()
        a.link(a.pid)
        a.link(b.pid)
        a.link(b.pid)
        b.link(a.pid)
        return a.statistics().links, b.statistics().links

    assert run(body) == (1, 1)


def test_unlink_removes_both_sides_and_stops_signals(run):
    async def body(node):
        a, b = node.mailbox(), node.mailbox()
        a.link(b.pid)
        b.unlink(a.pid)
        b.unlink(a.pid)  # no link: no-op
        a.unlink(node.mailbox().pid)
        b.close(BOOM)
        return a.alive, a.statistics().links

    assert run(body) == (True, 0)


def test_link_to_a_dead_pid(run):
    async def body(node):
        dead = node.mailbox()
        dead.close()
        plain = node.mailbox()
        with pytest.raises(NoProcess) as info:
            plain.link(dead.pid)
        assert info.value.pid == dead.pid
        assert plain.alive
        trapper = node.mailbox(trap_exit=True)
        trapper.link(dead.pid)
        return await trapper.receive(timeout=0), dead.pid

    msg, dead_pid = run(body)
    assert msg == (EXIT, dead_pid, NOPROC)


def test_dead_process_cannot_link_monitor_or_signal(run):
    async def body(node):
        a, b = node.mailbox(), node.mailbox()
        a.close()
        for call in (lambda: a.link(b.pid), lambda: a.monitor(b.pid), lambda: a.exit(b.pid, BOOM)):
            with pytest.raises(ProcessExited):
                call()
        a.unlink(b.pid)
        assert a.demonitor(b.node.make_ref()) is False
        a.send(b.pid, "still allowed")
        a.close(BOOM)  # idempotent: the first reason stays
        return a.exit_reason, await b.receive(timeout=0)

    assert run(body) == (NORMAL, "still allowed")


# -- exit/2 ----------------------------------------------------------------------------------


def test_exit2_rules(run):
    async def body(node):
        sender = node.mailbox()
        plain = node.mailbox()
        sender.exit(plain.pid, NORMAL)
        assert plain.alive  # normal from another process is ignored
        trapper = node.mailbox(trap_exit=True)
        sender.exit(trapper.pid, NORMAL)
        sender.exit(trapper.pid, BOOM)
        assert trapper.alive
        msgs = [await trapper.receive(timeout=0) for _ in range(2)]
        sender.exit(plain.pid, BOOM)
        assert plain.exit_reason == BOOM
        sender.exit(plain.pid, BOOM)  # to a dead pid: nothing happens
        return msgs, sender.pid

    msgs, sender_pid = run(body)
    assert msgs == [(EXIT, sender_pid, NORMAL), (EXIT, sender_pid, BOOM)]


def test_exit2_normal_to_self(run):
    async def body(node):
        plain = node.mailbox()
        plain.exit(plain.pid, NORMAL)
        trapper = node.mailbox(trap_exit=True)
        trapper.exit(trapper.pid, NORMAL)
        return plain.exit_reason, trapper.alive, await trapper.receive(timeout=0), trapper.pid

    plain_reason, trapper_alive, msg, trapper_pid = run(body)
    assert plain_reason == NORMAL
    assert trapper_alive and msg == (EXIT, trapper_pid, NORMAL)


def test_exit2_kill_to_self_is_killed(run):
    async def body(node):
        watcher = node.mailbox(trap_exit=True)

        async def suicidal(proc):
            proc.exit(proc.pid, KILL)
            await asyncio.sleep(0)
            proc.send(watcher.pid, "must not happen")

        node.spawn(suicidal, link_to=watcher.pid)
        return await watcher.receive(timeout=1)

    msg = run(body)
    assert msg[0] == EXIT and msg[2] == KILLED


# -- how a process's end becomes its reason --------------------------------------------------


def test_return_is_normal_and_process_exit_sets_the_reason(run):
    async def body(node):
        watcher = node.mailbox(trap_exit=True)

        async def returns(proc):
            return 42

        async def exits(proc, reason):
            raise ProcessExit(reason)

        p1 = node.spawn(returns, link_to=watcher.pid)
        p2 = node.spawn(exits, (Atom("shutdown"), 7), link_to=watcher.pid)
        got = {}
        for _ in range(2):
            _, pid, reason = await watcher.receive(timeout=1)
            got[pid] = reason
        return got, p1, p2

    got, p1, p2 = run(body)
    assert got == {p1: NORMAL, p2: (Atom("shutdown"), 7)}


def test_crash_reason_and_error_report(run, caplog):
    class CustomError(Exception):
        pass

    async def body(node):
        watcher = node.mailbox(trap_exit=True)

        async def crashes(proc, exc):
            raise exc

        p1 = node.spawn(crashes, ValueError("bad value"), link_to=watcher.pid)
        m1 = await watcher.receive(timeout=1)
        p2 = node.spawn(crashes, CustomError("custom"), link_to=watcher.pid)
        m2 = await watcher.receive(timeout=1)
        return m1, m2, p1, p2

    with caplog.at_level(logging.ERROR, logger="pyfabric.runtime"):
        m1, m2, p1, p2 = run(body)
    assert m1 == (EXIT, p1, (Atom("python_error"), "ValueError", "bad value"))
    assert m2[2][0] == Atom("python_error")
    assert m2[2][1].endswith("CustomError") and "." in m2[2][1]
    assert m2[2][2] == "custom"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "pyfabric.runtime"]
    assert len(errors) == 2
    assert errors[0].exc_info is not None and "crashed" in errors[0].getMessage()


def test_process_exit_is_not_logged_as_a_crash(run, caplog):
    async def body(node):
        async def exits(proc):
            raise ProcessExit(BOOM)

        node.spawn(exits)
        await settle()

    with caplog.at_level(logging.DEBUG, logger="pyfabric.runtime"):
        run(body)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_kill_cancels_the_task_and_its_cleanup_runs(run):
    async def body(node):
        watcher = node.mailbox(trap_exit=True)
        events = []

        async def worker(proc):
            try:
                events.append("started")
                await proc.receive()
            finally:
                events.append("cleanup")

        pid = node.spawn(worker, link_to=watcher.pid)
        await settle()
        watcher.exit(pid, KILL)
        assert not node.is_alive(pid)  # dead at once
        msg = await watcher.receive(timeout=1)
        await settle()
        return msg, pid, events

    msg, pid, events = run(body)
    assert msg == (EXIT, pid, KILLED)
    assert events == ["started", "cleanup"]


def test_process_killed_before_it_starts_never_runs(run):
    async def body(node):
        ran = []

        async def worker(proc):
            ran.append(True)

        killer = node.mailbox()
        pid = node.spawn(worker)
        killer.exit(pid, KILL)
        await settle()
        return ran

    assert run(body) == []


def test_outside_cancellation_counts_as_killed(run):
    async def body(node):
        watcher = node.mailbox()

        async def worker(proc):
            await asyncio.sleep(10)

        pid = node.spawn(worker)
        ref = watcher.monitor(pid)
        await settle()
        task = next(t for t in node.process_tasks() if t.get_name().endswith(f"{pid.id}.{pid.serial}"))
        task.cancel()
        return await watcher.receive(timeout=1), ref, pid

    msg, ref, pid = run(body)
    assert msg == (Atom("DOWN"), ref, Atom("process"), pid, KILLED)


def test_spawn_link_to(run):
    async def body(node):
        parent = node.mailbox()

        async def crasher(proc):
            await proc.receive()
            raise RuntimeError("child failed")

        child = node.spawn(crasher, link_to=parent.pid)
        node.send(child, "go")
        await settle()
        dead = node.mailbox()
        dead.close()

        async def never(proc):
            raise AssertionError

        count = len(node.processes())
        with pytest.raises(NoProcess):
            node.spawn(never, link_to=dead.pid)
        assert len(node.processes()) == count
        return parent.exit_reason

    assert run(body) == (Atom("python_error"), "RuntimeError", "child failed")


def test_spawn_requires_an_async_function(run):
    async def body(node):
        def not_async(proc):
            return 1

        with pytest.raises(TypeError):
            node.spawn(not_async)
        return node.processes()

    assert run(body) == []


def test_process_receive_after_being_killed_in_its_own_task(run):
    async def body(node):
        watcher = node.mailbox(trap_exit=True)
        seen = []

        async def worker(proc):
            other = node.mailbox()
            proc.link(other.pid)
            proc.exit(other.pid, BOOM)  # kills other, whose link signal kills us at once
            seen.append(proc.alive)
            try:
                await proc.receive(timeout=0)
            except ProcessExited as exc:
                seen.append(exc.reason)

        pid = node.spawn(worker, link_to=watcher.pid)
        msg = await watcher.receive(timeout=1)
        return msg, pid, seen

    msg, pid, seen = run(body)
    assert msg == (EXIT, pid, BOOM)
    assert seen == [False, BOOM]


def test_receive_timeout_in_a_process(run):
    async def body(node):
        watcher = node.mailbox(trap_exit=True)

        async def waits(proc):
            try:
                await proc.receive(timeout=0.01)
            except ReceiveTimeout:
                raise ProcessExit(Atom("timeout")) from None

        pid = node.spawn(waits, link_to=watcher.pid)
        return await watcher.receive(timeout=1), pid

    msg, pid = run(body)
    assert msg == (EXIT, pid, Atom("timeout"))


def test_system_exit_in_a_process_ends_it_and_propagates():
    seen = []

    async def body():
        node = Node()

        async def exits(proc):
            raise SystemExit(3)

        pid = node.spawn(exits)
        node.watch(pid, lambda p, reason: seen.append(reason))
        await asyncio.sleep(1)

    with pytest.raises(SystemExit):
        asyncio.run(body())
    assert seen == [(Atom("python_error"), "SystemExit", "3")]


def test_crash_report_names_the_function(run, caplog):
    async def failing_worker(proc):
        raise KeyError("k")

    async def body(node):
        node.spawn(failing_worker)
        await settle()

    with caplog.at_level(logging.ERROR, logger="pyfabric.runtime"):
        run(body)
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "failing_worker" in record.getMessage()


# -- model-based: exit cascades over random link graphs ---------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def link_graphs(draw):
    size = draw(st.integers(2, 8))
    pairs = [(a, b) for a in range(size) for b in range(a + 1, size)]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    trapping = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    start = draw(st.integers(0, size - 1))
    how = draw(st.sampled_from(["close", "exit2"]))
    reason = draw(st.sampled_from([NORMAL, KILL, BOOM]))
    return size, edges, trapping, start, how, reason


def model_cascade(size, edges, trapping, start, how, reason):
    """Expected exit reasons and EXIT messages, computed from the rules directly."""
    links = {i: set() for i in range(size)}
    for a, b in edges:
        links[a].add(b)
        links[b].add(a)
    dead: dict[int, object] = {}
    messages = {i: [] for i in range(size)}
    if how == "close":
        first = reason
    elif reason == KILL:
        first = KILLED
    elif trapping[start]:
        messages[start].append(("killer", reason))
        first = None
    elif reason == NORMAL:
        first = None
    else:
        first = reason
    pending = []
    if first is not None:
        dead[start] = first
        pending.append(start)
    while pending:
        d = pending.pop()
        for n in sorted(links[d]):
            links[n].discard(d)
            if n in dead:
                continue
            r = dead[d]
            if trapping[n]:
                messages[n].append((d, r))
            elif r != NORMAL:
                dead[n] = r
                pending.append(n)
        links[d].clear()
    return dead, messages


@settings(max_examples=200, deadline=None)
@given(case=link_graphs())
def test_exit_cascades_match_the_model(case):
    size, edges, trapping, start, how, reason = case
    expected_dead, expected_messages = model_cascade(*case)

    async def body():
        async with Node() as node:
            killer = node.mailbox()
            boxes = [node.mailbox(trap_exit=trapping[i]) for i in range(size)]
            index = {box.pid: i for box, i in zip(boxes, range(size))}
            index[killer.pid] = "killer"
            for a, b in edges:
                boxes[a].link(boxes[b].pid)
            if how == "close":
                boxes[start].close(reason)
            else:
                killer.exit(boxes[start].pid, reason)
            dead = {i: box.exit_reason for i, box in enumerate(boxes) if not box.alive}
            messages = {}
            for i, box in enumerate(boxes):
                got = []
                if box.alive:
                    while box.qsize():
                        tag, pid, why = await box.receive(timeout=0)
                        assert tag == EXIT
                        got.append((index[pid], why))
                messages[i] = got
            return dead, messages

    dead, messages = asyncio.run(body())
    assert dead == expected_dead
    for i in range(size):
        if i not in expected_dead:
            assert sorted(map(repr, messages[i])) == sorted(map(repr, expected_messages[i])), i
