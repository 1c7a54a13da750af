"""The Python side of the Python <-> Python pairing of `make bench`: a pyfabric server.

Run as a separate process (its own event loop and core, like an Erlang node) by
``bench/run.py``. It registers the same processes as ``bench/erl/fabric_bench.erl``
(``bench_echo``, ``bench_counter``) and serves them on 127.0.0.1 (OS-picked port). It
also runs the Python ceiling: a bare asyncio (uvloop when installed) echo server, which
writes back whatever it reads, no framing, no pyfabric. It prints
``port <N> echo <M>`` and runs until its stdin closes.

Usage: python bench/pyserver.py SECRET
"""

from __future__ import annotations

import asyncio
import pathlib
import socket
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyfabric  # noqa: E402
from pyfabric import Atom, Pid  # noqa: E402

BENCH_COUNTER = Atom("bench_counter")
BENCH_DONE = Atom("bench_done")
BENCH_START = Atom("bench_start")
BENCH_SLOW = Atom("bench_slow")
# A counting process may fall behind a fast sender by a whole run: its bound is not what
# is measured here (the default, 100,000, is exactly one streaming run).
MAX_MAILBOX = 10_000_000


async def echo(proc):
    """``(From, M)`` -> ``From ! (self(), M)``."""
    receive, send, me = proc.receive, proc.send, proc.pid
    while True:
        msg = await receive()
        if msg.__class__ is tuple and len(msg) == 2 and msg[0].__class__ is Pid:
            send(msg[0], (me, msg[1]))


async def count(proc, reply_to: Pid, n: int):
    receive = proc.receive
    for _ in range(n):
        await receive()
    proc.send(reply_to, (BENCH_DONE, proc.pid, n))


async def slow_count(proc, reply_to: Pid, n: int, delay_ms: int):
    """The slow receiver: ``delay_ms`` per message; reports the longest mailbox it saw."""
    receive, qsize = proc.receive, proc.qsize
    peak = 0
    for _ in range(n):
        await receive()
        peak = max(peak, qsize() + 1)
        await asyncio.sleep(delay_ms / 1000)
    proc.send(reply_to, (BENCH_DONE, proc.pid, n, peak))


async def counter_factory(proc):
    """``(bench_start, From, N)``: spawn a process counting N messages; reply its pid.
    ``(bench_slow, From, N, DelayMs)``: the same with a slow receiver (``slow_count``)."""
    while True:
        msg = await proc.receive()
        if msg.__class__ is tuple and len(msg) == 3 and msg[0] == BENCH_START:
            pid = proc.node.spawn(count, msg[1], msg[2], max_mailbox=MAX_MAILBOX)
            proc.send(msg[1], (BENCH_COUNTER, pid))
        elif msg.__class__ is tuple and len(msg) == 4 and msg[0] == BENCH_SLOW:
            pid = proc.node.spawn(slow_count, msg[1], msg[2], msg[3], max_mailbox=MAX_MAILBOX)
            proc.send(msg[1], (BENCH_COUNTER, pid))


class RawEcho(asyncio.Protocol):
    """The bare echo: every chunk read is written back as is."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def main(secret: str) -> None:
    server = await pyfabric.serve("127.0.0.1", 0, secret, allowed=["bench_echo", "bench_counter"])
    server.spawn(echo, name="bench_echo", max_mailbox=MAX_MAILBOX)
    server.spawn(counter_factory, name="bench_counter")
    loop = asyncio.get_running_loop()
    echo_server = await loop.create_server(RawEcho, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    print(f"port {server.port} echo {echo_port}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the runner closes our stdin
    echo_server.close()
    await server.close()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(sys.argv[1]))
    else:
        uvloop.run(main(sys.argv[1]))
