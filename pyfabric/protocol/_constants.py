"""Constants of the protocol core: features, default limits, frame atoms, the plain encoding."""

from __future__ import annotations

from typing import Any

from ..etf import Atom, encode

__all__ = [
    "FEATURES",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_HANDSHAKE_FRAME",
    "DEFAULT_MAX_ERRORS",
    "DEFAULT_ERROR_WINDOW",
    "DEFAULT_MAX_PROXIES",
    "DEFAULT_MAX_EXPORTS",
    "MAX_PACKET",
    "DEFAULT_MAX_DEPTH",
    "MAX_ERROR_TEXT",
    "INTERNAL_ERROR",
    "DEFAULT_ACK_EVERY",
    "DEFAULT_ACK_DELAY",
    "DEFAULT_OUTBOX_FRAMES",
    "DEFAULT_OUTBOX_BYTES",
    "DEFAULT_MAX_CONFIRMS",
    "DEFAULT_CREDIT_WINDOW",
    "DEFAULT_CREDIT_BYTES",
    "DEFAULT_CREDIT_DEST",
    "DEFAULT_MAILBOX_HIGH",
    "DEFAULT_GRANT_EVERY",
    "DEFAULT_GRANT_DELAY",
    "plain",
]

FEATURES = frozenset(
    {"whereis", "link", "link_exit", "maps", "bitstrings", "ports", "funs", "heartbeat", "error", "session", "acks", "credit", "route", "global", "pg"}
)
"""The features of extension version 1 (docs/protocol.md section 3.5)."""

DEFAULT_MAX_FRAME = 64 * 1024 * 1024
"""Largest frame accepted after authentication (64 MiB: big messages, bounded memory)."""
DEFAULT_MAX_HANDSHAKE_FRAME = 16 * 1024
"""Largest frame accepted before authentication: every handshake frame is < 1 KiB, and
an unauthenticated peer must not make us buffer more."""
DEFAULT_MAX_ERRORS = 20
"""Dropped frames tolerated among the last :data:`DEFAULT_ERROR_WINDOW` received ones;
one more closes the connection with ``too_many_errors`` (docs/protocol.md section 9)."""
DEFAULT_ERROR_WINDOW = 200
"""The number of most recent received frames :data:`DEFAULT_MAX_ERRORS` counts over."""
DEFAULT_MAX_PROXIES = 100_000
"""Proxies (remote process ids the peer shipped) one connection's session may hold. A
received frame that would create one more is dropped with code ``limit``; a proxy is
released when the peer reports its process ``DEAD``."""
DEFAULT_MAX_EXPORTS = 100_000
"""Local pids one connection's session may have exported as ``{pr, Id}``. A command that
would export one more raises :class:`LocalProtocolError` (code ``limit``) and sends
nothing; an export is released when its process ends."""
MAX_PACKET = 0xFFFFFFFF
"""``{packet,4}``: a frame's length must fit in 32 bits."""
DEFAULT_MAX_DEPTH = 512
"""Nesting accepted in a received term: the payload rewriter and the encoder recurse per
level; 512 keeps well clear of Python's recursion limit while allowing any sane message."""
MAX_ERROR_TEXT = 300
"""Bytes of an ``{error, Code, Message}`` text we send or keep."""
INTERNAL_ERROR = "internal error while handling the frame"

# The `acks` feature (docs/protocol.md sections 11 and 13.2).
DEFAULT_ACK_EVERY = 64
"""Frames handled since our last ``{ack, N}`` after which we send the next one at once."""
DEFAULT_ACK_DELAY = 0.010
"""Seconds after the first frame handled since our last ack within which an ack is sent."""
DEFAULT_OUTBOX_FRAMES = 16_384
"""Unacknowledged sequenced frames a session keeps; a user command beyond it waits."""
DEFAULT_OUTBOX_BYTES = 16 * 1024 * 1024
"""Bytes of unacknowledged frames (lengths as in the 4-byte prefix) a session keeps."""
DEFAULT_MAX_CONFIRMS = 16_384
"""Confirmed sends (``mc``) issued and not answered per session; a further one waits
(docs/protocol.md 11.8)."""

# The `credit` feature (docs/protocol.md sections 12 and 13.2).
DEFAULT_CREDIT_WINDOW = 16_384
"""Messages in flight on a connection we grant the peer (announced in Offer / Accept)."""
DEFAULT_CREDIT_BYTES = 16 * 1024 * 1024
"""Bytes of those messages we grant the peer."""
DEFAULT_CREDIT_DEST = 1_024
"""Messages in flight to one destination we grant the peer."""
DEFAULT_MAILBOX_HIGH = 1_024
"""A local mailbox holding this many messages or more is not keeping up: credit for the
messages delivered to it is returned only once it holds fewer (12.3)."""
DEFAULT_GRANT_EVERY = 64
"""Returned messages after which we write a ``credit`` frame at once (12.4)."""
DEFAULT_GRANT_DELAY = 0.010
"""Seconds after the first return not granted within which a ``credit`` frame is written;
also the period of the recheck of mailboxes still owed credit."""

A_HELLO = Atom("hello")
A_CHALLENGE = Atom("challenge")
A_RESPONSE = Atom("response")
A_AUTH = Atom("auth")
A_SUCCESS = Atom("success")
A_FAILED = Atom("failed")
A_M = Atom("m")
A_DEAD = Atom("DEAD")
A_R = Atom("r")
A_WHEREIS = Atom("whereis")
A_WHEREIS_REPLY = Atom("whereis_reply")
A_LINK = Atom("link")
A_UNLINK = Atom("unlink")
A_EXIT2 = Atom("exit2")
A_LINK_EXIT = Atom("link_exit")
A_HEARTBEAT = Atom("heartbeat")
A_HEARTBEAT_ACK = Atom("heartbeat_ack")
A_ERROR = Atom("error")
A_ACK = Atom("ack")
A_MC = Atom("mc")
A_MC_RESULT = Atom("mc_result")
A_CREDIT = Atom("credit")
A_OK = Atom("ok")
A_UNDEFINED = Atom("undefined")
# The `route` feature (docs/protocol.md section 16).
A_WHEREIS_NODE = Atom("whereis_node")
A_NODES = Atom("nodes")
A_NODES_REPLY = Atom("nodes_reply")
A_NODEUP = Atom("nodeup")
A_NODEDOWN = Atom("nodedown")
A_NOPROC = Atom("noproc")
A_NORMAL = Atom("normal")
A_NOCONNECTION = Atom("noconnection")
A_TRUE = Atom("true")
A_FALSE = Atom("false")


def plain(term: Any) -> bytes:
    """``term_to_binary/1`` as OTP 25 writes it (minor_version 1, never compressed)."""
    return encode(term, minor_version=1)
