"""The connection state machine, as one table (docs/protocol.md section 10).

Inputs are our caller's commands (``start``, ``send_message`` ...) and the kinds of
frame received (``recv:hello`` ...). ``fail`` is the core's own decision to close
(authentication failure, fatal protocol error). Nothing else in the package assigns a
state: :class:`ConnectionState` is the only owner.
"""

from __future__ import annotations

from ._errors import LocalProtocolError

__all__ = [
    "CLIENT",
    "SERVER",
    "IDLE",
    "AWAIT_HELLO",
    "AWAIT_CHALLENGE",
    "AWAIT_RESPONSE",
    "AWAIT_AUTH",
    "ESTABLISHED",
    "CLOSED",
    "ConnectionState",
]

CLIENT = "client"
SERVER = "server"

IDLE = "idle"  # client: constructed, hello not sent yet
AWAIT_HELLO = "await_hello"
AWAIT_CHALLENGE = "await_challenge"
AWAIT_RESPONSE = "await_response"
AWAIT_AUTH = "await_auth"
ESTABLISHED = "established"
CLOSED = "closed"

# Commands that are legal only once established, and keep the state.
_ESTABLISHED_COMMANDS = (
    "send_message",
    "link",
    "unlink",
    "exit_signal",
    "whereis",
    "reply_whereis",
    "whereis_node",
    "nodes",
    "reply_nodes",
    "node_notice",
    "global",
    "pg",
    "heartbeat",
    "send_deferred",
    "recv:frame",
)

# Legal in every state: ending a connection, and the runtime's broadcast of local
# process deaths (recorded for a later resume when not established).
_ANYWHERE = {"close": CLOSED, "connection_lost": CLOSED, "fail": CLOSED}


def _handshake(extra: dict[str, str | None]) -> dict[str, str | None]:
    table: dict[str, str | None] = {"handshake_timed_out": CLOSED, "process_exited": None}
    table.update(_ANYWHERE)
    table.update(extra)
    return table


_ESTABLISHED_ROW: dict[str, str | None] = dict.fromkeys(_ESTABLISHED_COMMANDS, ESTABLISHED)
_ESTABLISHED_ROW.update(_ANYWHERE, process_exited=ESTABLISHED)
_CLOSED_ROW: dict[str, str | None] = {"close": CLOSED, "connection_lost": CLOSED, "fail": CLOSED, "process_exited": CLOSED}

# TRANSITIONS[role][state][input] -> next state (None: stay in the same state).
TRANSITIONS: dict[str, dict[str, dict[str, str | None]]] = {
    CLIENT: {
        IDLE: _handshake({"start": AWAIT_CHALLENGE}),
        AWAIT_CHALLENGE: _handshake({"recv:challenge": AWAIT_AUTH}),
        AWAIT_AUTH: _handshake({"recv:auth": ESTABLISHED}),
        ESTABLISHED: dict(_ESTABLISHED_ROW),
        CLOSED: dict(_CLOSED_ROW),
    },
    SERVER: {
        AWAIT_HELLO: _handshake({"recv:hello": AWAIT_RESPONSE}),
        AWAIT_RESPONSE: _handshake({"recv:response": ESTABLISHED}),
        ESTABLISHED: dict(_ESTABLISHED_ROW),
        CLOSED: dict(_CLOSED_ROW),
    },
}

INITIAL = {CLIENT: IDLE, SERVER: AWAIT_HELLO}


class ConnectionState:
    """Owns the state of one connection; every change goes through :meth:`process`."""

    __slots__ = ("role", "state")

    def __init__(self, role: str) -> None:
        if role not in TRANSITIONS:
            raise ValueError(f"role must be 'client' or 'server', got {role!r}")
        self.role = role
        self.state = INITIAL[role]

    def check(self, event: str) -> None:
        """Raise LocalProtocolError if ``event`` is illegal now (naming role, state, event)."""
        if event not in TRANSITIONS[self.role][self.state]:
            raise LocalProtocolError(
                "illegal_state",
                f"can't handle {event!r} when role={self.role} and state={self.state}",
            )

    def process(self, event: str) -> str:
        """Apply ``event`` (checked as :meth:`check` does); return the new state."""
        table = TRANSITIONS[self.role][self.state]  # :meth:`check`, inlined: once per frame and command
        if event not in table:
            self.check(event)  # raises
        new = table[event]
        if new is not None:
            self.state = new
        return self.state
