"""Instructions per message of pyfabric's protocol core, counted by callgrind (issues 12, 15).

Wall-clock figures on this machine drift 2-3x over minutes, so a change of a few percent in
the per-message cost cannot be seen in ``make bench``. Instruction counts can: valgrind's
callgrind counts the instructions a process executes, the same for the same code and input
whatever else the machine does. This script runs a sans-IO stream of small messages
(``{n, I}`` to a proxy, 64 per round, both connections in this process, acks and grants
flowing back as they would) with the features on (the default) and with ``acks`` and
``credit`` off, each under callgrind twice (with and without the stream, so that start-up
cancels out), and prints the instructions per message (both sides together) and the ratio.

It measures the protocol core only (framing, codec, rewriting, acks, credit), not the
transport, the runtime or the kernel. Needs valgrind (Debian's package ``valgrind``).

Usage: ``python bench/instructions.py [-n MESSAGES] [--backend python|c]`` (``--backend``
sets ``PYFABRIC_ETF`` for the measured runs, when the build has a choice of codec).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

ROUND = 64  # messages per round: the receiver's ack_every and grant_every


def _pair(features: frozenset[str] | None) -> tuple[Any, Any, Any]:
    """A client and a server connection wired in memory; the client holds a proxy."""
    from pyfabric.etf import Atom, Pid
    from pyfabric.protocol import Connection, MessageReceived

    def side(role: str, node: Atom) -> Connection:
        ids = itertools.count(100)

        def new_pid(_ident: int = 0) -> Pid:
            return Pid(node, next(ids), 0, 1)

        kw: dict[str, Any] = {"allowed": ["inbox"]}
        if features is not None:
            kw["features"] = features
        conn = Connection(role, b"secret", node_name=node, new_proxy_pid=new_pid, new_dead_pid=new_pid, is_alive=lambda _p: True, **kw)
        conn.local_pid = new_pid  # type: ignore[attr-defined]
        return conn

    client, server = side("client", Atom("cli@bench")), side("server", Atom("srv@bench"))
    client.start()
    _pump(client, server)
    server.send_message(Atom("inbox"), (Atom("hello"), server.local_pid()))  # type: ignore[attr-defined]
    events = _pump(client, server)
    proxy = next(ev.payload[1] for ev in events if isinstance(ev, MessageReceived))

    def delivered(_target: Any, _payload: Any, credit: Any) -> None:
        # what the transport does for a mailbox with room: the credit goes back at once
        if credit is not None and server.session.credit.give_back(*credit):  # type: ignore[union-attr]
            server.send_grant()

    server.deliver = delivered
    client.deliver = lambda *_a: None
    return client, server, proxy


def _pump(client: Any, server: Any) -> list[Any]:
    events: list[Any] = []
    moved = True
    while moved:
        moved = False
        for src, dst in ((client, server), (server, client)):
            data = src.data_to_send()
            if data:
                moved = True
                dst.receive_data(data)
            events.extend(dst.events())
    return events


def stream(features: frozenset[str] | None, n: int) -> None:
    """Warm up, then ``n`` messages (rounded up to whole rounds)."""
    from pyfabric.etf import Atom

    client, server, proxy = _pair(features)
    tag = Atom("n")
    for count in (ROUND * 10, n):
        i = 0
        while i < count:
            for _ in range(ROUND):
                if not client.send_m(proxy, (tag, i)):
                    client.send_message(proxy, (tag, i))
                i += 1
            server.receive_data(client.data_to_send())
            server.events()
            client.receive_data(server.data_to_send())
            client.events()


def _count(mode: str, n: int, env: dict[str, str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", sys.executable, __file__, "--child", mode, "-n", str(n)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=900,
        )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count: {out.stderr[-500:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=6400, help="messages per measured run (default 6400)")
    parser.add_argument("--backend", choices=["python", "c"], default=None, help="PYFABRIC_ETF for the runs")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.child:
        from pyfabric.protocol._constants import FEATURES

        stream(None if args.child == "on" else FEATURES - {"acks", "credit"}, args.n)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind not found: apt-get install valgrind", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.backend:
        env["PYFABRIC_ETF"] = args.backend
    n = -(-args.n // ROUND) * ROUND
    per_msg = {}
    for mode in ("on", "off"):
        per_msg[mode] = (_count(mode, n, env) - _count(mode, 0, env)) / n
    print(f"protocol core, small-message stream, instructions per message (both sides), backend {env.get('PYFABRIC_ETF', 'default')}:")
    print(f"  acks+credit on   {per_msg['on']:10,.0f}")
    print(f"  acks+credit off  {per_msg['off']:10,.0f}")
    print(f"  off / on         {per_msg['off'] / per_msg['on']:10.3f}   (the throughput ratio if the core were the only cost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
