"""pyfabric.etf.parse / format against a real erl, both ways:

- terms printed by Erlang (``io_lib:format`` with ``~0p``, ``~p``, ``~0tp``, ``~tp``) parse
  in Python to the term Erlang has (checked by Erlang with ``=:=`` on what Python encodes);
- ``format`` output read back by ``erl_scan:string`` + ``erl_parse:parse_term`` is the
  same term (``=:=`` with the term Python encodes);
- floats are printed exactly as Erlang prints them.

A missing erl/erlc fails these tests (never skips).
"""

from __future__ import annotations

import os
import pathlib
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfabric import etf
from pyfabric.etf import Atom

TRUE = Atom("true")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "cli"))
from term_strategies import floats, terms  # noqa: E402

# Hypothesis warns that the (recursive) strategy's own repr is large: noise, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

HELPER = r"""
-module(etf_text_helper).
-export([main/0]).

main() ->
    Port = open_port({fd, 0, 1}, [binary, {packet, 4}, eof]),
    loop(Port).

loop(Port) ->
    receive
        {Port, {data, B}} ->
            Reply = try handle(binary_to_term(B)) catch C:R:S -> {crash, C, R, S} end,
            port_command(Port, term_to_binary(Reply)),
            loop(Port);
        {Port, eof} ->
            halt(0)
    end.

handle({texts, B}) ->
    T = binary_to_term(B),
    {ok, [{Text, parse(Text) =:= {ok, T}} || F <- ["~0p", "~p", "~0tp", "~tp"], Text <- [text(F, T)]]};
handle({texts_of, Source}) ->
    {ok, T} = parse(Source),
    handle({texts, term_to_binary(T)});
handle({check, Text, B}) ->
    case parse(Text) of
        {ok, T} -> {ok, T =:= binary_to_term(B)};
        Error -> Error
    end;
handle({same, A, B}) ->
    {ok, binary_to_term(A) =:= binary_to_term(B)};
handle({gen, Seed, N}) ->
    rand:seed(exsss, {Seed, Seed + 1, Seed + 2}),
    {ok, [term_to_binary(gen(3)) || _ <- lists:seq(1, N)]};
handle({floats, Fs}) ->
    {ok, [text("~p", F) || F <- Fs]}.

text(Format, T) -> unicode:characters_to_binary(io_lib:format(Format, [T])).

parse(Text) ->
    case erl_scan:string(unicode:characters_to_list(Text) ++ " .") of
        {ok, Tokens, _} ->
            case erl_parse:parse_term(Tokens) of
                {ok, T} -> {ok, T};
                {error, E} -> {error, parse, E}
            end;
        {error, E, _} -> {error, scan, E}
    end.

pick(L) -> lists:nth(rand:uniform(length(L)), L).

gen(0) -> leaf();
gen(D) ->
    case rand:uniform(8) of
        1 -> list_to_tuple([gen(D - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)]);
        2 -> [gen(D - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)];
        3 -> maps:from_list([{key(), gen(D - 1)} || _ <- lists:seq(1, rand:uniform(4) - 1)]);
        4 -> [gen(D - 1), gen(D - 1) | leaf()];
        _ -> leaf()
    end.

key() -> pick([a, b, 'K', 1, 2, -3, "s", <<"b">>, {x, 1}, [1, 2], 'with space']).

leaf() ->
    case rand:uniform(12) of
        1 -> pick([ok, '', 'hello world', 'after', 'Caps', 'a\'b', 'a\\b', 'tab\there', 'é', 'ÿß',
                   list_to_atom([16#2603]), list_to_atom("maybe"), list_to_atom("else"), true, undefined, 'fun']);
        2 -> rand:uniform(1000) - 500;
        3 -> (rand:uniform(1 bsl 200) - (1 bsl 199)) * pick([1, 1 bsl 300]);
        4 -> pick([0.0, -0.0, 1.0, 0.1, 1.0e10, 1.0e-10, 1.0e3, 100.0, 5.0e-324, 1.7976931348623157e308])
             + 0.0 * rand:uniform();
        5 -> (rand:uniform() - 0.5) * math:pow(10, rand:uniform(600) - 300);
        6 -> [rand:uniform(95) + 31 || _ <- lists:seq(1, rand:uniform(6) - 1)];
        7 -> [rand:uniform(16#3000) || _ <- lists:seq(1, rand:uniform(5))];
        8 -> crypto_free_bytes(rand:uniform(6) - 1);
        9 -> unicode:characters_to_binary([rand:uniform(16#3000) + 31 || _ <- lists:seq(1, rand:uniform(4))]);
        10 -> <<(rand:uniform(255)):8, (rand:uniform(7)):3>>;
        11 -> fun lists:map/2;
        12 -> pick(["", "a\nb", [0, 1, 2], "\"q\"", [$\\]])
    end.

crypto_free_bytes(N) -> list_to_binary([rand:uniform(256) - 1 || _ <- lists:seq(1, N)]).
"""


class ErlText:
    """One long-running erl that answers {packet, 4} framed requests."""

    def __init__(self, beam_dir: str) -> None:
        erl = shutil.which("erl")
        if erl is None:
            pytest.fail("erl not found on PATH: these tests need Erlang/OTP (make erlang)")
        self.proc = subprocess.Popen([erl, "-noinput", "-pa", beam_dir, "-run", "etf_text_helper", "main"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    def _read(self, size: int, timeout: float = 30.0) -> bytes:
        assert self.proc.stdout is not None
        fd, chunks, deadline = self.proc.stdout.fileno(), [], time.monotonic() + timeout
        while size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                pytest.fail(f"erl did not answer within {timeout}s")
            chunk = os.read(fd, size)
            if not chunk:
                pytest.fail(f"erl died (exit code {self.proc.poll()})")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def ask(self, request: Any) -> Any:
        assert self.proc.stdin is not None
        data = etf.encode(request)
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()
        (size,) = struct.unpack(">I", self._read(4))
        reply = etf.decode(self._read(size), safe=False, limits=etf.RELAXED_LIMITS)
        if not (isinstance(reply, tuple) and reply[0] == Atom("ok")):
            pytest.fail(f"erl answered {reply!r} to {request!r}")
        return reply[1]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def erl() -> Iterator[ErlText]:
    erlc = shutil.which("erlc")
    if erlc is None:
        pytest.fail("erlc not found on PATH: these tests need Erlang/OTP (make erlang)")
    with tempfile.TemporaryDirectory(prefix="etf_text_") as tmp:
        src = pathlib.Path(tmp) / "etf_text_helper.erl"
        src.write_text(HELPER, encoding="utf-8")
        proc = subprocess.run([erlc, "-o", tmp, str(src)], capture_output=True, text=True, errors="replace", timeout=120, check=False)
        if proc.returncode != 0:
            pytest.fail(f"erlc failed:\n{proc.stdout}\n{proc.stderr}")
        node = ErlText(tmp)
        try:
            yield node
        finally:
            node.close()


def _text(b: bytes) -> str:
    return b.decode("utf-8")


def _check_erlang_texts(erl: ErlText, encoded: bytes) -> None:
    """Every way Erlang prints the term parses in Python to that same term, whenever
    Erlang's own erl_parse reads the text back as the term. Erlang prints faithfully
    except for external funs: ``~p`` writes their atoms unquoted (``fun 'A':after/0`` as
    ``fun A:after/0``, which is not even a term) and non-Latin-1 ones as UTF-8 bytes."""
    for raw, faithful in erl.ask((Atom("texts"), encoded)):
        text = _text(raw)
        if faithful != TRUE:
            assert "fun " in text, f"Erlang does not read back its own {text!r}"
            continue
        parsed = etf.parse(text)
        assert erl.ask((Atom("same"), etf.encode(parsed), encoded)) == TRUE, text


PORTABLE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PORTABLE
@given(terms)
def test_format_is_read_by_erl_parse_as_the_same_term(erl: ErlText, term: Any) -> None:
    text = etf.format(term)
    assert erl.ask((Atom("check"), text.encode("utf-8"), etf.encode(term))) == TRUE, text


@PORTABLE
@given(terms)
def test_erlang_printed_python_terms_parse_back(erl: ErlText, term: Any) -> None:
    _check_erlang_texts(erl, etf.encode(term))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_erlang_generated_terms_parse_from_every_print_format(erl: ErlText, seed: int) -> None:
    encoded = erl.ask((Atom("gen"), seed, 150))
    assert len(encoded) == 150
    for one in encoded:
        term = etf.decode(one, safe=False)
        _check_erlang_texts(erl, one)
        # and our own printing of Erlang's term reads back in Erlang
        assert erl.ask((Atom("check"), etf.format(term).encode(), one)) == TRUE, etf.format(term)


@settings(max_examples=300, deadline=None)
@given(st.lists(floats, min_size=1, max_size=50))
def test_floats_print_exactly_as_erlang(erl: ErlText, values: list[float]) -> None:
    expected = [_text(b) for b in erl.ask((Atom("floats"), values))]
    assert [etf.format(v) for v in values] == expected


def test_map_keys_one_and_one_point_zero(erl: ErlText) -> None:
    """Erlang's #{1 => a, 1.0 => b} has no dict form: it parses to an ErlangMap, read back by Erlang."""
    texts = [_text(raw) for raw, _faithful in erl.ask((Atom("texts_of"), b"#{1 => a, 1.0 => b}"))]
    assert "#{1 => a,1.0 => b}" in texts
    expected = etf.ErlangMap([(1, Atom("a")), (1.0, Atom("b"))])
    for text in texts:
        assert etf.parse(text) == expected
    assert erl.ask((Atom("check"), etf.format(expected).encode(), etf.encode(expected))) == TRUE
