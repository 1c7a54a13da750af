"""The harness itself (erlang_peer's fabric_peer_cli), as the interop suites rely on it."""

from __future__ import annotations

import pytest

from erlnode import ErlangNode
from interop_support import ERL_ARGS, require_erl


@pytest.mark.xfail(
    strict=True,
    reason="fabric_peer_cli bug: {events, T, Min} that times out leaves its take request pending "
    "in events_loop (and the fallback {take, 0} queued behind it is only served later), so the "
    "late {events, _} replies stay in the CLI process's mailbox and are returned by the next "
    "events commands: they answer with stale/empty lists. interop_support.Harness.events "
    "works around it by polling {events, T, 0}.",
)
def test_events_after_a_timed_out_wait_are_not_stale() -> None:
    """After an {events, T, Min} that timed out, later {events, T, 1} commands return the new events, not stale replies."""
    require_erl()
    with ErlangNode(extra_args=ERL_ARGS) as node:
        node.command("{register, coll, collector}")
        assert node.command("{events, 200, 1}") == "[]"  # times out: nothing happened yet
        node.command("{send, coll, first}")
        assert node.command("{events, 2000, 1}") == "[{collector,coll,first}]"
        node.command("{send, coll, second}")
        assert node.command("{events, 2000, 1}") == "[{collector,coll,second}]"
