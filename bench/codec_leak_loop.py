"""Leak check of the C codec backend: encode and decode a mix of terms (every deferral
and error path too) a million times; print the resident memory every 100 000 rounds.

A stable RSS after the first rounds means nothing is kept per call. Usage:
``PYFABRIC_ETF=c .venv/bin/python bench/codec_leak_loop.py [rounds]``; it also runs under
``valgrind --tool=memcheck`` (PYTHONMALLOC=malloc) with a small round count.
"""

from __future__ import annotations

import sys

from pyfabric import etf
from pyfabric.etf import Atom, BitString, DecodeLimits, ImproperList, Pid, Port, Reference

NODE = Atom("srv@vm")
TERMS = [
    (Atom("m"), (Atom("pr"), 5), ((Atom("pl"), 7), 12345)),
    (Atom("$gen_call"), (Pid(NODE, 1, 2, 3), Reference(NODE, 3, (1, 2, 3))), [b"x" * 40, "text", 2**70, -1.5]),
    {Atom("k"): [1, 2, 3], (1, etf.FrozenList([1])): {}, "s": ImproperList((1,), Atom("t"))},
    [Port(NODE, 9, 1), BitString(b"\xe0", 3), None, True, "\u2603", [300, 1]],
]
HOSTILE = [
    b"\x83l\xff\xff\xff\xffj",
    b"\x83m\x00\x00\x00\x09abc",
    b"\x83w\x02\xc3\x28",
    b"\x83h\x03a\x01a\x02",
    b"\x83t\x00\x00\x00\x02a\x01a\x02a\x01a\x03",
    b"\x83" + b"l\x00\x00\x00\x01" * 600 + b"j" * 601,
    b"\x83qw\x01mw\x01fa\x02",
]
TIGHT = DecodeLimits(max_total_terms=5)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    encoded = [etf.encode(t) for t in TERMS]
    print(f"backend {etf.implementation}, {rounds} rounds")
    for i in range(rounds):
        for term, data in zip(TERMS, encoded):
            assert etf.encode(term) == data
            etf.decode(data)
            etf.encode(term, minor_version=1, compressed=True)
        for data in HOSTILE:
            for limits in (None, TIGHT):
                try:
                    etf.decode(data, limits=limits)
                except etf.DecodeError:
                    pass
        if i % 100_000 == 0 or i == rounds - 1:
            print(f"round {i}: RSS {rss_kib()} KiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
