"""The harness itself (erlang_peer's fabric_peer_cli), as the interop suites rely on it."""

from __future__ import annotations

from erlnode import ErlangNode
from interop_support import ERL_ARGS, require_erl


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
        # Two timed-out waits in a row do not corrupt the next ones either.
        assert node.command("{events, 100, 1}") == "[]"
        assert node.command("{events, 100, 3}") == "[]"
        node.command("{send, coll, third}")
        assert node.command("{events, 2000, 1}") == "[{collector,coll,third}]"
        node.command("{send, coll, fourth}")
        assert node.command("{events, 2000, 1}") == "[{collector,coll,fourth}]"
