"""``make demo``: a Python client talking to an Erlang fabric server started from erlang_peer.

Starts a real Erlang node running ``fabric_peer_demo`` (a fabric server with the seed's
``ping`` process, an ``echo`` and a ``counter``), connects to it with the blocking API, and
shows the exchange: ``whereis``, the seed's ping example, a Python pid shipped to Erlang
and answered, and a monitor seeing an Erlang process killed.

Run from the repository (``make demo`` builds erlang_peer and its test-support modules
first), or point ``PYFABRIC_PEER_EBIN`` at the compiled ``fabric_peer`` ebin directory and
``PYFABRIC_DEMO_EBIN`` at the one holding ``fabric_peer_demo`` (erlang_peer/test_support/,
not part of the shipped application).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyfabric
from pyfabric import ANY, Atom

SECRET = "demo-secret"
_BUILD = Path(__file__).resolve().parents[1] / "erlang_peer" / "_build"
_EBIN = _BUILD / "default" / "lib" / "fabric_peer" / "ebin"
_DEMO_EBIN = _BUILD / "test_support" / "ebin"


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def start_erlang_server(ebin: Path, demo_ebin: Path = _DEMO_EBIN) -> tuple[subprocess.Popen[str], int]:
    """Start ``fabric_peer_demo`` in a fresh ``erl``; return the process and its port."""
    erl = shutil.which("erl")
    if erl is None:
        raise SystemExit("erl not found: run `make setup` (it installs Erlang/OTP)")
    for directory, beam in ((ebin, "fabric_peer.beam"), (demo_ebin, "fabric_peer_demo.beam")):
        if not (directory / beam).exists():
            raise SystemExit(f"erlang_peer is not built ({beam} is not in {directory}): run `make peer`")
    proc = subprocess.Popen(
        [erl, "-noshell", "-pa", str(ebin), "-pa", str(demo_ebin), "-run", "fabric_peer_demo", "main", "0", SECRET],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("port "):
        proc.kill()
        raise SystemExit(f"the Erlang demo server did not start (it said {line!r})")
    return proc, int(line.split()[1])


def _registered(client: pyfabric.BlockingClient, name: str) -> pyfabric.Pid:
    """The pid registered as ``name`` on the server (the demo's server registers them all)."""
    pid = client.whereis(name)
    if pid is None:
        raise RuntimeError(f"the Erlang server has no process registered as {name}")
    return pid


def run(port: int) -> None:
    """The exchange itself, against a fabric server with ping/echo/counter on ``port``."""
    with pyfabric.connect("127.0.0.1", port, SECRET) as client:
        _say(f"connected: {client.mode} protocol, features: {', '.join(sorted(client.features))}")

        ping = _registered(client, "ping")
        _say(f"whereis(ping) -> {ping!r} (a local proxy for the Erlang process)")

        with client.mailbox() as box:
            # The seed's example: {Self, {payload, "abababa"}} -> {PingPid, {pong, ...}}.
            client.send(ping, (box.pid, (Atom("payload"), "abababa")))
            sender, reply = box.receive(match=(ANY, ANY), timeout=10)
            _say(f"ping replied {reply!r}; the sender is the same proxy: {sender is ping or sender == ping}")
            client.send(sender, (box.pid, (Atom("payload"), "again")))
            _, reply = box.receive(timeout=10)
            _say(f"sent to the returned pid, got {reply!r}")

            # A Python process's pid travels to Erlang; Erlang answers that process.
            async def relay(proc: pyfabric.Process, target: pyfabric.Pid) -> None:
                frm, msg = await proc.receive(timeout=10)
                proc.send(target, (Atom("relayed"), frm, msg))

            relay_pid = client.spawn(relay, box.pid)
            client.send("echo", (relay_pid, (Atom("hello"), "from a Python process", 3.5, 2**70)))
            _, frm, msg = box.receive(match=(Atom("relayed"), ANY, ANY), timeout=10)
            _say(f"echo answered the Python process with {msg!r}")

            # Monitors see the real exit reason of an Erlang process.
            counter = _registered(client, "counter")
            ref = box.monitor(counter)
            box.exit(counter, Atom("kill"))
            down = box.receive(match=(Atom("DOWN"), ref, ANY, ANY, ANY), timeout=10)
            _say(f"killed the Erlang counter; the monitor says {down[4]!r}")


def main() -> int:
    ebin = Path(os.environ.get("PYFABRIC_PEER_EBIN", _EBIN))
    erl_proc, port = start_erlang_server(ebin, Path(os.environ.get("PYFABRIC_DEMO_EBIN", _DEMO_EBIN)))
    _say(f"Erlang fabric server (erlang_peer) listening on 127.0.0.1:{port}")
    try:
        run(port)
    finally:
        erl_proc.kill()
        erl_proc.wait(timeout=10)
    _say("demo finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
