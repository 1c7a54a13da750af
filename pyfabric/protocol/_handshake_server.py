"""The server's side of the handshake (docs/protocol.md sections 2 and 3), sans-IO.

:class:`ServerHandshake` answers the client's hello with a challenge and checks its
response; it returns the frames to send and fills in an :class:`Agreement`. It raises
:class:`HandshakeFailure` for anything wrong (the connection then sends ``{auth, failed}``
and closes). It never touches the state table or a socket.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from ..etf import Atom, DecodeError, decode
from . import _handshake as hs
from ._config import ConnectionConfig
from ._constants import A_AUTH, A_CHALLENGE, A_SUCCESS, plain
from ._error_policy import HandshakeFailure
from ._route import RouteHooks, node_from_bin
from ._session import Session

__all__ = ["ServerHandshake"]

log = logging.getLogger("pyfabric.protocol")


class ServerHandshake:
    """Hello -> challenge, response -> auth, for one accepted connection."""

    def __init__(
        self,
        config: ConnectionConfig,
        node_name: Atom,
        *,
        random_bytes: Callable[[int], bytes],
        find_session: Callable[[bytes], Session | None] | None,
        peer: str,
        route: RouteHooks | None = None,
    ) -> None:
        self.config = config
        self.node_name = node_name
        self.agreed = hs.Agreement()
        self._random_bytes = random_bytes
        self._find_session = find_session
        self._route = route
        self._peer = peer
        self._limits = config.handshake_limits()
        self._transcript: list[bytes] = []  # F1 (hello), F2 (challenge)
        self._offer_features: frozenset[str] = frozenset()
        self._legacy_challenge = ""

    def on_hello(self, raw: bytes, name: Any) -> bytes:
        """The client's ``{hello, Name}`` (frame ``raw``): our challenge frame."""
        config = self.config
        agreed = self.agreed
        client_version = hs.parse_ext_hello(name)
        if client_version is not None:
            agreed.mode = "extended"
            agreed.version = min(client_version, hs.EXT_VERSION)
            # `global` and `pg` are an erlang_peer server's: a pyfabric server never offers them (17.1, 18.1).
            offered = (config.features if self._route is not None else config.features - {"route"}) - {"global", "pg"}
            features = sorted(hs.feature_rule(offered))
            offer = {
                b"version": agreed.version,
                b"features": [f.encode() for f in features],
                b"node": self.node_name.name.encode("utf-8"),
                b"max_frame": config.max_frame,
                b"heartbeat": config.heartbeat_interval,
            }
            if "credit" in features:
                offer.update(hs.credit_keys(config))
            if "route" in features and self._route is not None:
                offer[b"route_heartbeat"] = self._route.heartbeat
            self._offer_features = frozenset(features)
            frame = plain((A_CHALLENGE, self._random_bytes(32), offer))
        else:
            agreed.mode = "legacy"
            self._legacy_challenge = self._random_bytes(16).hex()
            frame = plain((A_CHALLENGE, self._legacy_challenge))
        self._transcript = [raw, frame]
        return frame

    def on_response(self, raw: bytes, term: tuple[Any, ...]) -> bytes:
        """The client's response: our auth frame (the handshake is then complete)."""
        if self.agreed.mode == "legacy":
            return self._legacy_response(term)
        if len(term) != 3 or type(term[1]) is not bytes or type(term[2]) is not bytes:
            raise HandshakeFailure("extended response must be {response, Mac, AcceptBin}")
        secret = self.config.secret
        mac, accept_bin = term[1], term[2]
        hello, challenge = self._transcript
        if not hmac.compare_digest(mac, hs.client_mac(secret, hello, challenge, accept_bin)):
            raise HandshakeFailure("wrong secret (client MAC does not verify)")
        try:
            accept = decode(accept_bin, limits=self._limits)
        except DecodeError as exc:
            raise HandshakeFailure(f"AcceptBin is not a valid term: {exc}") from None
        accept = hs.binary_key_map(accept)
        if accept is None:
            raise HandshakeFailure("Accept is not a map with binary keys")
        features = hs.feature_list(accept.get(b"features"))
        node = hs.node_atom(accept.get(b"node"))
        max_frame = hs.non_negative_int(accept.get(b"max_frame"))
        heartbeat = hs.non_negative_int(accept.get(b"heartbeat"))
        resume = accept.get(b"resume")
        if features is None or node is None or not max_frame or heartbeat is None:
            raise HandshakeFailure("Accept lacks features, node, max_frame or heartbeat")
        if not set(features) <= self._offer_features:
            raise HandshakeFailure(f"accepted features {sorted(set(features) - self._offer_features)} were not offered")
        if resume is not None and type(resume) is not bytes:
            raise HandshakeFailure("Accept resume is not a binary")
        if hs.feature_rule(features) != frozenset(features):
            raise HandshakeFailure(
                "accepted 'acks' without 'session', 'credit' without 'acks' or 'route' without 'heartbeat' "
                "(docs/protocol.md 11.1, 16.1)"
            )
        if "credit" in features:
            self.agreed.peer_windows = hs.peer_windows(accept)
            if self.agreed.peer_windows is None:
                raise HandshakeFailure("Accept lacks valid credit windows (docs/protocol.md 12.1)")
        if "route" in features and self._route is not None and not 1 <= heartbeat <= self._route.heartbeat:
            raise HandshakeFailure(f"accepted 'route' with a heartbeat of {heartbeat} ms, not 1..{self._route.heartbeat} (docs/protocol.md 16.1)")
        if "route" in features and self._route is not None and node_from_bin(accept.get(b"node")) is None:
            raise HandshakeFailure(f"accepted 'route' with the node name {node.name!r}: a client node is name@host (docs/protocol.md 16.1)")
        agreed = self.agreed
        agreed.features = frozenset(features)
        agreed.peer_node = node
        agreed.peer_max_frame = max_frame
        agreed.peer_heartbeat = heartbeat
        if "session" in agreed.features:
            found = None
            if resume is not None and self._find_session is not None:
                found = self._find_session(resume)
            acks = "acks" in agreed.features
            if found is not None and not found.attached and found.id == resume:
                received = accept.get(b"received")
                outbox = found.outbox
                count = received if outbox is not None and outbox.in_range(received) else None
                same = (outbox is None) == (not acks) and (found.credit is None) == ("credit" not in agreed.features)
                if same and (outbox is None or count is not None):
                    agreed.session = found
                    agreed.resumed = True
                    agreed.peer_received = count if count is not None else 0
                else:
                    # Counts out of range or features differ: the old session ends
                    # (docs/protocol.md 11.6); the transport ends it on this refusal.
                    log.warning("peer %s: session cannot be resumed losslessly; starting a new one", self._peer)
                    agreed.resume_refused = "not_resumable"
                    agreed.refused_id = resume
            elif resume is not None:
                agreed.resume_refused = "unknown_session"
                agreed.refused_id = resume
        if "route" in agreed.features and self._route is not None:
            resumed_session = agreed.session if agreed.resumed else None
            if not self._route.claim_node(node, resumed_session):
                self._refuse_node(node, hello, challenge, raw)
        if "session" in agreed.features and agreed.session is None:
            agreed.session = Session(self._random_bytes(16))
        info: dict[bytes, Any] = {}
        if agreed.session is not None:
            info[b"session"] = agreed.session.id
        info[b"resumed"] = agreed.resumed
        if "acks" in agreed.features:
            # Keys of `acks` go only to a peer that agreed on it (docs/protocol.md 11.1).
            if agreed.resumed:
                info[b"received"] = agreed.session.outbox.received  # type: ignore[union-attr]
            elif agreed.resume_refused is not None:
                info[b"resume_refused"] = agreed.resume_refused.encode()
        info_bin = plain(info)
        server_mac = hs.server_mac(secret, hello, challenge, raw, info_bin)
        self._transcript = []
        return plain((A_AUTH, A_SUCCESS, server_mac, info_bin))

    def _refuse_node(self, node: Atom, hello: bytes, challenge: bytes, response: bytes) -> None:
        """The node name is in use (docs/protocol.md 16.1): a verifiable refusal, then close."""
        agreed = self.agreed
        agreed.session = None
        agreed.resumed = False
        info_bin = plain({b"resumed": False, b"refused": b"node_in_use"})
        mac = hs.server_mac(self.config.secret, hello, challenge, response, info_bin)
        self._transcript = []
        log.warning("peer %s: client node name %s refused: in use by another client", self._peer, node.name)
        raise HandshakeFailure(
            f"client node name {node.name!r} is in use by another client of this server",
            remote=False,
            code="node_in_use",
            reply=plain((A_AUTH, A_SUCCESS, mac, info_bin)),
        )

    def _legacy_response(self, term: tuple[Any, ...]) -> bytes:
        if len(term) != 2:
            raise HandshakeFailure("legacy response must be {response, R}")
        if not self.config.allow_legacy_auth:
            log.warning("peer %s: legacy client refused: MD5 authentication is disabled", self._peer)
            raise HandshakeFailure("legacy client refused: MD5 authentication is disabled", remote=False)
        response = term[1]
        expected = hs.legacy_response(self._legacy_challenge, self.config.secret)
        if not (hs.is_lower_hex(response, 32) and hmac.compare_digest(response.encode(), expected.encode())):
            raise HandshakeFailure("wrong secret (legacy response does not match)")
        return plain((A_AUTH, A_SUCCESS))
