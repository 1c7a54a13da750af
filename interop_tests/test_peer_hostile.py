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


# --- Attacks of issue 11 against a real erlang_peer server with its default limits -------
#
# Each asserts that the server survives, that a bystander (a legacy client pinging through
# it all) keeps being served, and that memory and time stay within generous bounds: the
# documented targets are a bystander latency under 250 ms and a server RSS under 256 MiB;
# the assertions allow several times that, so a loaded machine does not make them flaky.

import asyncio  # noqa: E402
import os as _os  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

from test_fuzz_peer import extended_login  # noqa: E402

import pyfabric  # noqa: E402
from pyfabric import Atom  # noqa: E402
from pyfabric.etf import encode  # noqa: E402

ATTACK_SECRET = "fuzz-secret"   # extended_login's
RSS_BOUND_MIB = 768
LATENCY_BOUND_S = 5.0
FUZZ_SCALE = max(1, int(_os.environ.get("FUZZ_SECONDS", "20")) // 20)


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


class Bystander:
    """A legacy client pinging every 50 ms in a thread; records its worst latency, and the
    peak RSS of the server's OS process."""

    def __init__(self, node: ErlangNode):
        self.node = node
        self.raw = legacy_login(node.port, ATTACK_SECRET)
        self.raw.send(vector("07"))
        self.raw.recv()
        self.worst = 0.0
        self.pings = 0
        self.peak = _rss_mib(node.proc.pid)
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                t0 = time.monotonic()
                self.raw.send(vector("14"))
                assert plain(self.raw.recv(timeout=60)) == plain(vector("15"))
                self.worst = max(self.worst, time.monotonic() - t0)
                self.pings += 1
                self.peak = max(self.peak, _rss_mib(self.node.proc.pid))
            except Exception as e:  # reported by check()
                self.error = repr(e)
                return
            self._stop.wait(0.05)

    def check(self) -> None:
        self._stop.set()
        self._thread.join(70)
        self.raw.close()
        assert self.node.proc.poll() is None, "the server's VM died"
        assert self.error is None, f"bystander failed: {self.error}"
        assert self.pings > 0
        assert self.worst < LATENCY_BOUND_S, f"bystander waited {self.worst:.2f} s"
        assert self.peak < RSS_BOUND_MIB, f"server RSS peaked at {self.peak} MiB"


@pytest.fixture(scope="module")
def attacked():
    """A server with the default limits (only the throttle is off: every client here comes
    from 127.0.0.1, and idle attackers would otherwise get the bystander's address blocked)."""
    with ErlangNode() as n:
        n.command("{start_demo, [ping]}")
        n.command('{eval, "register(sink, spawn(fun L() -> receive _ -> L() end end)), ok."}')
        n.command('{eval, "register(simple_server, spawn(fun L() -> receive {F, M} when '
                  'is_pid(F) -> F ! {pong, self(), M}, L(); _ -> L() end end)), ok."}')
        n.port = n.start_server(ATTACK_SECRET, allowed=["ping", "sink", "simple_server"],
                                allow_legacy_auth="true", max_auth_failures="0")
        yield n


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _until_heartbeat_ack(sock, limit: float) -> bytes:
    """Read until the heartbeat_ack the attack ends with; everything read before it."""
    sock.settimeout(limit)
    buf = b""
    while b"heartbeat_ack" not in buf:
        data = sock.recv(65536)
        assert data, f"closed by the server; read {buf[:200]!r}"
        buf += data
    return buf


def _nils(n: int, compressed: bool) -> bytes:
    """{m, sink, [[], [], ... n times]} (LIST_EXT of NIL), compressed or not."""
    plain_ = b"h\x03d\x00\x01md\x00\x04sinkl" + struct.pack(">I", n) + b"j" * n + b"j"
    if not compressed:
        return b"\x83" + plain_
    return b"\x83P" + struct.pack(">I", len(plain_)) + zlib.compress(plain_, 9)


@pytest.mark.parametrize("n, compressed", [(16 << 20, True), (1 << 20, True), (1 << 20, False),
                                           (2_000_000, False)])
def test_amplifying_frames_are_refused_cheaply(attacked, n, compressed):
    body = _nils(n, compressed)
    if compressed:
        assert len(body) < 20_000   # the attack: a few KB on the wire
    by = Bystander(attacked)
    sock = extended_login(attacked.port)
    t0 = time.monotonic()
    sock.sendall(_frame(body) + _frame(encode((Atom("heartbeat"), 1))))
    got = _until_heartbeat_ack(sock, 60)
    elapsed = time.monotonic() - t0
    sock.close()
    by.check()
    if compressed or n >= 2_000_000:
        # refused from the declared count (max_terms, or 64 terms per compressed byte)
        assert b"too_many_terms" in got
    else:
        assert b"error" not in got        # 1 MB of [] uncompressed: within the bounds
    assert elapsed < 30


@pytest.mark.parametrize("mib", [1, 4, 16])
def test_large_frames_are_received_in_linear_time(attacked, mib):
    _large_frame(attacked, mib)


def test_fuzz_64_mib_frame_is_received_in_linear_time(attacked):
    """The default max_frame's worth (64 MiB, minus the header): only in `make fuzz`."""
    if FUZZ_SCALE < 2:
        pytest.skip("64 MiB frame: long run only (make fuzz, FUZZ_SECONDS >= 40)")
    _large_frame(attacked, 64)


def _large_frame(node: ErlangNode, mib: int) -> None:
    by = Bystander(node)
    sock = extended_login(node.port)
    body = encode((Atom("m"), Atom("sink"), _os.urandom(mib * 1024 * 1024 - 64)))
    assert len(body) <= 64 * 1024 * 1024
    t0 = time.monotonic()
    sock.sendall(_frame(body) + _frame(encode((Atom("heartbeat"), 2))))
    _until_heartbeat_ack(sock, 120)
    elapsed = time.monotonic() - t0
    sock.close()
    by.check()
    # quadratic receiving took 51 s for 16 MiB; linear is well under a second per 16 MiB
    assert elapsed < 2 + mib / 2, f"{mib} MiB took {elapsed:.1f} s"


def test_idle_connections_do_not_lock_clients_out(attacked):
    by = Bystander(attacked)
    idle = []
    for _ in range(300):
        idle.append(socket.create_connection(("127.0.0.1", attacked.port), timeout=5))
    time.sleep(0.5)
    # a new client gets in: the oldest idle connections of its address made room
    for _ in range(3):
        t0 = time.monotonic()
        good = legacy_login(attacked.port, ATTACK_SECRET)
        good.send(vector("07"))
        assert plain(good.recv()) == plain(vector("08"))
        good.close()
        assert time.monotonic() - t0 < LATENCY_BOUND_S
    held = 0
    for s in idle:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                continue
        except BlockingIOError:
            held += 1
        except OSError:
            continue
    for s in idle:
        s.close()
    by.check()
    assert held <= 64   # max_pending_per_address


def test_never_reading_peer_is_closed(attacked):
    by = Bystander(attacked)
    sock = extended_login(attacked.port)
    # ping answers every request with the (incompressible) payload: the server must write
    # far more than the kernel buffers hold, to a peer that never reads
    body = encode((Atom("m"), Atom("ping"), (Atom("t"), ((Atom("pr"), 1), _os.urandom(60000)))))
    sock.settimeout(1.0)
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 60:
        try:
            sock.sendall(_frame(body))
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
    sock.close()
    by.check()
    assert closed, "a peer that never reads was not closed within 60 s (send_timeout is 15 s)"
    deadline = time.monotonic() + 10   # the warning reaches stderr asynchronously
    while "has not read its data" not in attacked.stderr_tail(200):
        assert time.monotonic() < deadline, "no warning saying why the peer was closed"
        time.sleep(0.1)


def test_atom_count_stays_flat_over_many_python_clients(attacked):
    """Each Python client has a random node name; its references must not become atoms."""
    def atoms() -> int:
        return int(attacked.command('{eval, "erlang:system_info(atom_count)."}'))

    async def one(i: int) -> None:
        async with await pyfabric.aconnect("127.0.0.1", attacked.port, ATTACK_SECRET) as c:
            box = c.mailbox()
            ping = await c.whereis("ping")
            ref = c.node.make_ref()
            c.send(ping, (box.pid, (i, ref)))
            _, (_pong, (_i, back)) = await box.receive(timeout=10)
            assert back == ref   # the reference comes back as the client's own

    async def many(n: int) -> None:
        for i in range(n):
            await one(i)

    asyncio.run(many(5))   # code paths warmed up (modules, their atoms)
    before = atoms()
    asyncio.run(many(100 * FUZZ_SCALE))
    assert atoms() - before < 10


def test_flood_on_a_shared_service_spares_the_other_clients(attacked):
    by = Bystander(attacked)
    sock = extended_login(attacked.port)
    body = _frame(encode((Atom("m"), Atom("ping"), (Atom("t"), ((Atom("pr"), 1), 0)))))
    burst = body * 2000
    sock.settimeout(0.5)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        try:
            sock.sendall(burst)
        except TimeoutError:
            continue
        except OSError:
            break
    sock.close()
    by.check()
    assert "ok" in attacked.command('{eval, "true = is_process_alive(whereis(ping)), ok."}')
