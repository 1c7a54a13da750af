"""The client's side of the handshake (docs/protocol.md sections 2 and 3), sans-IO.

:class:`ClientHandshake` makes the hello, answers the server's challenge (legacy MD5 or
the extended offer, asking to resume ``resume_from`` when it can) and checks the server's
auth result; it returns the frames to send and fills in an :class:`Agreement`. It raises
:class:`HandshakeFailure` for anything wrong. It never touches the state table or a socket.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from ..etf import Atom, DecodeError, decode
from . import _handshake as hs
from ._config import ConnectionConfig
from ._constants import A_FAILED, A_FALSE, A_HELLO, A_RESPONSE, A_SUCCESS, A_TRUE, plain
from ._error_policy import HandshakeFailure
from ._rewrite import describe
from ._session import Session

__all__ = ["ClientHandshake"]

_LEGACY_REFUSED = (
    "the server is an original (MD5-only) fabric peer and legacy authentication is "
    "disabled; pass allow_legacy_auth=True to allow it (only on a trusted network "
    "or over TLS: MD5 authentication can be downgraded by an active attacker)"
)


class ClientHandshake:
    """Hello, challenge -> response, auth -> done, for one connection we opened."""

    def __init__(
        self,
        config: ConnectionConfig,
        node_name: Atom,
        *,
        random_bytes: Callable[[int], bytes],
        resume_from: Session | None,
    ) -> None:
        self.config = config
        self.node_name = node_name
        self.agreed = hs.Agreement()
        self.resume_from = resume_from
        self._random_bytes = random_bytes
        self._limits = config.handshake_limits()
        self._transcript: list[bytes] = []  # F1, F2, F3 as they travelled
        self._asked_resume: bytes | None = None

    def hello(self) -> bytes:
        """The hello frame: always the extended one (an original server ignores its
        Name, docs/protocol.md 3.1)."""
        nonce = self._random_bytes(32)
        frame = plain((A_HELLO, hs.ext_hello_name(hs.EXT_VERSION, nonce)))
        self._transcript = [frame]
        return frame

    def on_challenge(self, raw: bytes, term: tuple[Any, ...]) -> bytes:
        """The server's challenge (frame ``raw``): our response frame."""
        agreed = self.agreed
        config = self.config
        if len(term) == 2:
            challenge = term[1]
            if not config.allow_legacy_auth:
                raise HandshakeFailure(_LEGACY_REFUSED, remote=False)
            if type(challenge) is not str or not 0 < len(challenge) <= 1024 or not challenge.isascii():
                raise HandshakeFailure("legacy challenge is not a short ASCII string")
            agreed.mode = "legacy"
            return plain((A_RESPONSE, hs.legacy_response(challenge, config.secret)))
        if len(term) != 3:
            raise HandshakeFailure("challenge must be {challenge, C} or {challenge, Nonce, Offer}")
        nonce, offer = term[1], hs.binary_key_map(term[2])
        if type(nonce) is not bytes or len(nonce) != 32 or offer is None:
            raise HandshakeFailure("extended challenge needs a 32-byte nonce and a binary-keyed offer")
        version = offer.get(b"version")
        features = hs.feature_list(offer.get(b"features"))
        node = hs.node_atom(offer.get(b"node"))
        max_frame = hs.non_negative_int(offer.get(b"max_frame"))
        heartbeat = hs.non_negative_int(offer.get(b"heartbeat"))
        if type(version) is not int or not 1 <= version <= hs.EXT_VERSION:
            raise HandshakeFailure(f"server offered extension version {describe(version)}")
        if features is None or node is None or not max_frame or heartbeat is None:
            raise HandshakeFailure("offer lacks features, node, max_frame or heartbeat")
        agreed.mode = "extended"
        agreed.version = version
        # Reserved or unknown names in the offer are ignored (docs/protocol.md 3.5).
        agreed_features = sorted(hs.feature_rule(config.features.intersection(features)))
        agreed.features = frozenset(agreed_features)
        agreed.peer_node = node
        agreed.peer_max_frame = max_frame
        agreed.peer_heartbeat = heartbeat
        own_heartbeat = config.heartbeat_interval
        if "route" in agreed.features:
            # Our heartbeat is at most the server's route_heartbeat (docs/protocol.md 16.1).
            route_heartbeat = hs.non_negative_int(offer.get(b"route_heartbeat"))
            if not route_heartbeat:
                raise HandshakeFailure("offer has 'route' but no positive route_heartbeat")
            agreed.route_heartbeat = route_heartbeat
            own_heartbeat = min(own_heartbeat, route_heartbeat) if own_heartbeat > 0 else route_heartbeat
        agreed.heartbeat = own_heartbeat
        accept: dict[bytes, Any] = {
            b"features": [f.encode() for f in agreed_features],
            b"node": self.node_name.name.encode("utf-8"),
            b"max_frame": config.max_frame,
            b"heartbeat": own_heartbeat,
        }
        if "credit" in agreed.features:
            agreed.peer_windows = hs.peer_windows(offer)
            if agreed.peer_windows is None:
                raise HandshakeFailure("offer lacks valid credit windows (docs/protocol.md 12.1)")
            accept.update(hs.credit_keys(config))
        old = self.resume_from
        if "session" in agreed.features and old is not None and old.id is not None:
            accept[b"resume"] = old.id
            self._asked_resume = old.id
            if old.outbox is not None:
                accept[b"received"] = old.outbox.received
        accept_bin = plain(accept)
        hello = self._transcript[0]
        mac = hs.client_mac(config.secret, hello, raw, accept_bin)
        frame = plain((A_RESPONSE, mac, accept_bin))
        self._transcript = [hello, raw, frame]
        return frame

    def on_auth(self, term: tuple[Any, ...]) -> None:
        """The server's auth result; on success the agreement is complete (its ``session``
        chosen: the resumed one, or a new one, the old one's proxies in ``expired``)."""
        agreed = self.agreed
        if len(term) == 2 and term[1] == A_FAILED:
            raise HandshakeFailure("the server refused authentication (wrong secret?)")
        if agreed.mode == "legacy":
            if len(term) != 2 or term[1] != A_SUCCESS:
                raise HandshakeFailure(f"unexpected auth frame {describe(term)}")
            self._choose_session(None, resumed=False)
            return
        if len(term) != 4 or term[1] != A_SUCCESS or type(term[2]) is not bytes or type(term[3]) is not bytes:
            raise HandshakeFailure(f"unexpected auth frame {describe(term)}")
        mac, info_bin = term[2], term[3]
        hello, challenge, response = self._transcript
        if not hmac.compare_digest(mac, hs.server_mac(self.config.secret, hello, challenge, response, info_bin)):
            raise HandshakeFailure("the server could not prove it knows the secret (server MAC does not verify)")
        try:
            info = hs.binary_key_map(decode(info_bin, limits=self._limits))
        except DecodeError as exc:
            raise HandshakeFailure(f"InfoBin is not a valid term: {exc}") from None
        if info is None:
            raise HandshakeFailure("Info is not a map with binary keys")
        if "route" in agreed.features and info.get(b"refused") == b"node_in_use":
            # A routing server refuses our node name (docs/protocol.md 16.1); it closes.
            raise HandshakeFailure(
                f"the server refused our client node name {self.node_name.name!r}: another connected client uses it",
                remote=False,
                code="node_in_use",
            )
        session_id = info.get(b"session")
        resumed = info.get(b"resumed", A_FALSE)
        if resumed not in (A_TRUE, A_FALSE):
            raise HandshakeFailure("Info resumed is not a boolean")
        resumed = resumed == A_TRUE
        if "session" in agreed.features:
            if type(session_id) is not bytes or len(session_id) != 16:
                raise HandshakeFailure("Info lacks a 16-byte session id")
            if resumed and session_id != self._asked_resume:
                raise HandshakeFailure("server resumed a session we did not ask for")
        elif session_id is not None or resumed:
            raise HandshakeFailure("server sent a session although 'session' was not agreed")
        self._transcript = []
        refused = info.get(b"resume_refused")
        if "acks" in agreed.features and refused in (b"unknown_session", b"not_resumable"):
            agreed.resume_refused = refused.decode()
        old = self.resume_from
        if resumed and old is not None and (old.outbox is not None or "acks" in agreed.features):
            received = info.get(b"received")
            outbox = old.outbox
            if (
                outbox is None
                or "acks" not in agreed.features
                or (old.credit is None) == ("credit" in agreed.features)
                or not outbox.in_range(received)
            ):
                # Frames the outbox no longer holds, or never sent (docs/protocol.md 11.6).
                self._not_resumable(old)
                return
            agreed.peer_received = received
        self._choose_session(session_id if "session" in agreed.features else None, resumed=resumed)

    def _not_resumable(self, old: Session) -> None:
        agreed = self.agreed
        self.resume_from = None
        agreed.not_resumable = True
        agreed.expired = [(ident, pid) for ident, pid in old.proxies.items()]
        agreed.undelivered = old.undelivered("not_resumable", agreed.peer_node)
        old.expire()
        old.id = None  # the next connection starts a new session
        agreed.session = old

    def _choose_session(self, session_id: bytes | None, *, resumed: bool) -> None:
        agreed = self.agreed
        old = self.resume_from
        self.resume_from = None
        if resumed and old is not None:
            agreed.session = old
            agreed.resumed = True
            return
        new = Session(session_id)
        if old is not None:
            # The old session is gone on the server: its proxies are unreachable. With
            # `acks` its messages are reported (docs/protocol.md 11.7); without, what the
            # transport deferred moves on (its ids are checked again when sent).
            agreed.expired = [(ident, pid) for ident, pid in old.proxies.items()]
            reason = "not_resumable" if agreed.resume_refused == "not_resumable" else "session_expired"
            agreed.undelivered = old.undelivered(reason, agreed.peer_node)
            old.hand_over(new)
            old.expire()
        agreed.session = new
