"""Registered names: Erlang register/2, unregister/1, whereis/1, registered/0 rules."""

from __future__ import annotations

import asyncio

import pytest
from runtime_helpers import run, settle  # noqa: F401

from pyfabric.etf import Atom
from pyfabric.runtime import NameTaken, NoProcess, NotRegistered, ProcessError, ProcessExited


def test_register_whereis_and_send_by_name(run):
    async def body(node):
        mb = node.mailbox()
        node.register("server", mb.pid)
        assert node.whereis("server") == mb.pid
        assert node.whereis(Atom("server")) == mb.pid
        assert mb.registered_name == Atom("server")
        node.send("server", 1)
        node.send(Atom("server"), 2)
        mb.send("server", 3)
        return [await mb.receive(timeout=0) for _ in range(3)], node.registered()

    msgs, names = run(body)
    assert msgs == [1, 2, 3]
    assert names == [Atom("server")]


def test_a_name_is_held_by_one_process(run):
    async def body(node):
        a, b = node.mailbox(), node.mailbox()
        a.register("x")
        with pytest.raises(NameTaken) as info:
            b.register("x")
        assert info.value.holder == a.pid and info.value.name == Atom("x")
        with pytest.raises(NameTaken):
            node.mailbox(name="x")

        async def never(proc):
            raise AssertionError("must not run")

        before = len(node.processes())
        with pytest.raises(NameTaken):
            node.spawn(never, name="x")
        assert len(node.processes()) == before
        return True

    assert run(body)


def test_a_process_holds_at_most_one_name(run):
    async def body(node):
        a = node.mailbox(name="first")
        with pytest.raises(NameTaken) as info:
            node.register("second", a.pid)
        assert info.value.current == Atom("first") and info.value.holder is None
        assert node.whereis("second") is None
        return True

    assert run(body)


def test_re_registering_the_same_name_for_the_same_pid_is_an_error_as_in_erlang(run):
    async def body(node):
        a = node.mailbox(name="n")
        with pytest.raises(NameTaken):
            a.register("n")
        return True

    assert run(body)


def test_unregister_and_unknown_names(run):
    async def body(node):
        a = node.mailbox(name="n")
        node.unregister("n")
        assert node.whereis("n") is None
        assert a.registered_name is None
        with pytest.raises(NotRegistered):
            node.unregister("n")
        with pytest.raises(NotRegistered) as info:
            node.send("n", "msg")
        assert info.value.name == Atom("n")
        a.register("m")  # free again to take another name
        return node.registered()

    assert run(body) == [Atom("m")]


def test_names_are_released_when_the_process_exits(run):
    async def body(node):
        a = node.mailbox(name="svc")
        a.close()
        assert node.whereis("svc") is None

        async def worker(proc):
            return None

        pid = node.spawn(worker, name="svc2")
        assert node.whereis("svc2") == pid
        await settle()
        assert node.whereis("svc2") is None
        b = node.mailbox(name="svc")  # reusable
        return b.registered_name

    assert run(body) == Atom("svc")


def test_register_rules_for_dead_pids_proxies_and_bad_names(run):
    class Handle:
        def deliver(self, msg): ...
        def link_added(self, pid): ...
        def link_removed(self, pid): ...
        def exit_signal(self, pid, reason): ...

    async def body(node):
        a = node.mailbox()
        a.close()
        with pytest.raises(NoProcess):
            node.register("dead", a.pid)
        with pytest.raises(ProcessExited):
            a.register("dead")
        proxy = node.new_proxy(Handle())
        with pytest.raises(ProcessError, match="proxy"):
            node.register("remote", proxy)
        with pytest.raises(ValueError):
            node.register("undefined", node.mailbox().pid)
        with pytest.raises(TypeError):
            node.register(42, node.mailbox().pid)
        with pytest.raises(TypeError):
            node.whereis(42)
        return node.registered()

    assert run(body) == []


def test_registered_names_in_order(run):
    async def body(node):
        for name in ["c", "a", "b"]:
            node.mailbox(name=name)
        await asyncio.sleep(0)
        return node.registered()

    assert run(body) == [Atom("c"), Atom("a"), Atom("b")]
