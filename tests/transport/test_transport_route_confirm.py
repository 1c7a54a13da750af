"""A routed confirmed send is answered end to end (docs/protocol.md 16.8, issue 13): the
routing server answers C1 with C2's own result when the S-C2 hop has ``acks``, once the
message is written there when it has not, and with why C2's session ended when it ends
first; never at the moment the message is queued for a disconnected C2."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from transport_helpers import WAIT, arun, connect, start_server

from pyfabric import ANY, Atom
from pyfabric.protocol import FEATURES
from pyfabric.transport import SendRefused

C1 = Atom("c1@localhost")
C2 = Atom("c2@localhost")
NODEDOWN = Atom("nodedown")


async def hub(c2_options: dict[str, Any], **options: Any) -> tuple[Any, Any, Any]:
    server = await start_server(register_ping=False, routing=True, **options)
    c2 = await connect(server, node_name=C2, allowed=["inbox"], **c2_options)
    c1 = await connect(server, node_name=C1)
    return server, c1, c2


async def c2_gone(c1: Any, c2: Any) -> None:
    """Cut C2's connection and wait until the server has noticed (its nodedown to C1)."""
    box = c1.mailbox()
    await c1.monitor_node(C2, box.pid)
    c2.drop_connection()
    assert await box.receive(match=(NODEDOWN, ANY), timeout=WAIT) == (NODEDOWN, C2)
    box.close()


@pytest.mark.parametrize("c2_acks", [True, False], ids=["c2_acks", "c2_without_acks"])
def test_answered_when_c2_has_it_not_when_it_is_queued(c2_acks: bool) -> None:
    async def body() -> None:
        features = FEATURES if c2_acks else FEATURES - {"acks", "credit"}
        # C2 comes back 0.5 to 1 s after its cut: meanwhile the message waits at the server.
        server, c1, c2 = await hub({"features": features, "backoff_initial": 1.0, "backoff_max": 1.0})
        try:
            assert ("acks" in c2.features) is c2_acks and "acks" in c1.features
            inbox = c2.mailbox("inbox")
            await c2_gone(c1, c2)
            task = asyncio.get_running_loop().create_task(c1.send_confirmed(("inbox", C2), "late", timeout=3 * WAIT))
            if c2_acks:
                assert await inbox.receive(timeout=WAIT) == "late"
                # C2's mailbox has it; its result has not crossed two hops back yet.
                assert not task.done()
            else:
                await asyncio.sleep(0.2)  # C2 is still away (its first retry is >= 0.5 s later)
                assert not task.done()
                assert await inbox.receive(timeout=WAIT) == "late"
            assert await task is None
        finally:
            for thing in (c1, c2, server):
                await thing.close()

    arun(body)


def test_answered_with_why_c2s_session_ended() -> None:
    async def body() -> None:
        server, c1, c2 = await hub({"reconnect": False}, session_timeout=0.3)
        try:
            await c2_gone(c1, c2)
            with pytest.raises(SendRefused) as refused:
                await c1.send_confirmed(("inbox", C2), "never", timeout=WAIT)
            assert refused.value.code == "session_expired"
            # A node that is gone by now: refused at once.
            with pytest.raises(SendRefused) as gone:
                await c1.send_confirmed(("inbox", C2), "never", timeout=WAIT)
            assert gone.value.code == "noproc"
        finally:
            for thing in (c1, c2, server):
                await thing.close()

    arun(body)
