"""Fuzz erlang_peer's server from Python after the *extended* (HMAC-SHA256) handshake.

test_peer_hostile.py covers unauthenticated and legacy-authenticated garbage; here hostile
clients authenticate with the extended handshake (done by pyfabric's own protocol core),
agree on every feature, and then send random, mutated and structured nonsense frames,
including feature frames (whereis, link, exit2, heartbeat, error), floods of new
process ids, amplifying frames (compressed lists of millions of ``[]``) and large frames. A pyfabric client keeps pinging through it all, and new clients are still
accepted at the end. Scale: ``PYFABRIC_FUZZ_EXAMPLES`` (default 40; ``make fuzz``: thousands).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import zlib

import pytest
from erlnode import ErlangNode

import pyfabric
from pyfabric import ANY, Atom
from pyfabric.etf import Pid, encode
from pyfabric.protocol import Connection

HOST = "127.0.0.1"
SECRET = "fuzz-secret"
ROUNDS = int(os.environ.get("PYFABRIC_FUZZ_EXAMPLES", "40"))
WAIT = 5.0
ATOMS = [Atom(a) for a in "m DEAD r t pr pl po f whereis whereis_reply link unlink exit2 heartbeat heartbeat_ack error sink rex init undefined normal kill".split()]
TAGS = [Atom(a) for a in "m DEAD r whereis whereis_reply link unlink exit2 heartbeat heartbeat_ack error".split()]


@pytest.fixture(scope="module")
def node():
    with ErlangNode() as n:
        n.command("{start_demo, [ping]}")
        # The seed's ping crashes on {NotAPid, M} (its `From !` fails): hostile messages go to a sink.
        n.command('{eval, "register(sink, spawn(fun L() -> receive _ -> L() end end)), ok."}')
        n.port = n.start_server(SECRET, allowed=["ping", "sink"], max_frame="65536", max_errors="50")
        yield n


def term(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 5)
    if kind == 0:
        return rng.choice(ATOMS)
    if kind == 1:
        return rng.choice([0, 1, -1, 2**31, 2**64 + 3, -(2**70), rng.randrange(1, 10**6)])
    if kind == 2:
        return rng.randbytes(rng.randrange(0, 40))
    if kind == 3:
        return rng.choice(["", "x", "sink", "rex"])
    if kind == 4:
        return rng.choice([1.5, -0.0, 1e300])
    if kind == 5:
        return tuple(term(rng, depth + 1) for _ in range(rng.randrange(0, 5)))
    if kind == 6:
        return [term(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if kind == 7:
        return (rng.choice([Atom("pr"), Atom("pl"), Atom("t"), Atom("r"), Atom("po"), Atom("f")]), term(rng, depth + 1))
    return {rng.choice(ATOMS): term(rng, depth + 1) for _ in range(rng.randrange(0, 3))}


def frames(rng: random.Random) -> bytes:
    out = bytearray()
    for _ in range(rng.randrange(1, 12)):
        kind = rng.randrange(8)
        if kind == 0:
            body = encode((rng.choice(TAGS), *[term(rng) for _ in range(rng.randrange(0, 4))]))
        elif kind == 1:
            body = encode(term(rng))
        elif kind == 2:
            body = b"\x83" + rng.randbytes(rng.randrange(0, 60))
        elif kind == 3:  # a flood of new process ids
            body = encode((Atom("m"), Atom("sink"), [(Atom("pr"), rng.randrange(1, 10**9)) for _ in range(50)]))
        elif kind == 4:
            body = bytearray(encode((Atom("m"), Atom("sink"), (Atom("t"), (Atom("x"), 1)))))
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
            body = bytes(body)
        elif kind == 6:  # amplifying: a compressed list of up to 16M [] in a few KB
            n = rng.choice([1000, 1 << 16, 1 << 20, 1 << 24])
            plain_ = b"h\x03d\x00\x01md\x00\x04sinkl" + struct.pack(">I", n) + b"j" * n + b"j"
            body = b"\x83P" + struct.pack(">I", len(plain_)) + zlib.compress(plain_, 9)
            if len(body) > 65536:
                continue
        elif kind == 7:  # large (near the 64 KiB max_frame of this server), or a huge count
            body = rng.choice([encode((Atom("m"), Atom("sink"), rng.randbytes(65000))),
                               b"\x83l" + struct.pack(">I", rng.randrange(1 << 20, 1 << 32)) + b"j"])
        else:
            out += struct.pack(">I", rng.choice([65537, 1 << 30])) + b"\x83"
            break
        out += struct.pack(">I", len(body)) + body
    return bytes(out)


def extended_login(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=WAIT)
    ids = iter(range(1, 10**9))
    conn = Connection("client", SECRET, node_name="hostile@host", new_proxy_pid=lambda _i: Pid(Atom("hostile@host"), next(ids), 0, 0))
    conn.start()
    sock.sendall(conn.data_to_send())
    while conn.state != "established":
        data = sock.recv(65536)
        assert data, "the Erlang server closed during the extended handshake"
        conn.receive_data(data)
        conn.events()
        sock.sendall(conn.data_to_send())
    assert conn.mode == "extended" and "link" in conn.features
    return sock


def test_extended_authenticated_fuzz_keeps_the_erlang_server_serving(node: ErlangNode) -> None:
    async def body() -> None:
        async with await pyfabric.aconnect(HOST, node.port, SECRET) as good:
            box = good.mailbox()
            ping = await good.whereis("ping")
            rng = random.Random(2010)
            for round_ in range(ROUNDS):
                sock = await asyncio.to_thread(extended_login, node.port)
                try:
                    await asyncio.to_thread(sock.sendall, frames(rng))
                except OSError:
                    pass  # closed on us (frame_too_large, too_many_errors): allowed
                finally:
                    sock.close()
                good.send(ping, (box.pid, round_))
                assert (await box.receive(match=(ping, ANY), timeout=WAIT))[1] == (Atom("pong"), round_)
        # New clients are still accepted.
        async with await pyfabric.aconnect(HOST, node.port, SECRET) as late:
            assert await late.whereis("ping") is not None

    asyncio.run(body())
    assert "errors" in node.command(f"{{info, {node.server_id}}}")
