"""Erlang terms in Python: the External Term Format codec and Erlang term syntax.

``pyfabric.etf.encode`` / ``decode`` are byte-exact with Erlang's ``term_to_binary`` /
``binary_to_term``; ``parse`` / ``format`` read and write terms as the Erlang shell does.
Run it with ``python examples/terms.py``.
"""

from __future__ import annotations

from pyfabric import etf


def main() -> None:
    # Erlang text to Python values and back.
    term = etf.parse('{ok, [1, 2.5, "abc", <<"bin">>, #{key => value}], \'Quoted atom\'}')
    print(f"parsed:    {term!r}")
    print(f"formatted: {etf.format(term)}")

    # The wire form: what term_to_binary(Term) gives in Erlang, and back.
    data = etf.encode(term)
    print(f"encoded:   {len(data)} bytes, {data[:12].hex()}...")
    print(f"round trip equal: {etf.decode(data) == term}")

    # Keys that only Erlang tells apart (1 and 1.0) make an ErlangMap, not a dict.
    both = etf.parse("#{1 => integer, 1.0 => float}")
    print(f"{type(both).__name__}: {etf.format(both)} has {len(both)} keys")
    print(f"re-encoded byte for byte: {etf.encode(etf.decode(etf.encode(both))) == etf.encode(both)}")

    # Erlang has no strings: [104, 105] and "hi" are one term. Strings decode to str by default.
    print(f"a charlist decodes to {etf.decode(etf.encode(etf.parse('[104, 105]')))!r}")

    # Bad text is a ParseError that says where.
    try:
        etf.parse("{unclosed, tuple")
    except etf.ParseError as exc:
        print(f"ParseError: {exc}")


if __name__ == "__main__":
    main()
