"""`acks` between pyfabric and a real erlang_peer through a relay on 127.0.0.1 that cuts the
connection every 100-300 ms under load (docs/protocol.md section 11): numbered messages are
echoed with 0 lost, 0 duplicated, 0 reordered, checked at both ends.

(a) Python client -> erlang_peer server: Python ``Client.send`` to an Erlang echo process,
    which checks the order it receives and echoes each number back.
(b) erlang_peer client -> Python server: an Erlang process sends through its proxy of a
    Python echo process, alternating ``Proxy ! Msg`` and ``fabric_peer:send/2`` bursts, and
    checks the order of the echoes; the Python echo process checks the order it receives.

A cut is either a reset (both sockets aborted, bytes in flight lost both ways) or half-open
(the relay stops forwarding and resets only the client's socket: the server still holds the
old, silent connection when the client resumes, docs/protocol.md 11.5). Each run also
checks that both sides agreed on ``acks``, that at least 5 cuts hit a live connection and
that the client came back after each; both sides also agreed on ``credit`` (its windows in
the erlang_peer connection's info), so the runs are flow-controlled too. The control runs (a) with a Python client that does
not offer ``acks`` and checks that the cuts then lose messages. The short runs are part of
``make test`` (a few seconds each); the ``fuzz`` ones cut for ``FUZZ_SECONDS`` / 10.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from typing import Any

import pytest
from erlnode import erl_string
from interop_support import HOST, SECRET, WAIT, Harness, erl, erl_session  # noqa: F401

import pyfabric
from pyfabric import ANY, Atom, MessagesUndelivered, ReceiveTimeout
from pyfabric.protocol import FEATURES

log = logging.getLogger(__name__)
ECHO = Atom("echo")
WINDOW = 2_000
"""Messages sent and not echoed yet, at most: traffic keeps flowing during the cuts."""
BURST = 200
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "20"))
MIN_CUTS = 5


class CuttingRelay:
    """A TCP relay on 127.0.0.1 in front of ``target_port`` that can cut what it carries.

    ``reset()`` aborts both sockets of every open connection; ``half_open()`` stops
    forwarding and aborts only the client-facing socket, leaving the server's side open
    and silent. New connections are forwarded normally."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._live: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[asyncio.Task[None]]]] = []
        self._frozen: list[asyncio.StreamWriter] = []

    async def start(self) -> CuttingRelay:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self.reset()
        for writer in self._frozen:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pumps = [asyncio.create_task(self._pump(reader, up_writer)), asyncio.create_task(self._pump(up_reader, writer))]
        self._live.append((writer, up_writer, pumps))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()
        except (ConnectionError, OSError):
            writer.transport.abort()

    def reset(self) -> int:
        """Abort both sockets of every open connection; return how many were cut."""
        live, self._live = self._live, []
        for client_side, server_side, pumps in live:
            for task in pumps:
                task.cancel()
            client_side.transport.abort()
            server_side.transport.abort()
        return len(live)

    def half_open(self) -> int:
        """Stop forwarding and abort only the client's sockets; return how many were cut."""
        live, self._live = self._live, []
        for client_side, server_side, pumps in live:
            for task in pumps:
                task.cancel()
            client_side.transport.abort()
            self._frozen.append(server_side)
        return len(live)


async def cutter(relay: CuttingRelay, stop: asyncio.Event, counts: dict[str, int], seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.1, 0.3))
        if stop.is_set():
            return
        if rng.random() < 0.5:
            counts["reset"] += relay.reset() > 0
        else:
            counts["half_open"] += relay.half_open() > 0


def cuts(counts: dict[str, int]) -> int:
    return counts["reset"] + counts["half_open"]


# -- (a) Python client -> erlang_peer server ---------------------------------------------------

# An Erlang echo process: `{From, N}` -> `From ! {echo, N}`, counting what it received and
# every number that was not the one expected next (a loss, a duplicate or a reordering).
_ERL_ACHO = (
    "case whereis(acho) of undefined -> ok; Old -> unregister(acho), exit(Old, kill) end, "
    "A = spawn(fun() -> (fun L(Got, Bad) -> receive "
    "{stats, F} -> F ! {acho_stats, Got, Bad}, L(Got, Bad); "
    "{From, N} when is_integer(N) -> From ! {echo, N}, "
    "L(Got + 1, if N =:= Got -> Bad; true -> Bad + 1 end) end end)(0, 0) end), "
    "register(acho, A), ok."
)


# Whether each established server-side connection on the node agreed on acks (and on credit,
# with its windows both ways: credit_mine and credit_peer in its info).
_ERL_SERVER_FEATURES = (
    "[lists:member(<<\"acks\">>, maps:get(features, I)) andalso lists:member(<<\"credit\">>, maps:get(features, I)) "
    "andalso is_tuple(maps:get(credit_mine, I, none)) andalso is_tuple(maps:get(credit_peer, I, none)) "
    "|| P <- processes(), "
    "proc_lib:translate_initial_call(P) =:= {fabric_peer_server, init, 1}, "
    "I <- [catch fabric_peer:info(P)], is_map(I), "
    "maps:get(role, I) =:= server, maps:get(state, I) =:= established]."
)


def _acho_stats(erl: Harness) -> tuple[int, int]:
    reply = erl.eval("acho ! {stats, self()}, receive {acho_stats, G, B} -> {G, B} after 5000 -> timeout end")
    m = re.fullmatch(r"\{(\d+),(\d+)\}", reply)
    assert m, reply
    return int(m.group(1)), int(m.group(2))


def python_to_erlang(erl: Harness, total: int, seconds: float, seed: int, acks: bool = True) -> dict[str, int]:
    """Run (a); with ``acks=False`` the Python client does not offer the feature (the
    control): then the run ends at the first stall, and the counts say what was echoed."""
    erl.eval(_ERL_ACHO)
    server, port = erl.start_server(["acho"])

    async def body() -> dict[str, int]:
        lost: list[MessagesUndelivered] = []
        relay = await CuttingRelay(port).start()
        counts = {"reset": 0, "half_open": 0}
        stop = asyncio.Event()
        features = None if acks else FEATURES - {"acks"}
        client = await pyfabric.aconnect(
            HOST, relay.port, SECRET, backoff_initial=0.02, backoff_max=0.2, on_undelivered=lost.append, features=features
        )
        try:
            assert ("acks" in client.features) is acks, client.features
            assert ("credit" in client.features) is acks, client.features  # credit needs acks (11.1)
            agreed = await erl.acmd("{eval, %s}" % erl_string(_ERL_SERVER_FEATURES))
            assert agreed == f"[{str(acks).lower()}]", (
                f"the erlang_peer server's connection: acks and credit agreed {agreed}, expected {acks}")
            box = client.mailbox()
            cut_task = asyncio.get_running_loop().create_task(cutter(relay, stop, counts, seed))
            got: list[int] = []
            deadline = time.monotonic() + seconds
            sent = 0
            stalled = False
            while not stalled and (sent < total or cuts(counts) < MIN_CUTS or time.monotonic() < deadline):
                for _ in range(BURST):
                    client.send(Atom("acho"), (box.pid, sent))
                    sent += 1
                await client.drain(timeout=30)
                while True:  # take what has arrived; wait while too many are unanswered
                    try:
                        msg = await box.receive((ECHO, ANY), timeout=(WAIT * 4 if acks else 1.0) if sent - len(got) > WINDOW else 0)
                    except ReceiveTimeout:
                        stalled = sent - len(got) > WINDOW
                        assert acks is False or not stalled, f"stalled: {sent} sent, {len(got)} echoed, {counts}"
                        break
                    got.append(msg[1])
            stop.set()
            await cut_task
            while len(got) < sent:
                try:
                    msg = await box.receive((ECHO, ANY), timeout=WAIT * 4 if acks else 1.0)
                except ReceiveTimeout:
                    if acks:
                        raise
                    break
                got.append(msg[1])
            counts["messages"] = sent
            counts["echoed"] = len(got)
            counts["in_order"] = got == list(range(sent))
            if not acks:
                return counts
            assert got == list(range(sent)), "echoes lost, duplicated or reordered at the Python client"
            try:  # nothing beyond the echoes counted (a late duplicate would show here)
                extra = await box.receive(timeout=0.2)
            except ReceiveTimeout:
                extra = None
            assert extra is None, f"unexpected message after the last echo: {extra!r}"
            counts["connections"] = relay.connections
            counts["reconnects"] = client.reconnects
            assert not lost, lost
            return counts
        finally:
            stop.set()
            await client.close()
            await relay.close()

    started = time.monotonic()
    try:
        counts = asyncio.run(asyncio.wait_for(body(), timeout=seconds * 4 + 120))
        received, out_of_order = _acho_stats(erl)
        counts["erl_received"], counts["erl_out_of_order"] = received, out_of_order
        if acks:
            assert (received, out_of_order) == (counts["messages"], 0), "erlang_peer echo saw messages lost, duplicated or reordered"
    finally:
        erl.cmd_raw(f"{{stop_server, {server}}}")
        erl.servers.remove(server)
    counts["ms"] = int((time.monotonic() - started) * 1000)
    return counts


# -- (b) erlang_peer client -> Python server ---------------------------------------------------

# An Erlang sender: numbers 0.. to the proxy in bursts, all with `Proxy ! Msg` (Mode bang) or
# all with `fabric_peer:send/2` (Mode send: never both in one run, since `!` goes through the
# proxy process and send/2 straight to the connection, Erlang itself does not order the two
# paths against each other), at most Window unanswered, until told `stop` and Total were sent;
# then waits for every echo and reports {done, Sent, Got, Bad} to the collector chaos_done.
_ERL_SENDER = (
    "Proxy = maps:get({handle}, get(handles)), Done = whereis(chaos_done), "
    "Total = {total}, Window = {window}, Burst = {burst}, "
    "Take = fun T(G, B, Need, Ms) when G >= Need -> {{G, B}}; "
    "T(G, B, Need, Ms) -> receive {{echo, N}} -> T(G + 1, if N =:= G -> B; true -> B + 1 end, Need, Ms) "
    "after Ms -> {{G, B}} end end, "
    "Send = fun(N) when {mode} =:= bang -> Proxy ! {{self(), N}}, ok; "
    "(N) -> ok = fabric_peer:send(Proxy, {{self(), N}}) end, "
    "case whereis(chaos_sender) of undefined -> ok; Old -> unregister(chaos_sender), exit(Old, kill) end, "
    "S = spawn(fun() -> (fun L(Sent, G, B, Stop) -> "
    "Stop2 = Stop orelse receive stop -> true after 0 -> false end, "
    "case Stop2 andalso Sent >= Total of "
    "true -> {{G2, B2}} = Take(G, B, Sent, 20000), Done ! {{done, Sent, G2, B2}}; "
    "false -> [Send(N) || N <- lists:seq(Sent, Sent + Burst - 1)], "
    "{{G2, B2}} = Take(G, B, Sent + Burst - Window, 20000), "
    "case Sent + Burst - G2 > Window of true -> Done ! {{stalled, Sent + Burst, G2, B2}}; "
    "false -> L(Sent + Burst, G2, B2, Stop2) end end end)(0, 0, 0, false) end), "
    "register(chaos_sender, S), ok."
)


def erlang_to_python(erl: Harness, total: int, seconds: float, seed: int, mode: str) -> dict[str, int]:
    async def echo_checked(proc: Any, seen: list[int]) -> None:
        while True:
            sender, n = await proc.receive((ANY, ANY))
            seen.append(n)
            proc.send(sender, (ECHO, n))

    async def body() -> dict[str, int]:
        lost: list[MessagesUndelivered] = []
        seen: list[int] = []
        server = await pyfabric.serve(HOST, 0, SECRET, allowed=["echo"], on_undelivered=lost.append)
        server.spawn(lambda proc: echo_checked(proc, seen), name="echo")
        relay = await CuttingRelay(server.port).start()
        counts = {"reset": 0, "half_open": 0}
        stop = asyncio.Event()
        conn = None
        try:
            await erl.acmd("{register, chaos_done, collector}")
            conn = int(re.search(r"\d+", await erl.acmd(
                '{connect, "%s", %d, "%s", #{reconnect_min => 20, reconnect_max => 200}}' % (HOST, relay.port, SECRET)
            )).group(0))  # type: ignore[union-attr]
            erl.conns.append(conn)
            info = await erl.acmd(f"{{info, {conn}}}")
            assert '<<"acks">>' in info, f"erlang_peer client did not agree on acks: {info}"
            assert '<<"credit">>' in info and re.search(r"credit_peer => \{\d+,\d+,\d+\}", info), (
                f"erlang_peer client did not agree on credit: {info}")
            py_conns = server.connections()
            assert py_conns and all({"acks", "credit"} <= set(c.features) for c in py_conns), (
                "the Python server did not agree on acks and credit")
            handle = int(re.search(r"handle => (\d+)", await erl.acmd(f"{{whereis, {conn}, echo}}")).group(1))  # type: ignore[union-attr]
            await erl.acmd("{eval, %s}" % erl_string(_ERL_SENDER.format(mode=mode, handle=handle, total=total, window=WINDOW, burst=BURST)))
            cut_task = asyncio.get_running_loop().create_task(cutter(relay, stop, counts, seed))
            deadline = time.monotonic() + seconds
            while cuts(counts) < MIN_CUTS or time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await erl.acmd("{send, chaos_sender, stop}")
            report = ""
            limit = time.monotonic() + 60
            while not report and time.monotonic() < limit:
                events = await erl.acmd("{events, 30000, 0}")
                report = events if events != "[]" else ""
                if not report:
                    await asyncio.sleep(0.05)
            stop.set()
            await cut_task
            m = re.fullmatch(r"\[\{collector,chaos_done,\{(\w+),(\d+),(\d+),(\d+)\}\}\]", report)
            assert m, f"no report from the Erlang sender: {report!r} (cuts {counts})"
            kind, sent, got, bad = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
            assert kind == "done", f"Erlang sender stalled: {sent} sent, {got} echoed, {counts}"
            assert seen == list(range(sent)), "messages lost, duplicated or reordered at the Python server"
            assert (got, bad) == (sent, 0), f"echoes lost, duplicated or reordered at the Erlang client: {sent} sent, {got} echoed, {bad} out of order"
            assert not lost, lost
            counts["messages"] = sent
            counts["connections"] = relay.connections
            return counts
        finally:
            stop.set()
            if conn is not None:
                await erl.acmd(f"{{close, {conn}}}")
                erl.conns.remove(conn)
            await relay.close()
            await server.close()

    started = time.monotonic()
    counts = asyncio.run(asyncio.wait_for(body(), timeout=seconds * 4 + 120))
    counts["ms"] = int((time.monotonic() - started) * 1000)
    return counts


# -- the tests ---------------------------------------------------------------------------------


def _check(counts: dict[str, int]) -> None:
    assert counts["messages"] >= 20_000, counts
    assert cuts(counts) >= MIN_CUTS, counts
    assert counts["connections"] > cuts(counts), counts  # each cut connection was replaced by a new one


def test_chaos_python_client_erlang_server_20000_messages_through_cuts(erl: Harness) -> None:
    counts = python_to_erlang(erl, 20_000, seconds=1.0, seed=11)
    log.info("chaos %s", counts)
    _check(counts)


@pytest.mark.parametrize("mode", ["bang", "send"])
def test_chaos_erlang_client_python_server_20000_messages_through_cuts(erl: Harness, mode: str) -> None:
    """Erlang ``Proxy ! Msg`` (bang) or ``fabric_peer:send/2`` (send) to a Python process."""
    counts = erlang_to_python(erl, 20_000, seconds=1.0, seed=12, mode=mode)
    log.info("chaos %s", counts)
    _check(counts)


def test_fuzz_chaos_python_client_erlang_server_long_run(erl: Harness) -> None:
    """FUZZ_SECONDS / 10 of cuts in ``make test`` (2 s), more with ``make fuzz``."""
    counts = python_to_erlang(erl, 20_000, seconds=max(1.0, FUZZ_SECONDS / 10), seed=random.randrange(1 << 30))
    log.info("chaos %s", counts)
    _check(counts)


def test_fuzz_chaos_erlang_client_python_server_long_run(erl: Harness) -> None:
    counts = erlang_to_python(erl, 20_000, seconds=max(1.0, FUZZ_SECONDS / 10), seed=random.randrange(1 << 30), mode=random.choice(["bang", "send"]))
    log.info("chaos %s", counts)
    _check(counts)


def test_control_without_acks_cuts_lose_messages(erl: Harness) -> None:
    """The control: the same run (a) with a Python client that does not offer ``acks``
    (version 1 without it, as with an original peer) loses messages in the cuts, so the runs
    above would notice a loss. Which direction loses depends on where each cut falls (requests
    on their way to the echo process, echoes on their way back, or both); the Python client,
    at the end of the round trip, always sees the loss."""
    counts = python_to_erlang(erl, 20_000, seconds=1.0, seed=11, acks=False)
    log.info("control %s", counts)
    assert cuts(counts) >= 1, counts
    assert counts["erl_received"] <= counts["messages"], counts  # the echo process never sees more than was sent
    assert not counts["in_order"] and counts["echoed"] < counts["messages"], counts


def test_erlang_client_clean_close_leaves_nothing_unconfirmed(erl: Harness) -> None:
    """An erlang_peer client closes right after a message from the Python server arrived,
    its ack not due yet (``ack_delay`` 5 s): ``fabric_peer:close/1`` acknowledges what it
    received first, so the Python server's kept session, ended by ``server.close()``, has
    nothing to report (docs/protocol.md 11.7)."""

    async def later(proc: Any) -> None:
        sender = await proc.receive()
        await asyncio.sleep(0.3)  # by then both sides have acknowledged everything else
        proc.send(sender, (ECHO, 1))

    async def body() -> list[MessagesUndelivered]:
        lost: list[MessagesUndelivered] = []
        server = await pyfabric.serve(HOST, 0, SECRET, allowed=["later"], on_undelivered=lost.append)
        server.spawn(later, name="later")
        try:
            conn = int(re.search(r"\d+", await erl.acmd(
                '{connect, "%s", %d, "%s", #{ack_delay => 5000}}' % (HOST, server.port, SECRET)
            )).group(0))  # type: ignore[union-attr]
            handle = int(re.search(r"handle => (\d+)", await erl.acmd(f"{{whereis, {conn}, later}}")).group(1))  # type: ignore[union-attr]
            got = await erl.acmd("{eval, %s}" % erl_string(
                f"P = maps:get({handle}, get(handles)), P ! self(), "
                "receive {echo, N} -> N after 5000 -> timeout end."
            ))
            assert got == "1", got
            await erl.acmd(f"{{close, {conn}}}")
        finally:
            await server.close()
        return lost

    lost = asyncio.run(asyncio.wait_for(body(), timeout=60))
    assert lost == [], lost
