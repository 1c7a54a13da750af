"""Helpers for the protocol tests: vectors, connection factories, in-memory pairs and a
hand-written legacy endpoint that speaks exactly what PROTOCOL.md describes."""

from __future__ import annotations

import hashlib
import itertools
import struct
from typing import Any

from conformance_corpus import legacy_paths, legacy_vectors

from pyfabric.etf import Atom, Pid, decode, encode
from pyfabric.protocol import Connection

VECTORS = legacy_vectors()
VECTOR_NAMES = {int(p.name[:2]): p.name for p in legacy_paths()}

CHALLENGE_02 = "ce7e5a220e0749da5543bce7f8d953fb"
CLI = Atom("cli@vm")
SRV = Atom("srv@vm")


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def split_frames(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    assert pos == len(data)
    return out


class PidFactory:
    """Makes distinct pids on one node: proxies, dead substitutes, local processes."""

    def __init__(self, node: Atom, start: int = 100) -> None:
        self.node = node
        self._ids = itertools.count(start)
        self.dead: set[Pid] = set()

    def new(self) -> Pid:
        return Pid(self.node, next(self._ids), 0, 1)

    def proxy(self, remote_id: int) -> Pid:
        return self.new()

    def dead_pid(self, local_id: int) -> Pid:
        pid = self.new()
        self.dead.add(pid)
        return pid

    def is_alive(self, pid: Pid) -> bool:
        return pid not in self.dead


def fixed_random(*chunks: bytes):
    """A ``random_bytes`` that returns ``chunks`` in order, then counts."""
    queue = list(chunks)
    counter = itertools.count(1)

    def random_bytes(n: int) -> bytes:
        if queue:
            data = queue.pop(0)
            assert len(data) == n, (len(data), n)
            return data
        return next(counter).to_bytes(4, "big") * (n // 4) + b"\0" * (n % 4)

    return random_bytes


def make_conn(role: str, secret: bytes = b"secret", *, node: Atom | None = None, pids: PidFactory | None = None, **kw: Any) -> Connection:
    node = node or (CLI if role == "client" else SRV)
    pids = pids or PidFactory(node)
    kw.setdefault("new_proxy_pid", pids.proxy)
    kw.setdefault("new_dead_pid", pids.dead_pid)
    kw.setdefault("is_alive", pids.is_alive)
    conn = Connection(role, secret, node_name=node, **kw)
    conn.pids = pids  # type: ignore[attr-defined]
    return conn


def drain(conn: Connection) -> list[Any]:
    return conn.events()


class Pair:
    """Two connections wired back to back in memory (h11's ConnectionPair idea)."""

    def __init__(self, client: Any, server: Any) -> None:
        self.client = client
        self.server = server
        self.events: dict[str, list[Any]] = {"client": [], "server": []}

    def pump(self, *, byte_by_byte: bool = False) -> None:
        moved = True
        while moved:
            moved = False
            for src, dst, name in ((self.client, self.server, "server"), (self.server, self.client, "client")):
                data = src.data_to_send()
                if data:
                    moved = True
                    if byte_by_byte:
                        for i in range(len(data)):
                            dst.receive_data(data[i : i + 1])
                    else:
                        dst.receive_data(data)
                self.events[name].extend(dst.events())

    def take(self, side: str) -> list[Any]:
        events, self.events[side] = self.events[side], []
        return events


def ours_pair(client_kw: dict | None = None, server_kw: dict | None = None, *, start: bool = True) -> Pair:
    client = make_conn("client", **(client_kw or {}))
    server = make_conn("server", **(server_kw or {}))
    pair = Pair(client, server)
    if start:
        client.start()
        pair.pump()
    return pair


A = Atom


class LegacyEndpoint:
    """The original implementation's side of the protocol, byte-exact per PROTOCOL.md.

    It is deliberately dumb: it encodes exactly as the original (plain term_to_binary
    with minor_version 1 for handshake/DEAD, compressed for m) and records what it gets.
    """

    def __init__(self, role: str, secret: bytes = b"secret", challenge: str = CHALLENGE_02) -> None:
        self.role = role
        self.secret = secret
        self.challenge = challenge
        self.out = bytearray()
        self.buf = b""
        self.received: list[Any] = []
        self.state = "await_hello" if role == "server" else "idle"
        self.closed = False

    def start(self) -> None:
        assert self.role == "client"
        self._send(encode((A("hello"), "localhost"), minor_version=1))
        self.state = "await_challenge"

    def _send(self, payload: bytes) -> None:
        self.out += frame(payload)

    def send_term(self, term: Any, *, compressed: bool = False) -> None:
        self._send(encode(term, minor_version=1, compressed=compressed))

    def data_to_send(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def receive_data(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = struct.unpack(">I", self.buf[:4])
            if len(self.buf) < 4 + n:
                return
            payload, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
            self._on_frame(payload)

    def _on_frame(self, payload: bytes) -> None:
        term = decode(payload, safe=False)
        self.received.append(term)
        if self.state == "await_hello":
            assert term[0] == A("hello")
            self._send(encode((A("challenge"), self.challenge), minor_version=1))
            self.state = "await_response"
        elif self.state == "await_response":
            expected = hashlib.md5(self.challenge.encode() + self.secret).hexdigest()
            ok = term[0] == A("response") and term[1] == expected
            self._send(encode((A("auth"), A("success" if ok else "failed")), minor_version=1))
            self.state = "established" if ok else "closed"
            self.closed = not ok
        elif self.state == "await_challenge":
            if len(term) != 2:
                raise AssertionError(f"original client crashes on {term!r}")
            response = hashlib.md5(term[1].encode() + self.secret).hexdigest()
            self._send(encode((A("response"), response), minor_version=1))
            self.state = "await_auth"
        elif self.state == "await_auth":
            self.state = "established" if term == (A("auth"), A("success")) else "closed"

    def events(self) -> list[Any]:
        return []
