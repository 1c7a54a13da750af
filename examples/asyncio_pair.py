"""A fabric server and a client with asyncio: processes, selective receive, monitors.

The server runs ``jobs``, which starts a worker process for each request; the client asks for
one, monitors it across the connection and sees its exit reason in the ``DOWN`` message, as
Erlang's monitors report it. Run it with ``python examples/asyncio_pair.py``.
"""

from __future__ import annotations

import asyncio

import pyfabric
from pyfabric import ANY, Atom

SECRET = "example secret"


async def worker(proc: pyfabric.Process) -> None:
    """Wait for one message and exit with it as the reason."""
    reason = await proc.receive()
    raise pyfabric.ProcessExit(reason)


async def jobs(proc: pyfabric.Process, node: pyfabric.Node) -> None:
    """``{From, start}`` -> ``{self(), WorkerPid}``; other messages stay in the mailbox."""
    while True:
        sender, _ = await proc.receive(match=(ANY, Atom("start")))
        proc.send(sender, (proc.pid, node.spawn(worker)))


async def main() -> None:
    async with await pyfabric.serve("127.0.0.1", 0, SECRET, allowed=["jobs"]) as server:
        server.spawn(jobs, server.node, name="jobs")
        async with await pyfabric.aconnect("127.0.0.1", server.port, SECRET) as client:
            jobs_pid = await client.whereis("jobs")
            if jobs_pid is None:
                raise SystemExit("the server has no process named jobs")
            box = client.mailbox()
            client.send(jobs_pid, (box.pid, Atom("start")))
            _, job = await box.receive(match=(jobs_pid, ANY), timeout=5)
            print(f"the server started worker {job!r}")
            ref = box.monitor(job)
            client.send(job, (Atom("done"), 42))  # the worker exits with this reason
            down = await box.receive(match=(Atom("DOWN"), ref, ANY, ANY, ANY), timeout=5)
            print(f"the monitor reports its exit reason: {down[4]!r}")


if __name__ == "__main__":
    asyncio.run(main())
