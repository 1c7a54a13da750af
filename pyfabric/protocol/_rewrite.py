"""Payload rewriting (docs/protocol.md section 4.1): the hot path.

``Rewriter.outbound`` turns a Python value into its wire form (tuples wrapped in
``{t, T}``, pids as ``{pr, Id}`` / ``{pl, Id}``, references as ``{r, Bin}`` ...);
``Rewriter.inbound`` undoes it, strictly. Both dispatch on the exact type with the
common plain leaves tested first and recurse per container, so the cost per element is
one ``type()`` and one set lookup for leaves.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Any

from ..etf import (
    Atom,
    BitString,
    DecodeError,
    DecodeLimits,
    ErlangMap,
    ExportFun,
    FrozenDict,
    FrozenList,
    Fun,
    ImproperList,
    Pid,
    Port,
    Reference,
    decode,
    encode,
)
from ._errors import FeatureNotSupported, LocalProtocolError, RemoteProtocolError
from ._events import DeadPidSubstituted, ProxyCreated
from ._session import Session

__all__ = ["Rewriter", "describe", "A_T", "A_PR", "A_PL", "A_R", "A_PO", "A_F"]

A_T = Atom("t")
A_PR = Atom("pr")
A_PL = Atom("pl")
A_R = Atom("r")
A_PO = Atom("po")
A_F = Atom("f")
_CANON = {a: a for a in (A_T, A_PR, A_PL, A_R, A_PO, A_F)}

# Values that are the same on the wire. ``str`` is a charlist (no pid can hide in it);
# bool and None encode as the atoms true/false/undefined.
_PLAIN_OUT = frozenset({int, float, Atom, bytes, str, bool, type(None), bytearray, memoryview})
# What the decoder produces for leaves that need no undoing.
_PLAIN_IN = frozenset({int, float, Atom, bytes, str})
# Subclasses (IntEnum, namedtuple, OrderedDict ...) are rewritten as the first of these they are.
_BASES: tuple[type, ...] = (bool, int, float, str, bytes, tuple, list, dict)


def _freeze(value: Any) -> Any:
    """A hashable equivalent of a rewritten map key (lists and maps inside keys)."""
    t = type(value)
    if t is list:
        return FrozenList(_freeze(x) for x in value)
    if t is tuple:
        return tuple(_freeze(x) for x in value)
    if t is dict:
        return FrozenDict((_freeze(k), _freeze(v)) for k, v in value.items())
    if t is ImproperList:
        return ImproperList(tuple(_freeze(x) for x in value.elements), _freeze(value.tail))
    return value


class Rewriter:
    """Rewrites payloads for one connection, against its :class:`Session` tables.

    Outbound, newly exported pids are recorded (``new_exports``) so the connection can
    roll them back if the frame is not sent, and those that are already dead are listed
    in ``dead_exports`` (the connection sends their ``DEAD noproc`` after the frame).
    Inbound, ``events`` collects the ``ProxyCreated`` / ``DeadPidSubstituted`` events to
    emit before the event that carries the payload.
    """

    def __init__(
        self,
        session: Session,
        *,
        features: frozenset[str],
        extended: bool = False,
        is_alive: Callable[[Pid], bool],
        new_proxy_pid: Callable[[int], Pid],
        new_dead_pid: Callable[[int], Pid],
        limits: DecodeLimits,
        max_proxies: int | None = None,
        max_exports: int | None = None,
        strings: str = "str",
    ) -> None:
        self.session = session
        # strings="list": received charlists (STRING_EXT, a str) are delivered as list[int]
        self.plain_in = _PLAIN_IN if strings == "str" else _PLAIN_IN - {str}
        self.maps = "maps" in features
        self.bitstrings = "bitstrings" in features
        self.ports = "ports" in features
        self.funs = "funs" in features
        self.extended = extended
        self.is_alive = is_alive
        self.new_proxy_pid = new_proxy_pid
        self.new_dead_pid = new_dead_pid
        self.limits = limits
        self.max_proxies = max_proxies
        self.max_exports = max_exports
        self.new_exports: list[Pid] = []
        self.dead_exports: list[int] = []
        self.events: list[Any] = []
        # pids met by outbound rewrites (reset by the caller): a frame without any can be
        # kept encoded while it waits, nothing of the session's tables is in it
        self.pids_seen = 0

    # -- outbound -------------------------------------------------------------------

    def outbound(self, value: Any) -> Any:
        """The wire form of ``value``; raises LocalProtocolError (nothing is sent)."""
        try:
            return self._out(value)
        except RecursionError:
            raise LocalProtocolError("bad_payload", "payload is nested too deeply to send") from None

    def _out(self, v: Any) -> Any:
        t = type(v)
        if t in _PLAIN_OUT:
            return v
        plain = _PLAIN_OUT
        out = self._out
        if t is tuple:
            return (A_T, tuple([x if type(x) in plain else out(x) for x in v]))
        if t is list:
            return [x if type(x) in plain else out(x) for x in v]
        if t is Pid:
            return self._out_pid(v)
        if t is Reference:
            return (A_R, encode(v, minor_version=1))
        if t is ImproperList:
            tail = v.tail
            return ImproperList(
                tuple([x if type(x) in plain else out(x) for x in v.elements]),
                tail if type(tail) in plain else out(tail),
            )
        if t is dict or t is FrozenDict:
            if not self.maps:
                raise FeatureNotSupported("maps", "maps cannot be sent to this peer (an original peer, or 'maps' not agreed)", "bad_payload")
            result = {}
            for key, item in v.items():
                wire_key = key if type(key) in plain else out(key)
                try:
                    hash(wire_key)
                except TypeError:
                    wire_key = _freeze(wire_key)
                result[wire_key] = item if type(item) in plain else out(item)
            return result
        if t is FrozenList:
            return [x if type(x) in plain else out(x) for x in v]
        if t is ErlangMap:
            if not self.maps:
                raise FeatureNotSupported("maps", "maps cannot be sent to this peer (an original peer, or 'maps' not agreed)", "bad_payload")
            return ErlangMap((k if type(k) in plain else out(k), x if type(x) in plain else out(x)) for k, x in v.pairs)
        if t is BitString:
            if not self.bitstrings:
                raise FeatureNotSupported("bitstrings", "non-byte bitstrings cannot be sent to this peer (an original peer, or 'bitstrings' not agreed)", "bad_payload")
            return v
        if t is Port:
            if not self.ports:
                raise FeatureNotSupported("ports", "ports cannot be sent to this peer (an original peer, or 'ports' not agreed)", "bad_payload")
            return (A_PO, encode(v, minor_version=1))
        if t is Fun or t is ExportFun:
            if not self.funs:
                raise FeatureNotSupported("funs", "funs cannot be sent to this peer (an original peer, or 'funs' not agreed)", "bad_payload")
            return (A_F, v.arity, encode(v, minor_version=1))
        if isinstance(v, (int, float, str, bytes, tuple, list, dict)):
            # Subclasses (IntEnum, namedtuple, OrderedDict ...): rewrite as the base type.
            for base in _BASES:
                if isinstance(v, base):
                    return self._out(base(v))
        raise LocalProtocolError("bad_payload", f"a value of type {t.__module__}.{t.__qualname__} has no Erlang form")

    def _out_pid(self, pid: Pid) -> tuple[Atom, int]:
        self.pids_seen += 1
        session = self.session
        ident = session.proxy_ids.get(pid)
        if ident is not None:
            return (A_PL, ident)
        ident = session.dead_proxy_ids.get(pid)
        if ident is not None:
            return (A_PL, ident)  # a dead proxy: the peer maps it back to its ended process
        ident = session.export_ids.get(pid)
        if ident is None and self.extended:
            # An ended export shipped again keeps its id, so our peer (which remembers dead
            # proxies) sees the same pid; its DEAD is sent again (docs/protocol.md 4.3).
            # An original peer does not remember: it gets a new id, as the original does.
            ident = session.ended_export_ids.get(pid)
            if ident is not None:
                self.dead_exports.append(ident)
                return (A_PR, ident)
        if ident is None:
            limit = self.max_exports
            if limit is not None and len(session.exports) >= limit:
                raise LocalProtocolError(
                    "limit",
                    f"{pid!r} cannot be sent: this connection already exports {limit} local processes "
                    "(max_exports); an export is released when its process ends",
                )
            ident, _ = session.export(pid)
            self.new_exports.append(pid)
            if not self.is_alive(pid):
                self.dead_exports.append(ident)
        return (A_PR, ident)

    def export_pid(self, pid: Pid) -> int:
        """The ``{pr, Id}`` id of local ``pid`` (exporting it: part of the current frame)."""
        return self._out_pid(pid)[1]

    def commit(self) -> tuple[list[int], list[Pid]]:
        """The frame was queued: keep the new exports. Returns the ids to send DEAD for
        and the pids this frame exported for the first time."""
        dead = list(dict.fromkeys(self.dead_exports))  # a pid may appear twice in one payload
        new = self.new_exports
        self.new_exports = []
        self.dead_exports = []
        return dead, new

    def rollback(self) -> None:
        """The frame was not sent: forget the exports it made (the peer never saw them)."""
        session = self.session
        for pid in reversed(self.new_exports):
            session.forget_export(pid)
        self.new_exports = []
        self.dead_exports = []

    # -- inbound --------------------------------------------------------------------

    def inbound(self, value: Any) -> Any:
        """Undo the rewriting of a received payload; raises RemoteProtocolError
        (``bad_payload``). New proxies are created as a side effect (see ``events``)."""
        try:
            return self._in(value)
        except RecursionError:
            raise RemoteProtocolError("bad_payload", "payload nested too deeply") from None

    def _in(self, v: Any) -> Any:
        t = type(v)
        plain = self.plain_in
        if t in plain:
            return v
        if t is str:  # strings="list"
            return list(v.encode("latin-1"))
        inn = self._in
        if t is tuple:
            n = len(v)
            if n == 2:
                tag, arg = v
                if tag is A_T:
                    if type(arg) is not tuple:
                        raise _bad("{t, X} with X not a tuple")
                    return tuple([x if type(x) in plain else inn(x) for x in arg])
                if tag is A_PR:
                    return self.proxy_for(arg)
                if tag is A_PL:
                    return self._in_local(arg)
                if tag is A_R:
                    return self._opaque(arg, Reference, "reference")
                if tag is A_PO and self.ports:
                    return self._opaque(arg, Port, "port")
            elif n == 3:
                if v[0] is A_F and self.funs:
                    return self._in_fun(v[1], v[2])
            if n and v[0].__class__ is Atom:
                # An equal but not interned marker atom (the intern table was full).
                canon = _CANON.get(v[0])
                if canon is not None and canon is not v[0]:
                    return inn((canon, *v[1:]))
            raise _bad(f"untagged tuple or unknown marker {describe(v)} in payload")
        if t is list:
            return [x if type(x) in plain else inn(x) for x in v]
        if t is ImproperList:
            tail = v.tail
            elements = [x if type(x) in plain else inn(x) for x in v.elements]
            if tail == "":  # [a | ""], only from a hand-made encoding: the proper list [a]
                return elements
            return ImproperList(tuple(elements), tail if type(tail) in plain else inn(tail))
        if t is dict:
            if not self.maps:
                raise _bad("a map in the payload ('maps' not agreed)")
            result = {}
            for key, item in v.items():
                key = key if type(key) in plain else _freeze(inn(key))
                result[key] = item if type(item) in plain else inn(item)
            if len(result) != len(v):  # keys equal in Python once restored (like {1} and {1.0})
                try:
                    return inn(ErlangMap(v.items()))
                except ValueError as exc:
                    raise _bad(f"a map in the payload with equal keys: {exc}") from None
            return result
        if t is ErlangMap:
            if not self.maps:
                raise _bad("a map in the payload ('maps' not agreed)")
            try:
                return ErlangMap((k if type(k) in plain else _freeze(inn(k)), x if type(x) in plain else inn(x)) for k, x in v.pairs)
            except ValueError as exc:
                raise _bad(f"a map in the payload with equal keys: {exc}") from None
        if t is FrozenDict or t is FrozenList:  # only inside map keys, which need maps
            if not self.maps:
                raise _bad("a map in the payload ('maps' not agreed)")
            inner = inn(v.todict() if t is FrozenDict else v.tolist())
            return _freeze(inner)
        if t is BitString:
            if not self.bitstrings:
                raise _bad("a non-byte bitstring in the payload ('bitstrings' not agreed)")
            return v
        raise _bad(f"a bare {t.__name__} in the payload (not a protocol marker)")

    def proxy_for(self, ident: Any) -> Pid:
        """The proxy for the peer's process ``ident`` (creating it, with an event)."""
        if type(ident) is not int or ident < 1:
            raise _bad(f"{{pr, Id}} with a bad id {describe(ident)}")
        session = self.session
        pid = session.proxies.get(ident)
        if pid is None:
            pid = session.dead_proxies.get(ident)
            if pid is not None:
                return pid  # the peer shipped a process we know has ended: the same dead proxy
            limit = self.max_proxies
            if limit is not None and len(session.proxies) >= limit:
                raise RemoteProtocolError(
                    "limit",
                    f"the peer's process id {ident} would be proxy number {limit + 1} (max_proxies {limit}); "
                    "a proxy is released when the peer reports its process DEAD",
                )
            pid = self.new_proxy_pid(ident)
            session.add_proxy(ident, pid)
            self.events.append(ProxyCreated(pid, ident))
        return pid

    def _in_local(self, ident: Any) -> Pid:
        if type(ident) is not int or ident < 0:
            raise _bad(f"{{pl, Id}} with a bad id {describe(ident)}")
        pid = self.session.exports.get(ident)
        if pid is None:
            pid = self.session.ended_exports.get(ident)
        if pid is None:
            pid = self.new_dead_pid(ident)
            self.events.append(DeadPidSubstituted(ident, pid))
        return pid

    def _opaque(self, data: Any, kind: type, what: str) -> Any:
        if type(data) is not bytes:
            raise _bad(f"{what} handle is not a binary")
        try:
            value = decode(data, limits=self.limits)
        except DecodeError as exc:
            raise _bad(f"{what} handle does not decode: {exc}") from None
        if type(value) is not kind:
            raise _bad(f"{what} handle holds a {type(value).__name__}")
        return value

    def _in_fun(self, arity: Any, data: Any) -> Any:
        if type(arity) is not int or type(data) is not bytes:
            raise _bad("{f, Arity, Bin} with a bad Arity or Bin")
        try:
            # The handle is opaque and inert: decoded only to deliver a Fun value.
            value = decode(data, safe=False, limits=self.limits)
        except DecodeError as exc:
            raise _bad(f"fun handle does not decode: {exc}") from None
        if type(value) not in (Fun, ExportFun) or value.arity != arity:
            raise _bad("fun handle does not hold a fun of that arity")
        return value


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError("bad_payload", message)


_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = 40
_repr.maxother = 40


def describe(value: Any) -> str:
    """A bounded description of an untrusted value (never a full repr of a huge term)."""
    try:
        return _repr.repr(value)
    except Exception:  # pragma: no cover - defensive: a repr must never raise here
        return f"<{type(value).__name__}>"
