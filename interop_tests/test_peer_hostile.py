"""A hostile Python client against our Erlang server: random and mutated frames (bounded).

While hostile connections send garbage, a well-behaved raw client keeps pinging; it must be
answered every time, and the server must still accept new clients at the end.
"""

from __future__ import annotations

import os
import random
import struct

import pytest

from erlnode import ErlangNode
from test_peer_vectors import Raw, legacy_login, plain, vector

SECRET = "secret"
ROUNDS = int(os.environ.get("PEER_FUZZ_ROUNDS", "40"))
SEEDS = ["07", "09", "14", "16", "18", "19", "20", "36", "37", "39", "46", "47", "48", "49",
         "50", "51"]


@pytest.fixture(scope="module")
def node():
    with ErlangNode() as n:
        n.command("{start_demo, [ping]}")
        n.command('{eval, "register(simple_server, spawn(fun L() -> receive {F, M} when '
                  'is_pid(F) -> F ! {pong, self(), M}, L(); _ -> L() end end)), ok."}')
        # These hostile clients fail authentication on purpose, many times from 127.0.0.1:
        # per-address throttling (max_auth_failures) would refuse the later tests' clients.
        n.port = n.start_server(SECRET, allowed=["ping", "simple_server"],
                                allow_legacy_auth="true", max_frame="65536", max_auth_failures="0")
        yield n


def mutate(rng: random.Random, frame: bytes) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 64))
    if kind == 1:
        return frame[: rng.randrange(1, len(frame) + 1)]
    if kind == 2:
        b = bytearray(frame)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 3:
        return b"\x83" + rng.randbytes(rng.randrange(1, 40))
    return frame + rng.randbytes(rng.randrange(1, 8))


def good_ping(good: Raw) -> None:
    good.send(vector("14"))
    assert plain(good.recv()) == plain(vector("15"))


def test_random_and_mutated_frames(node):
    rng = random.Random(20100)
    good = legacy_login(node.port)
    good.send(vector("07"))
    good.recv()
    for round_ in range(ROUNDS):
        bad = legacy_login(node.port)
        for _ in range(rng.randrange(1, 15)):
            bad.send(mutate(rng, vector(rng.choice(SEEDS))))
        if round_ % 5 == 0:
            # a length header far over max_frame: the server closes that connection
            bad.sock.sendall(struct.pack(">I", 1 << 30) + b"xx")
        bad.close()
        good_ping(good)
    good.close()


def test_hostile_handshakes(node):
    rng = random.Random(7)
    for _ in range(ROUNDS):
        raw = Raw(node.port)
        choice = rng.randrange(4)
        if choice == 0:
            raw.send(rng.randbytes(rng.randrange(1, 100)))
        elif choice == 1:
            raw.send(mutate(rng, vector("01")))
        elif choice == 2:
            raw.send(vector("01"))
            raw.recv()
            raw.send(mutate(rng, vector("03")))
        else:
            raw.sock.sendall(struct.pack(">I", 1 << 20))   # over the 16 KiB handshake limit
        raw.close()
    good = legacy_login(node.port)
    good.send(vector("07"))
    assert plain(good.recv()) == plain(vector("08"))
    good.close()


def test_server_counted_errors_and_still_serves(node):
    info = node.command(f"{{info, {node.server_id}}}")
    assert "errors =>" in info
    good = legacy_login(node.port)
    good_ping_frame = vector("07")
    good.send(good_ping_frame)
    assert plain(good.recv()) == plain(vector("08"))
    good.close()
