"""Python <-> Python throughput (not a test): ``python tests/transport/bench_transport.py [--uvloop]``.

Prints ping-pong round trips per second (one message in flight) and streaming messages per
second (a burst of one-way sends, then a final ack), over TCP on 127.0.0.1. The server runs
in a child process (the blocking facade), so each side has its own interpreter.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time

import pyfabric
from pyfabric import ANY, Atom, aconnect

SECRET = b"bench"
PONG = Atom("pong")


async def ping(proc) -> None:
    while True:
        sender, msg = await proc.receive((ANY, ANY))
        proc.send(sender, (proc.pid, (PONG, msg)))


async def sink(proc) -> None:
    count = 0
    while True:
        msg = await proc.receive()
        if msg.__class__ is tuple and msg[0] == Atom("done"):
            proc.send(msg[1], count)
            count = 0
        else:
            count += 1


def run_server(port_queue, stop) -> None:
    server = pyfabric.start_server("127.0.0.1", 0, SECRET, allowed=["ping", "sink"])
    server.spawn(ping, name="ping")
    server.spawn(sink, name="sink")
    port_queue.put(server.port)
    stop.wait()
    server.close()


async def main(port: int) -> None:
    client = await aconnect("127.0.0.1", port, SECRET)
    try:
        box = client.mailbox()
        p = await client.whereis("ping")
        s = await client.whereis("sink")
        payload = (Atom("payload"), "abababa")
        for label, n in (("warm-up", 2000), ("ping-pong", 20000)):
            t0 = time.perf_counter()
            for _ in range(n):
                client.send(p, (box.pid, payload))
                await box.receive()
            dt = time.perf_counter() - t0
            if label != "warm-up":
                print(f"ping-pong: {n / dt:,.0f} round trips/s ({n} in {dt:.2f} s)")
        for size_label, msg in (("small", payload), ("1 KiB", b"x" * 1024)):
            n = 200_000 if size_label == "small" else 50_000
            t0 = time.perf_counter()
            for i in range(n):
                client.send(s, msg)
                if i % 1000 == 999:
                    await client.drain()  # let the loop write (and keep memory bounded)
            client.send(s, (Atom("done"), box.pid))
            got = await box.receive(timeout=120)
            dt = time.perf_counter() - t0
            assert got == n, got
            print(f"streaming {size_label}: {n / dt:,.0f} msgs/s ({n} in {dt:.2f} s)")
        box.close()
    finally:
        await client.close()


if __name__ == "__main__":
    ports, stop = multiprocessing.Queue(), multiprocessing.Event()
    child = multiprocessing.Process(target=run_server, args=(ports, stop))
    child.start()
    try:
        port = ports.get(timeout=30)
        if "--uvloop" in sys.argv:
            import uvloop

            uvloop.run(main(port))
        else:
            asyncio.run(main(port))
    finally:
        stop.set()
        child.join(30)
