"""Flood between pyfabric and a real erlang_peer (issue 12, docs/protocol.md 12): a sender
far faster than its receiver, with ``credit`` agreed.

(a) A Python client floods a slow Erlang process (2 ms per message) through an erlang_peer
    server; (b) an erlang_peer client floods a slow Python process of a pyfabric server,
    with ``fabric_peer:send/2`` (blocks) and with ``Proxy ! Msg`` (never blocks: the
    messages wait at the sender's side).

In each: both ends agreed on ``credit`` (read from each connection's info: the features and,
on the erlang_peer side, the windows), the receiving process's mailbox never held more than
``mailbox_high + credit_dest`` messages (the bound of 12.3, for one connection and one
destination; the receiving server is configured with small windows so that the bound is far
below the number sent), the sender was held back (when a blocking sender's loop ended, the
receiver had already taken all but at most that bound; when a ``!`` loop ended, more than the
bound was still on the sender's side), nothing was dropped or reported undelivered, and every
message arrived once, in order. Bounded: 2,000 messages per run, a few seconds each.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

import pytest
from erlnode import erl_string
from interop_support import HOST, SECRET, Harness, erl, erl_session  # noqa: F401

import pyfabric
from pyfabric import Atom, MessagesUndelivered

log = logging.getLogger(__name__)
N = 2_000
DELAY_MS = 2
CREDIT_DEST = 64
MAILBOX_HIGH = 100
BOUND = MAILBOX_HIGH + CREDIT_DEST
"""docs/protocol.md 12.3: from one connection, a destination holds at most this many."""
BURST = 50
DEADLINE = 120.0

# The slow Erlang receiver `slowp': DelayMs per message; in the public ETS table Tab it keeps
# how many it took, how many were not the one expected next, the longest mailbox it saw.
_ERL_SLOW = (
    "case whereis(slowp) of undefined -> ok; Old -> unregister(slowp), exit(Old, kill) end, "
    "Self = self(), "
    "P = spawn(fun() -> T = ets:new({tab}, [named_table, public]), "
    "ets:insert(T, [{{got, 0}}, {{bad, 0}}, {{peak, 0}}]), Self ! {{slow_ready, self()}}, "
    "(fun L(Got, Bad, Peak) -> receive M when is_integer(M) -> "
    "{{message_queue_len, Q}} = process_info(self(), message_queue_len), "
    "Peak1 = max(Peak, Q + 1), Bad1 = if M =:= Got -> Bad; true -> Bad + 1 end, "
    "ets:insert(T, [{{got, Got + 1}}, {{bad, Bad1}}, {{peak, Peak1}}]), "
    "timer:sleep({delay}), L(Got + 1, Bad1, Peak1) end end)(0, 0, 0) end), "
    "receive {{slow_ready, P}} -> ok after 5000 -> exit(slow_not_ready) end, "
    "register(slowp, P), ok."
)

# The features and credit windows of each established server connection on the node.
_ERL_SERVER_CREDIT = (
    "[{lists:member(<<\"credit\">>, maps:get(features, I)), maps:get(credit_mine, I, none), "
    "maps:get(credit_peer, I, none)} || P <- processes(), "
    "proc_lib:translate_initial_call(P) =:= {fabric_peer_server, init, 1}, "
    "I <- [catch fabric_peer:info(P)], is_map(I), "
    "maps:get(role, I) =:= server, maps:get(state, I) =:= established]."
)

# An Erlang sender: 0..Total-1 to the proxy, with fabric_peer:send/2 (send) or `!` (bang),
# then {flood_sent, Total} to the collector flood_done.
_ERL_SENDER = (
    "Proxy = maps:get({handle}, get(handles)), Done = whereis(flood_done), "
    "Send = fun(M) when {mode} =:= bang -> Proxy ! M, ok; (M) -> ok = fabric_peer:send(Proxy, M) end, "
    "spawn(fun() -> [Send(M) || M <- lists:seq(0, {total} - 1)], Done ! {{flood_sent, {total}}} end), ok."
)


def _stats(erl: Harness, tab: str) -> dict[str, int]:
    reply = erl.eval(f"maps:from_list(ets:tab2list({tab}))")
    return {k: int(v) for k, v in re.findall(r"(\w+) => (\d+)", reply)}


def test_python_client_floods_a_slow_erlang_process(erl: Harness) -> None:
    tab = f"flood_{uuid.uuid4().hex[:12]}"
    erl.eval(_ERL_SLOW.format(tab=tab, delay=DELAY_MS))
    server, port = erl.start_server(["slowp"], credit_dest=str(CREDIT_DEST), mailbox_high=str(MAILBOX_HIGH))

    async def flood() -> dict[str, Any]:
        lost: list[MessagesUndelivered] = []
        client = await pyfabric.aconnect(HOST, port, SECRET, on_undelivered=lost.append)
        try:
            assert {"acks", "credit"} <= set(client.features), client.features
            agreed = await erl.acmd("{eval, %s}" % erl_string(_ERL_SERVER_CREDIT))
            m = re.fullmatch(r"\[\{true,\{(\d+),(\d+),(\d+)\},\{(\d+),(\d+),(\d+)\}\}\]", agreed)
            assert m, f"the erlang_peer server's connection did not agree on credit: {agreed}"
            assert int(m.group(3)) == CREDIT_DEST, agreed  # the window it grants us per destination
            peak_pending = 0
            for i in range(N):
                client.send(Atom("slowp"), i)
                if i % BURST == BURST - 1:
                    peak_pending = max(peak_pending, client.statistics()["pending_sends"])
                    await client.drain(timeout=DEADLINE)
            await client.drain(timeout=DEADLINE)
            stats = client.statistics()
            return {"peak_pending": peak_pending, "dropped": stats["dropped_overflow"], "lost": lost}
        finally:
            await client.close()

    try:
        sent = asyncio.run(asyncio.wait_for(flood(), timeout=DEADLINE))
        # the send loop is over: all but at most BOUND were already taken by the receiver
        at_end = _stats(erl, tab)
        assert at_end["got"] >= N - BOUND, (at_end, sent)
        assert sent["peak_pending"] > 0, sent  # sends waited for credit at the sender
        limit = time.monotonic() + DEADLINE
        while (final := _stats(erl, tab))["got"] < N and time.monotonic() < limit:
            time.sleep(0.1)
        assert final["got"] == N and final["bad"] == 0, final  # every message once, in order
        assert 1 <= final["peak"] <= BOUND, final
        assert sent["dropped"] == 0 and not sent["lost"], sent
        log.info("python -> erlang_peer flood: taken %d of %d when the send loop ended, peak mailbox %d (bound %d), "
                 "peak pending sends %d", at_end["got"], N, final["peak"], BOUND, sent["peak_pending"])
    finally:
        erl.cmd_raw(f"{{stop_server, {server}}}")
        erl.servers.remove(server)


@pytest.mark.parametrize("mode", ["send", "bang"])
def test_erlang_client_floods_a_slow_python_process(erl: Harness, mode: str) -> None:
    async def body() -> None:
        lost: list[MessagesUndelivered] = []
        seen: list[int] = []
        peak = [0]

        async def slow(proc: Any) -> None:
            while True:
                msg = await proc.receive()
                peak[0] = max(peak[0], proc.qsize() + 1)
                seen.append(msg)
                await asyncio.sleep(DELAY_MS / 1000)

        server = await pyfabric.serve(HOST, 0, SECRET, allowed=["slowpy"], on_undelivered=lost.append,
                                      credit_dest=CREDIT_DEST, mailbox_high=MAILBOX_HIGH)
        server.spawn(slow, name="slowpy")
        conn = None
        try:
            await erl.acmd("{register, flood_done, collector}")
            await erl.acmd("{events, 0, 0}")
            conn = int(re.search(r"\d+", await erl.acmd('{connect, "%s", %d, "%s", #{}}' % (HOST, server.port, SECRET))).group(0))  # type: ignore[union-attr]
            erl.conns.append(conn)
            info = await erl.acmd(f"{{info, {conn}}}")
            assert '<<"credit">>' in info, f"erlang_peer client did not agree on credit: {info}"
            windows = re.search(r"credit_peer => \{(\d+),(\d+),(\d+)\}", info)
            assert windows and int(windows.group(3)) == CREDIT_DEST, info  # the Python server's grant per destination
            py_conns = server.connections()
            assert py_conns and all({"acks", "credit"} <= set(c.features) for c in py_conns), "the Python server did not agree on credit"
            handle = int(re.search(r"handle => (\d+)", await erl.acmd(f"{{whereis, {conn}, slowpy}}")).group(1))  # type: ignore[union-attr]
            await erl.acmd("{eval, %s}" % erl_string(_ERL_SENDER.format(handle=handle, mode=mode, total=N)))
            report = await erl.acmd("{events, 60000, 1}", timeout=90)
            taken = len(seen)  # what the receiver had taken once the sender's loop was over
            assert report == f"[{{collector,flood_done,{{flood_sent,{N}}}}}]", report
            if mode == "send":
                assert taken >= N - BOUND, (taken, N)  # each blocking send waited for credit
            else:
                assert taken < N - BOUND, (taken, N)  # the rest waited at the sender (never at the receiver)
            limit = time.monotonic() + DEADLINE
            while len(seen) < N and time.monotonic() < limit:
                await asyncio.sleep(0.05)
            assert seen == list(range(N)), f"{len(seen)} received, lost, duplicated or reordered"
            assert 1 <= peak[0] <= BOUND, peak[0]
            await asyncio.sleep(0.1)
            assert len(seen) == N, len(seen)
            info = await erl.acmd(f"{{info, {conn}}}")
            assert "dropped_overflow => 0" in info, info
            assert not lost, lost
            log.info("erlang_peer (%s) -> python flood: taken %d of %d when the send loop ended, peak mailbox %d (bound %d)",
                     mode, taken, N, peak[0], BOUND)
        finally:
            if conn is not None:
                await erl.acmd(f"{{close, {conn}}}")
                erl.conns.remove(conn)
            await server.close()

    asyncio.run(asyncio.wait_for(body(), timeout=DEADLINE + 60))
