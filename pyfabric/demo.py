"""Interim demo for ``make demo``: pyfabric.etf talking to a real ``erl``.

Encodes a few terms in Python, has Erlang decode and print them, then decodes a term
Erlang encoded. It will be replaced by a client/server demo of the fabric protocol.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from pyfabric import etf
from pyfabric.etf import Atom, ImproperList

_ERLANG_PRINT = (
    "{ok, [Hex]} = init:get_argument(terms), "
    "Bin = binary:decode_hex(list_to_binary(Hex)), "
    "io:format(\"~p~n\", [binary_to_term(Bin)]), "
    "io:format(\"~s~n\", [binary:encode_hex(term_to_binary("
    "{reply, self(), make_ref(), #{<<\"pi\">> => 3.14159, list => [1, 2 | tail]}, \"caf\\x{e9}\"}, "
    "[{minor_version, 1}]))]), halt()."
)


def main() -> int:
    erl = shutil.which("erl")
    if erl is None:
        sys.stderr.write("erl not found: run `make erlang` first\n")
        return 1
    term = (
        Atom("hello"),
        "from python",
        [1, 2, 3],
        {Atom("answer"): 42, b"bin": 2.5},
        ImproperList((Atom("a"),), Atom("b")),
        True,
        None,
        2**100,
    )
    data = etf.encode(term, compressed=True, minor_version=1)
    print(f"Python term:  {term!r}")
    print(f"encoded:      {len(data)} bytes ({data[:24].hex()}...)")
    proc = subprocess.run(
        [erl, "-noshell", "-terms", data.hex(), "-eval", _ERLANG_PRINT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    printed, reply_hex = proc.stdout.rstrip("\n").rsplit("\n", 1)
    print(f"Erlang sees:  {' '.join(printed.split())}")
    reply = etf.decode(bytes.fromhex(reply_hex))
    print(f"Erlang sent:  {reply!r}")
    print(f"  its string as text: {etf.charlist_to_str(reply[4])!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
