"""Proxies through a fake RemoteHandle, and exit watchers (what a transport builds on)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from runtime_helpers import DOWN, EXIT, KILL, KILLED, NOCONNECTION, NOPROC, NORMAL, PROCESS, run, settle  # noqa: F401

from pyfabric.etf import Atom, Pid
from pyfabric.runtime import NoProcess, ProcessError, RemoteHandle

BOOM = Atom("boom")


class FakeHandle:
    """Records every call the runtime makes; optionally fails one kind of call."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail

    def _record(self, *call: Any) -> None:
        if call[0] == self.fail:
            raise RuntimeError(f"transport refused {call[0]}")
        self.calls.append(call)

    def deliver(self, msg: Any) -> None:
        self._record("deliver", msg)

    def link_added(self, local_pid: Pid) -> None:
        self._record("link_added", local_pid)

    def link_removed(self, local_pid: Pid) -> None:
        self._record("link_removed", local_pid)

    def exit_signal(self, from_pid: Pid, reason: Any) -> None:
        self._record("exit_signal", from_pid, reason)


def test_fake_handle_satisfies_the_protocol():
    assert isinstance(FakeHandle(), RemoteHandle)
    assert not isinstance(object(), RemoteHandle)


def test_proxy_pid_identity(run):
    async def body(node):
        h1, h2 = FakeHandle(), FakeHandle()
        p1, p2 = node.new_proxy(h1), node.new_proxy(h2)
        assert p1 != p2 and p1.node == node.name and p1.creation == node.creation
        table = {p1: "one", p2: "two"}
        same = Pid(p1.node, p1.id, p1.serial, p1.creation)  # the same value, rebuilt
        assert table[same] == "one" and hash(same) == hash(p1)
        assert node.proxy_handle(p1) is h1 and node.proxy_handle(node.mailbox().pid) is None
        assert node.is_alive(p1)
        with pytest.raises(TypeError):
            node.new_proxy(object())
        return True

    assert run(body)


def test_send_to_a_proxy_calls_deliver_and_errors_propagate(run):
    async def body(node):
        h = FakeHandle()
        proxy = node.new_proxy(h)
        mb = node.mailbox()
        mb.send(proxy, ("hello", 1))
        node.send(proxy, "direct")
        bad = node.new_proxy(FakeHandle(fail="deliver"))
        with pytest.raises(RuntimeError, match="refused deliver"):
            mb.send(bad, {"a": 1})
        return h.calls

    assert run(body) == [("deliver", ("hello", 1)), ("deliver", "direct")]


def test_link_and_unlink_with_a_proxy_call_the_handle(run):
    async def body(node):
        h = FakeHandle()
        proxy = node.new_proxy(h)
        mb = node.mailbox()
        mb.link(proxy)
        mb.link(proxy)  # already linked: no second frame
        mb.unlink(proxy)
        mb.unlink(proxy)
        return h.calls, mb.pid

    calls, pid = run(body)
    assert calls == [("link_added", pid), ("link_removed", pid)]


def test_failing_link_added_leaves_no_link(run):
    async def body(node):
        proxy = node.new_proxy(FakeHandle(fail="link_added"))
        mb = node.mailbox()
        with pytest.raises(RuntimeError):
            mb.link(proxy)
        return mb.statistics().links

    assert run(body) == 0


def test_exit2_on_a_proxy_is_forwarded_and_the_proxy_stays(run):
    async def body(node):
        h = FakeHandle()
        proxy = node.new_proxy(h)
        mb = node.mailbox()
        mb.exit(proxy, BOOM)
        mb.exit(proxy, KILL)
        return h.calls, mb.pid, node.is_alive(proxy)

    calls, pid, alive = run(body)
    assert calls == [("exit_signal", pid, BOOM), ("exit_signal", pid, KILL)]
    assert alive


def test_local_death_only_removes_the_link_to_a_proxy(run):
    async def body(node):
        h = FakeHandle()
        proxy = node.new_proxy(h)
        mb = node.mailbox()
        mb.link(proxy)
        mb.close(BOOM)
        return h.calls, mb.pid, node.is_alive(proxy)

    calls, pid, alive = run(body)
    assert calls == [("link_added", pid)]  # no unlink, no exit2: the DEAD notice says it
    assert alive


@pytest.mark.parametrize("reason", [BOOM, NOCONNECTION, NORMAL, (Atom("shutdown"), "x")])
def test_terminate_proxy_fires_links_and_monitors_with_the_reason(run, reason):
    async def body(node):
        proxy = node.new_proxy(FakeHandle())
        plain, trapper, watcher = node.mailbox(), node.mailbox(trap_exit=True), node.mailbox()
        plain.link(proxy)
        trapper.link(proxy)
        ref = watcher.monitor(proxy)
        assert node.terminate_proxy(proxy, reason) is True
        assert node.terminate_proxy(proxy, reason) is False  # duplicate DEAD: ignored
        exit_msg = await trapper.receive(timeout=0)
        down = await watcher.receive(timeout=0)
        return (plain.alive, plain.exit_reason), exit_msg, down, ref, proxy

    plain, exit_msg, down, ref, proxy = run(body)
    assert exit_msg == (EXIT, proxy, reason)
    assert down == (DOWN, ref, PROCESS, proxy, reason)
    assert plain == ((True, None) if reason == NORMAL else (False, reason))


def test_a_terminated_proxy_behaves_like_a_dead_pid(run):
    async def body(node):
        h = FakeHandle()
        proxy = node.new_proxy(h)
        node.terminate_proxy(proxy, BOOM)
        mb = node.mailbox()
        mb.send(proxy, "dropped")
        with pytest.raises(NoProcess):
            mb.link(proxy)
        ref = mb.monitor(proxy)
        mb.exit(proxy, KILL)
        return h.calls, await mb.receive(timeout=0), ref, proxy, node.proxy_handle(proxy)

    calls, down, ref, proxy, handle = run(body)
    assert calls == [] and handle is None
    assert down == (DOWN, ref, PROCESS, proxy, NOPROC)


def test_terminate_proxy_refuses_local_processes(run):
    async def body(node):
        mb = node.mailbox()
        with pytest.raises(ProcessError):
            node.terminate_proxy(mb.pid, BOOM)
        return mb.alive

    assert run(body)


def test_spawn_linked_to_a_proxy(run):
    async def body(node):
        h = FakeHandle()
        proxy = node.new_proxy(h)

        async def worker(proc):
            await proc.receive()

        pid = node.spawn(worker, link_to=proxy)
        await settle()
        node.terminate_proxy(proxy, BOOM)
        await settle()
        return h.calls, pid, node.is_alive(pid)

    calls, pid, alive = run(body)
    assert calls == [("link_added", pid)]
    assert not alive


def test_remote_link_unlink_and_exit_frames(run):
    async def body(node):
        h = FakeHandle()
        proxy = node.new_proxy(h)
        b = node.mailbox()
        assert node.remote_link(proxy, b.pid) is True
        assert b.statistics().links == 1
        assert node.remote_unlink(proxy, b.pid) is True
        assert node.remote_unlink(proxy, b.pid) is False
        assert node.remote_link(proxy, b.pid) is True
        node.terminate_proxy(proxy, BOOM)  # A died: B (linked, not trapping) dies too
        assert b.exit_reason == BOOM
        dead = node.mailbox()
        dead.close()
        p2 = node.new_proxy(h)
        assert node.remote_link(p2, dead.pid) is False  # B already gone: DEAD is on its way
        assert node.remote_link(p2, p2) is False
        return h.calls

    assert run(body) == []  # frames from the remote side never echo back


def test_remote_exit_applies_exit2_rules_with_the_proxy_as_sender(run):
    async def body(node):
        proxy = node.new_proxy(FakeHandle())
        plain, trapper, victim = node.mailbox(), node.mailbox(trap_exit=True), node.mailbox(trap_exit=True)
        assert node.remote_exit(proxy, plain.pid, NORMAL) is True
        assert plain.alive
        node.remote_exit(proxy, trapper.pid, BOOM)
        node.remote_exit(proxy, victim.pid, KILL)
        dead = node.mailbox()
        dead.close()
        assert node.remote_exit(proxy, dead.pid, BOOM) is False
        node.remote_exit(proxy, plain.pid, BOOM)
        return await trapper.receive(timeout=0), victim.exit_reason, plain.exit_reason, proxy

    msg, victim_reason, plain_reason, proxy = run(body)
    assert msg == (EXIT, proxy, BOOM)
    assert victim_reason == KILLED and plain_reason == BOOM


# -- watchers -------------------------------------------------------------------------------


def test_watch_calls_back_once_synchronously_at_exit(run):
    async def body(node):
        mb = node.mailbox()
        seen = []
        node.watch(mb.pid, lambda pid, reason: seen.append((pid, reason)))
        node.watch(mb.pid, lambda pid, reason: seen.append(("second", reason)))
        mb.close(BOOM)
        snapshot = list(seen)
        await settle()
        return snapshot, seen, mb.pid

    snapshot, seen, pid = run(body)
    assert snapshot == [(pid, BOOM), ("second", BOOM)]
    assert seen == snapshot


def test_watch_of_a_dead_pid_is_noproc_soon_not_inside_watch(run):
    async def body(node):
        mb = node.mailbox()
        mb.close()
        seen = []
        node.watch(mb.pid, lambda pid, reason: seen.append(reason))
        assert seen == []
        await settle()
        return seen

    assert run(body) == [NOPROC]


def test_unwatch(run):
    async def body(node):
        seen = []
        live = node.mailbox()
        dead = node.mailbox()
        dead.close()
        t1 = node.watch(live.pid, lambda pid, reason: seen.append("live"))
        t2 = node.watch(dead.pid, lambda pid, reason: seen.append("dead"))
        assert node.unwatch(t1) is True
        assert node.unwatch(t2) is True
        assert node.unwatch(t1) is False
        live.close()
        await settle()
        fired = node.mailbox()
        t3 = node.watch(fired.pid, lambda pid, reason: seen.append("fired"))
        fired.close()
        assert node.unwatch(t3) is False
        return seen

    assert run(body) == ["fired"]


def test_watcher_exceptions_are_logged_and_swallowed(run, caplog):
    async def body(node):
        mb = node.mailbox()
        seen = []

        def broken(pid, reason):
            raise ValueError("watcher bug")

        node.watch(mb.pid, broken)
        node.watch(mb.pid, lambda pid, reason: seen.append(reason))
        mb.close()
        return seen

    with caplog.at_level(logging.ERROR, logger="pyfabric.runtime"):
        assert run(body) == [NORMAL]
    assert any("watcher" in r.getMessage() for r in caplog.records)


def test_watch_a_proxy_and_order_of_messages_before_the_dead_notice(run):
    async def body(node):
        frames = []

        class Recorder(FakeHandle):
            def deliver(self, msg):
                frames.append(("m", msg))

        remote = node.new_proxy(Recorder())

        async def worker(proc):
            proc.send(remote, "last words")
            raise ProcessExit(BOOM)

        from pyfabric.runtime import ProcessExit

        pid = node.spawn(worker)
        node.watch(pid, lambda p, reason: frames.append(("DEAD", reason)))
        proxy_seen = []
        node.watch(remote, lambda p, reason: proxy_seen.append(reason))
        await settle()
        node.terminate_proxy(remote, NOCONNECTION)
        return frames, proxy_seen

    frames, proxy_seen = run(body)
    assert frames == [("m", "last words"), ("DEAD", BOOM)]
    assert proxy_seen == [NOCONNECTION]


def test_dead_pid_behaves_like_an_exited_process(run):
    async def body(node):
        ghost = node.dead_pid()
        assert ghost.node == node.name and not node.is_alive(ghost)
        mb = node.mailbox(trap_exit=True)
        mb.send(ghost, "nothing happens")
        mb.link(ghost)
        ref = mb.monitor(ghost)
        seen = []
        node.watch(ghost, lambda p, reason: seen.append(reason))
        await settle()
        return [await mb.receive(timeout=0) for _ in range(2)], ref, ghost, seen

    msgs, ref, ghost, seen = run(body)
    assert msgs == [(EXIT, ghost, NOPROC), (DOWN, ref, PROCESS, ghost, NOPROC)]
    assert seen == [NOPROC]


def test_remote_link_unlink_and_exit_to_a_proxy_are_passed_on(run):
    """A node relaying between two peers (a routing server, docs/protocol.md 16.4): a link or
    exit signal addressed to a proxy goes on through that proxy's handle."""

    async def body(node):
        from_peer, to_peer = FakeHandle(), FakeHandle()
        a = node.new_proxy(from_peer)
        b = node.new_proxy(to_peer)
        assert node.remote_link(a, b) is True
        assert node.remote_unlink(a, b) is True
        assert node.remote_unlink(a, b) is False  # nothing more to pass on
        assert node.remote_exit(a, b, BOOM) is True
        return from_peer.calls, to_peer.calls

    from_calls, to_calls = run(body)
    assert from_calls == []
    assert [call[0] for call in to_calls] == ["link_added", "link_removed", "exit_signal"]


# -- link_exit (docs/protocol.md 5.2) -------------------------------------------------------


class LinkExitHandle(FakeHandle):
    """A handle with the optional ``link_exit_signal`` (a transport that passes link_exit on)."""

    def link_exit_signal(self, from_pid: Pid, reason: Any) -> None:
        self._record("link_exit_signal", from_pid, reason)


def test_remote_link_exit_is_a_trappable_link_signal_and_ends_the_proxy(run):
    async def body(node):
        out = {}
        for label, trap in (("trapper", True), ("plain", False)):
            proxy = node.new_proxy(FakeHandle())
            box = node.mailbox(trap_exit=trap)
            ref = box.monitor(proxy) if trap else None
            assert node.remote_link_exit(proxy, box.pid, KILL) is True
            assert not node.is_alive(proxy)
            if trap:
                out[label] = (await box.receive(timeout=0), await box.receive(timeout=0), proxy, ref)
            else:
                out[label] = box.exit_reason
        ignored = node.new_proxy(FakeHandle())
        normal_box = node.mailbox()
        assert node.remote_link_exit(ignored, normal_box.pid, NORMAL) is True
        out["normal"] = (normal_box.alive, node.is_alive(ignored))
        return out

    out = run(body)
    exit_msg, down, proxy, ref = out["trapper"]
    assert exit_msg == (EXIT, proxy, KILL)  # kill, trappable: not turned into killed
    assert down == (DOWN, ref, PROCESS, proxy, KILL)
    assert out["plain"] == KILL  # not `killed`: a link signal, not exit/2
    assert out["normal"] == (True, False)


def test_remote_link_exit_with_a_real_link_signals_once(run):
    async def body(node):
        proxy = node.new_proxy(FakeHandle())
        box = node.mailbox(trap_exit=True)
        box.link(proxy)
        node.remote_link_exit(proxy, box.pid, KILL)
        first = await box.receive(timeout=0)
        more = box.queued()
        return first, more, proxy

    first, more, proxy = run(body)
    assert first == (EXIT, proxy, KILL) and more == []


def test_remote_link_exit_to_an_ended_process_is_ignored(run):
    async def body(node):
        proxy = node.new_proxy(FakeHandle())
        dead = node.mailbox()
        dead.close()
        return node.remote_link_exit(proxy, dead.pid, KILL), node.is_alive(proxy)

    assert run(body) == (False, True)


def test_remote_link_exit_to_a_proxy_is_passed_on_then_the_sender_proxy_ends(run):
    async def body(node):
        a = node.new_proxy(FakeHandle())
        with_feature = node.new_proxy(LinkExitHandle())
        without = node.new_proxy(FakeHandle())
        order = []
        node.watch(a, lambda pid, reason: order.append(("a ended", reason)))
        assert node.remote_link_exit(a, with_feature, KILL) is True
        a2 = node.new_proxy(FakeHandle())
        assert node.remote_link_exit(a2, without, KILL) is True
        return (
            node.proxy_handle(with_feature).calls,
            node.proxy_handle(without).calls,
            order,
            node.is_alive(a),
            node.is_alive(a2),
            a,
            a2,
        )

    with_calls, without_calls, order, a_alive, a2_alive, a, a2 = run(body)
    assert with_calls == [("link_exit_signal", a, KILL)]
    assert without_calls == [("exit_signal", a2, KILL)]  # a handle without it: exit_signal
    assert order == [("a ended", KILL)] and not a_alive and not a2_alive
