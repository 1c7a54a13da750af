"""``pyfabric repl HOST:PORT``: an interactive shell in Erlang syntax on one connection.

Statements end with ``.`` and may span lines; ``,`` separates expressions evaluated in
order (the last one's value is printed). An expression is a term (variables bound earlier
and the calls below may appear inside), ``Var = Expr`` (binds, or checks a match when
``Var`` is bound), or ``Dest ! Msg`` (sends; its value is ``Msg``). Results go to stdout,
errors to stderr. With a terminal, line editing and history (``~/.pyfabric_history``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .. import Atom, ReceiveTimeout
from ..etf import ParseError, encode
from ..etf import format as format_term
from ..etf._text_lex import Lexer, Token
from ..etf._text_parse import Parser
from ._common import CliError
from ._session import Session

__all__ = ["HELP", "Repl", "run_repl", "split_statements"]

_log = logging.getLogger("pyfabric.cli")
OK_ATOM = Atom("ok")
TIMEOUT_ATOM = Atom("timeout")
HISTORY = "~/.pyfabric_history"

HELP = """\
Statements end with '.'; 'A, B.' evaluates A then B.
  Var = Expr            bind Var (or check that it matches when bound)
  Dest ! Msg            send Msg to Dest: a pid, a registered name, or {Name, Node}
  self()                this shell's pid (replies sent to it wait in its mailbox)
  whereis(Name)         the server's process registered as Name, or undefined
  flush()               print and remove every message in the mailbox
  recv() / recv(Ms)     wait for the next message (default --timeout), or timeout
  call(Name, Req)       gen_server:call(Name, Req); call(Name, Req, Ms) with a timeout
  make_ref()            a new reference
  stats()               this connection's counters
  b()  f()  f(Var)      show bindings, forget all, forget one
  help()                this text
  q()                   quit (end of input quits too)"""


class _Quit(Exception):
    pass


class _ReplParser(Parser):
    """The term parser plus ``=``, ``!``, ``,`` and ``f(Var)``."""

    def __init__(self, text: str, repl: Repl) -> None:
        super().__init__(text, repl.bindings, repl.functions)
        self.repl = repl

    def exprs(self) -> Any:
        value = self.expr()
        while self.is_punct(","):
            self.advance()
            value = self.expr()
        return value

    def expr(self) -> Any:
        tok = self.tok
        if tok.kind == "var":
            self.advance()
            if self.is_punct("="):
                self.advance()
                value = self.expr()
                self.repl.bind(tok.value, value)
                return value
            if tok.value == "_" or tok.value not in self.bindings:
                raise self.error(f"variable {tok.value} is unbound", tok, incomplete=False)
            return self._rest(self.bindings[tok.value])
        return self._rest(self.term())

    def _rest(self, value: Any) -> Any:
        if self.is_punct("!"):
            self.advance()
            msg = self.expr()
            self.repl.session.send(value, msg)
            return msg
        if self.is_punct("="):
            self.advance()
            rhs = self.expr()
            if encode(rhs) != encode(value):
                raise CliError(f"no match of right hand side value {self.repl.show(rhs)}", 1)
            return rhs
        return value

    def _call(self, name_tok: Token) -> Any:
        if name_tok.value == "f":
            self.advance()  # (
            if self.tok.kind == "var":
                var = self.advance()
                self.expect(")", "after f(Var")
                self.repl.bindings.pop(var.value, None)
                return OK_ATOM
            self.expect(")", "in f()")
            self.repl.bindings.clear()
            return OK_ATOM
        return super()._call(name_tok)


def split_statements(text: str) -> tuple[list[tuple[int, int]], int]:
    """The ``(start, end)`` spans of the complete statements of ``text`` (each ending with
    its ``.``) and where the incomplete rest begins.

    Only tokenizes, so nothing is evaluated until a statement is complete. A token error
    that more input cannot fix is raised as :class:`ParseError`.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    try:
        for tok in Lexer(text).tokens():
            if tok.kind == "dot":
                spans.append((start, tok.end))
                start = tok.end
    except ParseError as exc:
        if not exc.incomplete:
            raise
    return spans, start


def _blank(text: str) -> str:
    """``text`` with everything but its line breaks turned into spaces (keeps positions)."""
    return "".join(c if c == "\n" else " " for c in text)


class Repl:
    """Evaluate statements against one :class:`Session`; ``run`` reads them from a stream."""

    def __init__(self, session: Session, out: TextIO) -> None:
        self.session = session
        self.out = out
        self.bindings: dict[str, Any] = {}
        self.failed = 0
        self.count = 1
        self.pending = ""
        s = session
        self.functions: dict[str, Callable[..., Any]] = {
            **s.functions(),
            "flush/0": self._flush,
            "recv/0": lambda: self._recv(None),
            "recv/1": self._recv,
            "call/2": lambda name, req: s.call(name, req),
            "call/3": lambda name, req, ms: s.call(name, req, self._ms(ms)),
            "stats/0": lambda: {Atom(k): v if not isinstance(v, frozenset) else sorted(v) for k, v in s.client.statistics().items()},
            "b/0": self._show_bindings,
            "help/0": self._help,
            "q/0": self._quit,
            "quit/0": self._quit,
        }

    def show(self, value: Any) -> str:
        return format_term(value, node=self.session.node)

    def print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def bind(self, name: str, value: Any) -> None:
        if name == "_":
            return
        if name in self.bindings and encode(self.bindings[name]) != encode(value):
            raise CliError(f"no match of right hand side value {self.show(value)} ({name} is {self.show(self.bindings[name])})", 1)
        self.bindings[name] = value

    @staticmethod
    def _ms(ms: Any) -> float:
        if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
            raise TypeError("the timeout is a number of milliseconds")
        return ms / 1000

    def _flush(self) -> Atom:
        for msg in self.session.pending():
            self.print(f"Shell got {self.show(msg)}")
        return OK_ATOM

    def _recv(self, ms: Any) -> Any:
        try:
            return self.session.receive(None if ms is None else self._ms(ms))
        except ReceiveTimeout:
            return TIMEOUT_ATOM

    def _show_bindings(self) -> Atom:
        for name, value in self.bindings.items():
            self.print(f"{name} = {self.show(value)}")
        return OK_ATOM

    def _help(self) -> Atom:
        self.print(HELP)
        return OK_ATOM

    def _quit(self) -> Any:
        raise _Quit

    def prompt(self) -> str:
        """``N> `` as in erl, or an indent while a statement continues."""
        return "   " if self.pending.strip() else f"{self.count}> "

    def _syntax_error(self, exc: ParseError, line_base: int) -> None:
        self.failed += 1
        _log.error("syntax error at line %d, column %d: %s", line_base + exc.line, exc.column, exc.reason)

    def execute(self, statement: str, line_base: int = 0) -> bool:
        """Evaluate one complete statement and print its value; False once ``q()`` ran.
        Errors name the line as ``line_base`` plus the line inside ``statement``."""
        self.count += 1
        parser = _ReplParser(statement, self)
        try:
            if parser.tok.kind == "dot":
                return True
            value = parser.exprs()
            if parser.tok.kind != "dot":
                raise parser.error(f"expected '.' or ',' after the expression, found {parser.tok.value!r}")
            self.print(self.show(value))
        except _Quit:
            return False
        except ParseError as exc:
            self._syntax_error(exc, line_base)
        except CliError as exc:
            self.failed += 1
            _log.error("%s", exc)
        except (TimeoutError, ConnectionError, ValueError, TypeError) as exc:
            self.failed += 1
            _log.error("%s: %s", type(exc).__name__, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. a protocol error on a send: the shell goes on
            self.failed += 1
            _log.error("%s: %s", type(exc).__name__, exc)
        return True

    def run(self, lines: Iterator[str]) -> None:
        """Read lines until ``q()`` or the end; incomplete statements continue on the next line."""
        buf, base = "", 0  # base: lines of the input before buf
        for line in lines:
            buf += line if line.endswith("\n") else line + "\n"
            try:
                spans, rest = split_statements(buf)
            except ParseError as exc:
                self._syntax_error(exc, base)
                base += buf.count("\n")
                buf = self.pending = ""
                continue
            for start, end in spans:
                # Earlier statements of the same lines are blanked: positions stay those of the input.
                if not self.execute(_blank(buf[:start]) + buf[start:end], base):
                    return
            base += buf.count("\n", 0, rest)
            buf = self.pending = buf[rest:]
        if buf.strip():
            self.failed += 1
            _log.error("the input ended inside a statement (a final '.' is missing): %r", buf.strip()[:60])


def terminal_lines(prompt: Callable[[], str]) -> Iterator[str]:
    """Lines typed at a terminal, with readline editing and history."""
    try:
        import readline
    except ImportError:  # not on every platform
        readline = None  # type: ignore[assignment]
    history = os.path.expanduser(HISTORY)
    if readline is not None:
        try:
            readline.read_history_file(history)
        except OSError:
            pass
    try:
        while True:
            try:
                yield input(prompt())
            except EOFError:
                sys.stdout.write("\n")
                return
            except KeyboardInterrupt:
                sys.stdout.write("\n(interrupted: q(). quits)\n")
    finally:
        if readline is not None:
            try:
                readline.set_history_length(1000)
                readline.write_history_file(history)
            except OSError:
                pass


def run_repl(args: Any) -> int:
    """The ``repl`` command: 0, or 1 when a script on stdin (not a terminal) had a failing statement."""
    from ._common import open_client

    session = Session(open_client(args), args.timeout)
    try:
        repl = Repl(session, sys.stdout)
        interactive = sys.stdin.isatty()
        if interactive:
            host, port = args.address
            peer = session.client.async_client.peer_node
            repl.print(
                f"connected to {host}:{port} ({session.client.mode}"
                + (f", node {format_term(peer)}" if peer is not None else "")
                + f"); self() is {repl.show(session.self_pid())}. help(). for help, q(). to quit."
            )
            repl.run(terminal_lines(repl.prompt))
            return 0
        repl.run(iter(sys.stdin))
        return 1 if repl.failed else 0
    finally:
        session.close()
