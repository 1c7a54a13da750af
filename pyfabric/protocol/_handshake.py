"""Pure helpers of the two handshakes (docs/protocol.md sections 2 and 3).

Building and checking the handshake terms, the legacy MD5 response and the extended
HMAC-SHA256 transcript MACs. No state: the connection drives them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..etf import Atom, Pid
from ._constants import DEFAULT_MAX_FRAME
from ._events import MessagesUndelivered
from ._session import Session

__all__ = [
    "Agreement",
    "EXT_VERSION",
    "parse_ext_hello",
    "ext_hello_name",
    "legacy_response",
    "is_lower_hex",
    "client_mac",
    "server_mac",
    "lp",
    "feature_rule",
    "credit_keys",
    "peer_windows",
]

EXT_VERSION = 1
"""The extension version this implementation speaks (docs/protocol.md, version 1)."""

_EXT_HELLO = re.compile(r"fabric-ext:([0-9]+):([0-9a-f]{64})")
_LOWER_HEX = re.compile(r"[0-9a-f]+")
_CLIENT_LABEL = b"fabric-ext client\x00"
_SERVER_LABEL = b"fabric-ext server\x00"


@dataclass(slots=True)
class Agreement:
    """What a handshake settled, filled in as it goes (read by ``Connection.mode`` ...).

    ``session`` is the session the established connection uses; ``expired`` the (remote
    id, proxy) pairs of an old session the server did not resume (client only). With
    ``acks``: ``peer_received`` the peer's count of a resume, ``resume_refused`` /
    ``refused_id`` why a resume asked for was refused, ``undelivered`` the report of an
    old session that ended (client), ``not_resumable`` the client found the server's count
    out of range (docs/protocol.md 11.5, 11.6).
    """

    mode: str | None = None
    version: int = 0
    features: frozenset[str] = frozenset()
    peer_node: Atom | None = None
    peer_max_frame: int = DEFAULT_MAX_FRAME
    peer_heartbeat: int = 0
    session: Session | None = None
    resumed: bool = False
    expired: list[tuple[int, Pid]] = field(default_factory=list)
    peer_received: int = 0
    resume_refused: str | None = None
    refused_id: bytes | None = None
    undelivered: MessagesUndelivered | None = None
    not_resumable: bool = False
    peer_windows: tuple[int, int, int] | None = None  # with `credit`: what the peer grants us
    heartbeat: int = -1  # the interval we announced, ms (-1: our config's)
    route_heartbeat: int = 0  # with `route`: the server's route_heartbeat, ms (16.1)


def feature_rule(features: Iterable[str]) -> frozenset[str]:
    """``features`` without the ones whose prerequisite is missing: ``acks`` needs
    ``session``, ``credit`` needs ``acks`` (docs/protocol.md 11.1), ``route`` needs
    ``heartbeat`` (16.1)."""
    out = set(features)
    if "session" not in out:
        out.discard("acks")
    if "acks" not in out:
        out.discard("credit")
    if "heartbeat" not in out:
        out.discard("route")
    return frozenset(out)


_WINDOW_KEYS = (b"credit_window", b"credit_bytes", b"credit_dest")


def credit_keys(config: Any) -> dict[bytes, int]:
    """The windows we grant the peer, as Offer / Accept keys (docs/protocol.md 12.1)."""
    return {b"credit_window": config.credit_window, b"credit_bytes": config.credit_bytes, b"credit_dest": config.credit_dest}


def peer_windows(keys: dict[bytes, Any]) -> tuple[int, int, int] | None:
    """The peer's windows (window, bytes, dest) from its Offer / Accept, or None if one is
    missing or bad: integers >= 1, ``credit_dest <= credit_window`` (12.1)."""
    values = [keys.get(k) for k in _WINDOW_KEYS]
    window, nbytes, dest = (v if type(v) is int and v >= 1 else 0 for v in values)
    if not (window and nbytes and dest) or dest > window:
        return None
    return window, nbytes, dest


def ext_hello_name(max_version: int, client_nonce: bytes) -> str:
    """The ``Name`` of our client's hello: ``"fabric-ext:" ++ MaxVersion ++ ":" ++ hex(nonce)``."""
    return f"fabric-ext:{max_version}:{client_nonce.hex()}"


def parse_ext_hello(name: Any) -> int | None:
    """The client's MaxVersion if ``name`` is an extended hello, else None (legacy hello).

    Only a ``str`` matching the grammar exactly counts; a MaxVersion of 0 (no extension
    version at all) or absurdly long digits are treated as legacy too.
    """
    if type(name) is not str or len(name) > 96:
        return None
    match = _EXT_HELLO.fullmatch(name)
    if match is None:
        return None
    version = int(match.group(1))
    return version if version >= 1 else None


def legacy_response(challenge: str, secret: bytes) -> str:
    """``lowercase hex(md5(Challenge ++ Secret))`` as the original computes it (Latin-1)."""
    return hashlib.md5(challenge.encode("latin-1") + secret).hexdigest()  # noqa: S324 - the legacy protocol


def is_lower_hex(text: Any, length: int) -> bool:
    return type(text) is str and len(text) == length and _LOWER_HEX.fullmatch(text) is not None


def lp(data: bytes) -> bytes:
    """``<<(byte_size(X)):32/big, X/binary>>``."""
    return len(data).to_bytes(4, "big") + data


def client_mac(secret: bytes, hello: bytes, challenge: bytes, accept_bin: bytes) -> bytes:
    msg = _CLIENT_LABEL + lp(hello) + lp(challenge) + lp(accept_bin)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def server_mac(secret: bytes, hello: bytes, challenge: bytes, response: bytes, info_bin: bytes) -> bytes:
    msg = _SERVER_LABEL + lp(hello) + lp(challenge) + lp(response) + lp(info_bin)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def binary_key_map(value: Any) -> dict[bytes, Any] | None:
    """``value`` as a dict if it is a map with binary keys only (unknown keys kept)."""
    if not isinstance(value, dict) and type(value).__name__ != "FrozenDict":
        return None
    out: dict[bytes, Any] = {}
    for key, item in value.items():
        if type(key) is not bytes:
            return None
        out[key] = item
    return out


def feature_list(value: Any) -> list[str] | None:
    """A list of binaries decoded as UTF-8 names, or None if it is not one."""
    if type(value) is str:  # a charlist of small ints never is a list of binaries
        return None if value else []
    if type(value) is not list:
        return None
    names = []
    for item in value:
        if type(item) is not bytes:
            return None
        try:
            names.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return names


def non_negative_int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def node_atom(value: Any) -> Atom | None:
    if type(value) is not bytes:
        return None
    try:
        name = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not name or len(name) > 255:
        return None
    return Atom(name)
