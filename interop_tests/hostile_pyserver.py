"""Hostile peers against a Python fabric server in its own process (issue 11's attacks).

The server runs as a child process (``python hostile_pyserver.py serve ...``) so that its
memory (``VmHWM``, peak RSS) and its event loop are its own; a bystander client in the
test process pings it all along and records every round trip. The attacks are raw
sockets: an extended (HMAC) handshake done with the sans-IO core, then hand-built frames.

Also a command line for the figures of the issue's note (one attack per run)::

    python interop_tests/hostile_pyserver.py measure ATTACK [--pythonpath DIR]

where ATTACK is ``compressed-16m``, ``plain-1m``, ``idle-300``, ``idle-300-tls``,
``never-read`` or ``flood``; ``--pythonpath`` runs the server from another source tree
(the "before" figures come from a checkout of ``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECRET = "hostile-secret"
HOST = "127.0.0.1"
SERVICES = ("ping", "slow")


# -- the server process ---------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    import pyfabric
    from pyfabric import ANY, Atom

    async def ping(proc: Any) -> None:
        while True:
            sender, msg = await proc.receive((ANY, ANY))
            proc.send(sender, (Atom("pong"), msg))

    async def slow(proc: Any) -> None:
        # A shared service that waits 1 ms per request (a database, say): a flood outruns it.
        while True:
            sender, msg = await proc.receive((ANY, ANY))
            await asyncio.sleep(0.001)
            proc.send(sender, (Atom("pong"), msg))

    kwargs: dict[str, Any] = json.loads(args.options)
    if args.tls:
        from pyfabric.tls import server_context

        kwargs["ssl"] = server_context(args.tls + "/server.pem", args.tls + "/server-key.pem", cafile=args.tls + "/ca.pem")
    server = await pyfabric.serve(HOST, 0, SECRET, allowed=list(SERVICES), **kwargs)
    server.spawn(ping, name="ping")
    server.spawn(slow, name="slow", **({"max_mailbox": args.slow_mailbox} if args.slow_mailbox else {}))
    print(f"port {server.port}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: stdin_closed.done() or stdin_closed.set_result(None))
    await stdin_closed
    stats = server.statistics()
    alive = {name: server.node.whereis(name) is not None for name in SERVICES}
    print("stats " + json.dumps({**stats, "alive": alive}), flush=True)
    await server.close()


class ServerProcess:
    """A Python fabric server in a child process (default options unless given)."""

    def __init__(
        self, *, pythonpath: str | None = None, tls: str | None = None, slow_mailbox: int = 0, **options: Any
    ) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = pythonpath or str(ROOT)
        cmd = [sys.executable, __file__, "serve", "--options", json.dumps(options)]
        if tls:
            cmd += ["--tls", tls]
        if slow_mailbox:
            cmd += ["--slow-mailbox", str(slow_mailbox)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.port = int(line.split()[1])

    def memory(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the server process, in bytes."""
        fields = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> dict[str, Any]:
        """Stop the server; returns its final statistics (and which services are alive)."""
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return {}
        for line in out.splitlines():
            if line.startswith("stats "):
                return json.loads(line[6:])
        return {}


# -- the bystander --------------------------------------------------------------------------


class Bystander:
    """A well-behaved client pinging ``service`` every ``period`` s from a thread; records
    each round trip (and the failures) until :meth:`stop`."""

    def __init__(self, port: int, *, service: str = "ping", period: float = 0.02, timeout: float = 120.0, ssl_context: Any = None) -> None:
        import pyfabric

        self.client = pyfabric.connect(HOST, port, SECRET, reconnect=False, ssl=ssl_context)
        self.box = self.client.mailbox()
        self.target = self.client.whereis(service)
        self.period = period
        self.timeout = timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            start = time.monotonic()
            try:
                self.client.send(self.target, (self.box.pid, n))
                while True:
                    reply = self.box.receive(timeout=self.timeout)
                    if reply[1] == n:
                        break
                self.latencies.append(time.monotonic() - start)
            except Exception as exc:  # noqa: BLE001 - recorded, the test decides
                self.failures.append(f"{type(exc).__name__}: {exc}")
                return
            self._stop.wait(self.period)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
        lat = self.latencies
        return {"pings": len(lat), "worst": max(lat) if lat else None, "failures": self.failures}


# -- attackers ------------------------------------------------------------------------------


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            raise ConnectionError("closed by the server")
        data += piece
    return bytes(data)


def read_frame(sock: socket.socket) -> bytes:
    return recv_exactly(sock, struct.unpack(">I", recv_exactly(sock, 4))[0])


def authenticated(port: int, *, timeout: float = 10.0) -> tuple[socket.socket, Any]:
    """A raw socket past the extended handshake, and the core that did it (for framing)."""
    from pyfabric.etf import Atom, Pid
    from pyfabric.protocol import Connection

    ids = iter(range(1, 10**9))
    node = Atom("hostile@host")
    conn = Connection("client", SECRET, node_name=node, new_proxy_pid=lambda _i: Pid(node, next(ids), 0, 0))
    sock = socket.create_connection((HOST, port), timeout=timeout)
    conn.start()
    sock.sendall(conn.data_to_send())
    while conn.state != "established":
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed during the handshake")
        conn.receive_data(data)
        conn.events()
        sock.sendall(conn.data_to_send())
    return sock, conn


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def nil_list_message(n: int, *, compressed: bool, dest: bytes = b"ping") -> bytes:
    """The frame ``{m, Dest, [[], [], ...]}`` with ``n`` empty lists (issue 11 item 1)."""
    body = b"h\x03w\x01mw" + bytes([len(dest)]) + dest + b"l" + struct.pack(">I", n) + b"j" * n + b"j"
    if compressed:
        return framed(b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, 9))
    return framed(b"\x83" + body)


def until_answered(sock: socket.socket, conn: Any, timeout: float) -> tuple[float, str]:
    """Send a heartbeat and wait for the server's next frame (or its close): (seconds, what)."""
    start = time.monotonic()
    conn.heartbeat()
    sock.sendall(conn.data_to_send())
    sock.settimeout(timeout)
    try:
        while True:
            frame = read_frame(sock)
            from pyfabric import decode

            term = decode(frame)
            kind = term[0].name if isinstance(term, tuple) and term else repr(term)
            if kind in ("error", "heartbeat_ack"):
                return time.monotonic() - start, kind
    except (ConnectionError, OSError) as exc:
        return time.monotonic() - start, f"closed ({type(exc).__name__})"


# -- measurements ---------------------------------------------------------------------------


def _sample_memory(server: ServerProcess, stop: threading.Event, out: list[int]) -> None:
    while not stop.wait(0.05):
        try:
            out.append(server.memory()[0])
        except (OSError, KeyError):
            return


def measure_frame(server: ServerProcess, frame: bytes, *, timeout: float = 120.0) -> dict[str, Any]:
    """Send one amplifying frame from an authenticated attacker while a bystander pings."""
    bystander = Bystander(server.port, timeout=timeout)
    time.sleep(0.3)
    sock, conn = authenticated(server.port)
    start = time.monotonic()
    sock.sendall(frame)
    sent = time.monotonic() - start
    took, what = until_answered(sock, conn, timeout)
    time.sleep(0.3)
    result = bystander.stop()
    sock.close()
    return {"wire_bytes": len(frame), "send_s": sent, "reject_s": took, "answer": what, **result}


def measure_idle(server: ServerProcess, *, count: int = 300, seconds: float = 10.0, tls: str | None = None) -> dict[str, Any]:
    """``count`` idle connections (kept at that number: each replaced when the server drops
    it) while a legitimate client connects, pings and leaves every 0.25 s."""
    import pyfabric

    ctx = None
    if tls:
        from pyfabric.tls import client_context

        ctx = client_context(tls + "/ca.pem", certfile=tls + "/client-alice.pem", keyfile=tls + "/client-alice-key.pem")
    stop = threading.Event()
    held: list[socket.socket] = []
    lock = threading.Lock()

    def idle_one() -> socket.socket | None:
        try:
            sock = socket.create_connection((HOST, server.port), timeout=2)
            if tls:
                raw_ctx = ssl.create_default_context(cafile=tls + "/ca.pem")
                raw_ctx.load_cert_chain(tls + "/client-alice.pem", tls + "/client-alice-key.pem")
                sock = raw_ctx.wrap_socket(sock, server_hostname="localhost")
            sock.setblocking(False)
            return sock
        except OSError:
            return None

    def keep_idle() -> None:
        while not stop.is_set():
            with lock:
                alive = []
                for s in held:
                    try:
                        if s.recv(1) == b"":
                            s.close()
                            continue
                    except (BlockingIOError, ssl.SSLWantReadError):
                        pass
                    except OSError:
                        s.close()
                        continue
                    alive.append(s)
                held[:] = alive
            while len(held) < count and not stop.is_set():
                s = idle_one()
                if s is not None:
                    with lock:
                        held.append(s)
            stop.wait(0.05)

    attacker = threading.Thread(target=keep_idle, daemon=True)
    attacker.start()
    time.sleep(1.0)
    ok = failed = 0
    worst = 0.0
    errors: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            client = pyfabric.connect(HOST, server.port, SECRET, reconnect=False, ssl=ctx, connect_timeout=5, handshake_timeout=5)
            try:
                box = client.mailbox()
                client.send("ping", (box.pid, 1))
                box.receive(timeout=5)
                ok += 1
                worst = max(worst, time.monotonic() - start)
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 - counted
            failed += 1
            errors.append(f"{type(exc).__name__}: {exc}"[:160])
        time.sleep(0.25)
    stop.set()
    attacker.join(timeout=10)
    with lock:
        for s in held:
            s.close()
    return {"legit_ok": ok, "legit_failed": failed, "worst": worst, "errors": errors[:3]}


def measure_never_read(server: ServerProcess, *, seconds: float = 20.0, payload: int = 64 * 1024) -> dict[str, Any]:
    """An attacker sends ping requests with a ``payload``-byte binary and never reads."""
    from pyfabric.etf import Atom, Pid

    bystander = Bystander(server.port)
    sock, conn = authenticated(server.port)
    me = Pid(Atom("hostile@host"), 1, 0, 0)
    blob = os.urandom(payload)
    sock.settimeout(1.0)
    start = time.monotonic()
    sent = 0
    closed = None
    while time.monotonic() - start < seconds:
        conn.send_message(Atom("ping"), (me, blob))
        try:
            sock.sendall(conn.data_to_send())
            sent += 1
        except TimeoutError:
            continue  # the server stopped reading us: push-back
        except OSError as exc:
            closed = time.monotonic() - start
            closed_why = type(exc).__name__
            break
    result = bystander.stop()
    sock.close()
    return {"requests_sent": sent, "closed_after_s": closed, **({"closed_by": closed_why} if closed else {}), **result}


def measure_flood(server: ServerProcess, *, seconds: float = 15.0, service: str = "slow") -> dict[str, Any]:
    """An attacker floods the shared ``service`` with requests (reading its replies so as
    not to be a never-reading peer) while a bystander uses the same service."""
    from pyfabric.etf import Atom, Pid

    bystander = Bystander(server.port, service=service, period=0.1)
    sock, conn = authenticated(server.port)
    me = Pid(Atom("hostile@host"), 1, 0, 0)
    for _ in range(1000):
        conn.send_message(Atom(service), (me, 0))
    batch = conn.data_to_send()
    stop = threading.Event()

    def drain() -> None:
        sock2 = sock.dup()
        sock2.settimeout(0.5)
        while not stop.is_set():
            try:
                if not sock2.recv(1 << 20):
                    return
            except TimeoutError:
                continue
            except OSError:
                return
        sock2.close()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    sock.settimeout(1.0)
    start = time.monotonic()
    sent = 0
    closed = None
    while time.monotonic() - start < seconds:
        try:
            sock.sendall(batch)
            sent += 1000
        except TimeoutError:
            continue
        except OSError:
            closed = time.monotonic() - start
            break
    stop.set()
    time.sleep(0.5)
    result = bystander.stop()
    sock.close()
    reader.join(timeout=5)
    return {"flood_sent": sent, "closed_after_s": closed, **result}


ATTACKS = ("compressed-16m", "plain-1m", "idle-300", "idle-300-tls", "never-read", "flood")


def measure(attack: str, pythonpath: str | None = None) -> dict[str, Any]:
    tls_dir = None
    if attack.endswith("-tls"):
        from pyfabric.certs import write_dev_certs

        tls_dir = tempfile.mkdtemp(prefix="hostile-certs-")
        write_dev_certs(pathlib.Path(tls_dir), clients=["alice"])
    server = ServerProcess(pythonpath=pythonpath, tls=tls_dir)
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(server, stop, samples), daemon=True)
    sampler.start()
    rss_before = server.memory()[0]
    try:
        if attack == "compressed-16m":
            result = measure_frame(server, nil_list_message(16_000_000, compressed=True))
        elif attack == "plain-1m":
            result = measure_frame(server, nil_list_message(1_000_000, compressed=False))
        elif attack.startswith("idle-300"):
            result = measure_idle(server, tls=tls_dir)
        elif attack == "never-read":
            result = measure_never_read(server)
        elif attack == "flood":
            result = measure_flood(server)
        else:
            raise SystemExit(f"unknown attack {attack!r}; one of {', '.join(ATTACKS)}")
        result["peak_rss_mib"] = round(server.memory()[1] / 2**20, 1)
        result["rss_before_mib"] = round(rss_before / 2**20, 1)
    finally:
        stop.set()
        result_stats = server.stop() if server.alive else {"server": "died"}
    result["server"] = result_stats
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--options", default="{}")
    s.add_argument("--tls")
    s.add_argument("--slow-mailbox", type=int, default=0)
    m = sub.add_parser("measure")
    m.add_argument("attack", choices=ATTACKS)
    m.add_argument("--pythonpath")
    args = parser.parse_args()
    if args.cmd == "serve":
        import logging

        logging.basicConfig(level=logging.ERROR, format="server %(levelname)s %(name)s: %(message)s")
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        asyncio.run(_serve(args))
    else:
        if args.pythonpath is None:
            sys.path.insert(0, str(ROOT))
        print(json.dumps(measure(args.attack, args.pythonpath), default=str))


if __name__ == "__main__":
    main()
