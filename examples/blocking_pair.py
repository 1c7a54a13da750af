"""A fabric server and a client in one script, with the blocking API (no Erlang needed).

The server runs a registered ``echo`` process; the client finds it with ``whereis``, sends it
a message that carries a reply address, and prints what comes back. Run it with
``python examples/blocking_pair.py``: it picks a free port and stops by itself.
"""

from __future__ import annotations

import pyfabric
from pyfabric import Atom

SECRET = "example secret"


async def echo(proc: pyfabric.Process) -> None:
    """Answer every ``{From, Msg}`` with ``{self(), Msg}``, as an Erlang echo server does."""
    while True:
        sender, msg = await proc.receive()
        proc.send(sender, (proc.pid, msg))


def main() -> None:
    # Port 0: the OS picks a free port; only `echo` may be reached from outside.
    # strings="list": an Erlang list of small integers stays a list ([1, 2, 3], not "\x01\x02\x03").
    with pyfabric.start_server("127.0.0.1", 0, SECRET, allowed=["echo"], strings="list") as server:
        server.spawn(echo, name="echo")
        with pyfabric.connect("127.0.0.1", server.port, SECRET, strings="list") as client:
            print(f"connected: {client.mode} protocol, features {', '.join(sorted(client.features))}")
            proxy = client.whereis("echo")
            if proxy is None:
                raise SystemExit("the server has no process named echo")
            with client.mailbox() as box:
                client.send(proxy, (box.pid, (Atom("hello"), [1, 2, 3], {Atom("key"): b"value"})))
                sender, reply = box.receive(timeout=5)
                print(f"echo replied {reply!r}")
                print(f"the reply came from the pid whereis returned: {sender == proxy}")


if __name__ == "__main__":
    main()
