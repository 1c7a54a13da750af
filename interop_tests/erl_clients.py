"""erlang_peer client nodes run from the shared harness ``erl`` (for the route and cluster
interop tests).

A client is connected with ``eval`` in the harness process and its pid kept in that process's
dictionary under a key (``get(Key)`` in later ``eval``s), because its route calls are not
harness commands. Also an Erlang echo registered there, ``receive`` in the harness process and
a Python routing server with such client nodes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from erlnode import erl_string
from interop_support import HOST, SECRET, Harness

import pyfabric
from pyfabric import Atom

NODEDOWN = Atom("nodedown")

_ERL_ECHO = (
    "case whereis({name}) of undefined -> ok; Old -> unregister({name}), exit(Old, kill) end, "
    "register({name}, spawn(fun L() -> receive {{F, M}} when is_pid(F) -> F ! {{self(), M}}, L(); "
    "{die}_ -> L() end end)), ok"
)


def erl_echo(erl: Harness, name: str, *, dies: bool = False) -> None:
    """Register an Erlang echo ``{From, M}`` -> ``From ! {self(), M}`` as ``name``; with
    ``dies``, ``{die, Reason}`` makes it exit with ``Reason``."""
    erl.eval(_ERL_ECHO.format(name=name, die="{die, R} -> exit(R); " if dies else ""))


def erl_client(erl: Harness, key: str, port: int, node: str, allowed: str = "[]", fallbacks: tuple[int, ...] = ()) -> None:
    """Connect an erlang_peer client node (``fallbacks``: ports on 127.0.0.1); its pid is
    ``get(key)`` in later ``eval``s."""
    options = f"node => '{node}', allowed => {allowed}"
    if fallbacks:
        options += ", fallbacks => [" + ", ".join(f'{{"{HOST}", {p}}}' for p in fallbacks) + "]"
    assert erl.eval(f'{{ok, C}} = fabric_peer:connect("{HOST}", {port}, "{SECRET}", #{{{options}}}), put({key}, C), ok') == "ok"


def erl_close(erl: Harness, *keys: str) -> None:
    """Close the erlang_peer clients of ``erl_client`` (best effort, for ``finally``)."""
    for key in keys:
        erl.cmd_raw("{eval, %s}" % erl_string(f"case get({key}) of undefined -> ok; C -> catch fabric_peer:close(C), erase({key}), ok end."))


def erl_receive(erl: Harness, pattern: str, result: str, timeout_ms: int = 5000) -> str:
    """``receive Pattern -> Result after T -> timeout end`` in the harness process."""
    return erl.eval(f"receive {pattern} -> {result} after {timeout_ms} -> timeout end")


@contextlib.contextmanager
def python_hub(erl: Harness, clients: Sequence[tuple[str, str, str]]) -> Iterator[pyfabric.BlockingServer]:
    """A Python routing server with the erlang_peer client nodes ``(key, node, allowed)`` of
    ``erl_client``; all closed afterwards."""
    server = pyfabric.start_server(HOST, 0, SECRET, routing=True)
    try:
        for key, node, allowed in clients:
            erl_client(erl, key, server.port, node, allowed)
        yield server
    finally:
        erl_close(erl, *(key for key, _node, _allowed in clients))
        server.close()
