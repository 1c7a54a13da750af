"""The options behind ``**options`` are visible (help(), inspect, type checkers) and agree with the code."""

from __future__ import annotations

import dataclasses
import inspect
import pydoc
from collections.abc import Callable
from typing import Any

import pytest

import pyfabric
from pyfabric.protocol import ConnectionConfig
from pyfabric.transport._options import PeerOptions
from pyfabric.transport._signature import (
    BlockingConnectOptions,
    BlockingServeOptions,
    ConnectOptions,
    ServeOptions,
    option_parameters,
)

SECRET = b"signature-secret"


def _own_keywords(fn: Callable[..., Any]) -> set[str]:
    """The keyword-only parameters written in ``fn``'s own def (not its ``__signature__``)."""
    code = fn.__code__
    return set(code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount])


def _keys(typed_dict: Any) -> set[str]:
    return set(typed_dict.__required_keys__ | typed_dict.__optional_keys__)


CASES = [
    (pyfabric.aconnect, ConnectOptions),
    (pyfabric.serve, ServeOptions),
    (pyfabric.connect, BlockingConnectOptions),
    (pyfabric.start_server, BlockingServeOptions),
]


@pytest.mark.parametrize(("fn", "typed_dict"), CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_typed_dict_names_exactly_the_signature_options(fn: Callable[..., Any], typed_dict: Any) -> None:
    signature = inspect.signature(fn)
    assert not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()), "help() would show **options"
    keywords = {name for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert _keys(typed_dict) == keywords - _own_keywords(fn)


def test_signature_options_are_the_config_and_peer_options() -> None:
    derived = {p.name for p in option_parameters()}
    fields = {f.name for f in dataclasses.fields(ConnectionConfig)}
    # every ConnectionConfig field is an option, except those a transport takes otherwise
    assert fields - derived == {"secret", "compress_messages", "heartbeat_interval"}
    peer = {n for n, p in inspect.signature(PeerOptions.build).parameters.items() if p.kind is p.KEYWORD_ONLY} - {"options"}
    assert peer <= derived and derived == _keys(ConnectOptions)
    assert derived - {"when_disconnected"} == _keys(ServeOptions)


def test_every_listed_option_is_accepted_with_its_default() -> None:
    defaults = {p.name: p.default for p in option_parameters() if p.default is not p.empty}
    assert "strings" in defaults and "max_frame" in defaults
    options, plain = PeerOptions.build(SECRET, **defaults), PeerOptions.build(SECRET)
    assert dataclasses.replace(options, config=plain.config) == plain  # NamePolicy compares by identity
    for field in dataclasses.fields(ConnectionConfig):
        if field.name != "allowed":
            assert getattr(options.config, field.name) == getattr(plain.config, field.name), field.name
    with pytest.raises(TypeError, match="unknown connection options"):
        PeerOptions.build(SECRET, not_an_option=1)


def test_help_lists_the_options() -> None:
    text = pydoc.render_doc(pyfabric.connect, renderer=pydoc.plaintext)
    for name in ("strings", "max_frame", "reconnect", "when_disconnected", "send_timeout"):
        assert f"{name}:" in text or f"{name}=" in text, name
    assert "**options" not in text.split("\n\n")[1]
