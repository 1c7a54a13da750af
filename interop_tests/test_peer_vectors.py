"""Replay the original implementation's frames (conformance/legacy) against our Erlang server.

A raw socket client speaks the legacy handshake (md5 of challenge + secret) and replays the
C->S frames; replies are compared with the original server's S->C frames (after undoing
compression, so only the terms matter). Frames that crashed the original are dropped and
the connection survives; bad handshakes get ``{auth, failed}`` and a close.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import zlib

import pytest
from conformance_corpus import LEGACY_DIR
from erlnode import ErlangCommandError, ErlangNode  # noqa: F401  (re-exported for readers)

SECRET = "secret"


VECTORS = LEGACY_DIR


def vector(prefix: str) -> bytes:
    (path,) = VECTORS.glob(prefix + "_*.bin")
    return path.read_bytes()


def plain(payload: bytes) -> bytes:
    """The uncompressed ETF of a payload (131 80 Size zlib -> 131 ...)."""
    if payload[:2] == b"\x83P":
        size = struct.unpack(">I", payload[2:6])[0]
        body = zlib.decompress(payload[6:])
        assert len(body) == size
        return b"\x83" + body
    return payload


class Raw:
    """A {packet,4} client over a plain socket."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def recv(self, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        (n,) = struct.unpack(">I", self._exact(4))
        return self._exact(n)

    def nothing(self, timeout: float = 0.3) -> None:
        self.sock.settimeout(timeout)
        with pytest.raises(socket.timeout):
            self.sock.recv(1)

    def closed(self, timeout: float = 5.0) -> list[bytes]:
        """Read until the server closes; return the frames seen before."""
        frames = []
        while True:
            try:
                frames.append(self.recv(timeout))
            except (ConnectionError, ConnectionResetError):
                return frames

    def close(self) -> None:
        self.sock.close()


def challenge_text(frame: bytes) -> str:
    # {challenge, "32 hex"}: 131 104 2 100 0 9 "challenge" 107 0 32 <32 bytes>
    head = b"\x83h\x02d\x00\tchallengek\x00\x20"
    assert frame.startswith(head) and len(frame) == len(head) + 32, frame
    return frame[len(head):].decode("ascii")


def response_frame(challenge: str, secret: str) -> bytes:
    digest = hashlib.md5((challenge + secret).encode("latin-1")).hexdigest().encode("ascii")
    return b"\x83h\x02d\x00\x08responsek\x00\x20" + digest


def legacy_login(port: int, secret: str = SECRET) -> Raw:
    raw = Raw(port)
    raw.send(vector("01"))
    raw.send(response_frame(challenge_text(raw.recv()), secret))
    assert raw.recv() == vector("04")
    return raw


SIMPLE_SERVER = ('{eval, "register(simple_server, spawn(fun L() -> receive {F, M} when is_pid(F) '
                 '-> F ! {pong, self(), M}, L(); _ -> L() end end)), ok."}')


@pytest.fixture(scope="module")
def node():
    with ErlangNode() as n:
        n.command(SIMPLE_SERVER)
        n.port = n.start_server(SECRET, allowed=["simple_server"], allow_legacy_auth="true")
        yield n


def test_replies_match_the_original(node):
    """07->08, 10->11, 12->13, 14->15, 16->17, 34->35: our replies are the original's terms."""
    raw = legacy_login(node.port)
    for c2s, s2c in [("07", "08"), ("10", "11"), ("12", "13"), ("14", "15"), ("16", "17"),
                     ("34", "35")]:
        raw.send(vector(c2s))
        assert plain(raw.recv()) == plain(vector(s2c)), (c2s, s2c)
    raw.send(vector("09"))          # non-tuple payload: delivered, no reply
    raw.nothing()
    raw.close()


def test_frames_that_crashed_the_original_are_dropped(node):
    """33, 44-50, 27-29, 31, 32: no reply, the connection keeps working."""
    raw = legacy_login(node.port)
    raw.send(vector("07"))
    raw.recv()
    for v in ["33", "44", "45", "46", "47", "48", "49", "50", "27", "28", "29", "31", "32"]:
        raw.send(vector(v))
    raw.nothing()
    raw.send(vector("14"))
    assert plain(raw.recv()) == plain(vector("15"))
    raw.close()


def test_unknown_pl_is_an_exited_pid(node):
    """51: {pl,777} becomes an exited pid, echoed as a new {pr,N} then DEAD {pr,N} noproc."""
    raw = legacy_login(node.port)
    raw.send(vector("07"))
    raw.recv()
    raw.send(vector("51"))
    reply = plain(raw.recv())
    assert reply.startswith(b"\x83h\x03d\x00\x01ma\x01h\x02d\x00\x01th\x03d\x00\x04pong")
    dead = raw.recv()
    assert dead.startswith(b"\x83h\x03d\x00\x04DEADh\x02d\x00\x02pr")
    assert dead.endswith(b"d\x00\x06noproc")
    raw.close()


def test_r_frame_and_dead(node):
    """36 creates the proxy for id 5, 37->38 uses it, 39 ends it; nothing else comes back."""
    raw = legacy_login(node.port)
    raw.send(vector("36"))
    raw.nothing(0.2)
    raw.send(vector("37"))
    assert plain(raw.recv()) == plain(vector("38"))
    raw.send(vector("39"))
    raw.nothing(0.2)
    raw.close()


@pytest.mark.parametrize("v", ["40", "41", "42"])
def test_bad_hellos_close(node, v):
    """40-42 as first frame: the server closes that connection (the original crashed)."""
    raw = Raw(node.port)
    raw.send(vector(v))
    assert raw.closed() == []


@pytest.mark.parametrize("v", ["05", "43"])
def test_bad_responses_get_auth_failed(node, v):
    """05 (wrong secret) and 43 (too short): {auth, failed} (vector 06), then close."""
    raw = Raw(node.port)
    raw.send(vector("01"))
    challenge_text(raw.recv())
    raw.send(vector(v))
    assert raw.closed() == [vector("06")]


def test_legacy_auth_refused_by_default(node):
    """A server with default options refuses a correct MD5 login with {auth, failed}."""
    reply = node.command('{start_server, #{port => 0, secret => "secret"}}')
    port = int(reply.split("port => ")[1].rstrip("}"))
    raw = Raw(port)
    raw.send(vector("01"))
    raw.send(response_frame(challenge_text(raw.recv()), SECRET))
    assert raw.closed() == [vector("06")]


def test_server_survives_everything(node):
    """After all of the above a fresh legacy client is served."""
    raw = legacy_login(node.port)
    raw.send(vector("07"))
    assert plain(raw.recv()) == plain(vector("08"))
    raw.close()
