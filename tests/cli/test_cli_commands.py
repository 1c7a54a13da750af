"""The pyfabric subcommands against an in-process pyfabric server (the same commands
against a real Erlang server: interop_tests/test_cli.py)."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyfabric
from pyfabric import Atom, Pid
from pyfabric.__main__ import main
from pyfabric._cli import _common
from pyfabric._cli._common import CliError, parse_address, read_secret
from pyfabric._cli._repl import Repl, split_statements
from pyfabric._cli._serve import load_processes
from pyfabric._cli._session import Session, destination

SECRET = "cli-unit-secret"
GEN_CALL = Atom("$gen_call")


async def echo(proc: Any) -> None:
    while True:
        msg = await proc.receive()
        if isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[0], Pid):
            proc.send(msg[0], (proc.pid, msg[1]))


async def kv(proc: Any) -> None:
    """A gen_server-like process: {put, K, V} -> ok, {get, K} -> {ok, V} | error, die -> exits."""
    store: dict[Any, Any] = {}
    while True:
        msg = await proc.receive()
        if isinstance(msg, tuple) and len(msg) == 3 and msg[0] == GEN_CALL:
            (caller, tag), req = msg[1], msg[2]
            if req == Atom("die"):
                raise pyfabric.ProcessExit(Atom("died"))
            if isinstance(req, tuple) and req[0] == Atom("put"):
                store[req[1]] = req[2]
                reply: Any = Atom("ok")
            elif isinstance(req, tuple) and req[0] == Atom("get"):
                reply = (Atom("ok"), store[req[1]]) if req[1] in store else Atom("error")
            else:
                continue  # never answered: the caller times out
            proc.send(caller, (tag, reply))


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("PYFABRIC_SECRET", SECRET)
    with pyfabric.start_server("127.0.0.1", 0, SECRET, allowed=["echo", "kv", "sink"]) as srv:
        srv.register("echo", srv.spawn(echo))
        srv.register("kv", srv.spawn(kv))
        address = f"127.0.0.1:{srv.port}"
        SINKS[address] = srv.mailbox("sink")
        try:
            yield address
        finally:
            SINKS.pop(address).close()


SINKS: dict[str, Any] = {}
"""address -> the server's mailbox registered as ``sink``."""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("127.0.0.1:5555", ("127.0.0.1", 5555)), ("localhost:1", ("localhost", 1)), ("[::1]:80", ("::1", 80))],
)
def test_parse_address(text: str, value: tuple[str, int]) -> None:
    assert parse_address(text) == value


@pytest.mark.parametrize("text", ["5555", "host:", ":5555", "host:0", "host:65536", "host:x"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="HOST:PORT"):
        parse_address(text)


def _args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"secret_file": None, **kw})


def test_secret_from_file_env_and_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"from-file\n")
    monkeypatch.setenv("PYFABRIC_SECRET", "from-env")
    assert read_secret(_args(secret_file=path)) == b"from-file"  # the file wins
    assert read_secret(_args()) == b"from-env"
    monkeypatch.delenv("PYFABRIC_SECRET")
    monkeypatch.setattr(_common, "_have_terminal", lambda: True)
    monkeypatch.setattr(_common.getpass, "getpass", lambda prompt: "typed")
    assert read_secret(_args()) == b"typed"
    monkeypatch.setattr(_common, "_have_terminal", lambda: False)
    with pytest.raises(CliError, match="--secret-file FILE or set PYFABRIC_SECRET") as info:
        read_secret(_args())
    assert info.value.status == 2


@pytest.mark.parametrize(("content", "message"), [(None, "cannot read the secret file"), (b"\n", "is empty")])
def test_secret_file_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "s"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CliError, match=message) as info:
        read_secret(_args(secret_file=path))
    assert info.value.status == 2


def test_secret_is_not_an_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["whereis", "127.0.0.1:1", "x", "--secret", "s"])
    assert info.value.code == 2
    assert "unrecognized arguments: --secret" in capsys.readouterr().err


def test_destination() -> None:
    assert destination(Atom("a")) == Atom("a")
    assert destination("a") == Atom("a")
    assert destination((Atom("a"), Atom("n@h"))) == (Atom("a"), Atom("n@h"))
    with pytest.raises(CliError, match="a destination is") as info:
        destination(42)
    assert info.value.status == 2


# -- commands ---------------------------------------------------------------------------------


def test_whereis(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "whereis", server, "echo")
    assert status == 0 and re.fullmatch(r"<0\.\d+\.\d+>\n", out)
    status, out, _ = run(capsys, "whereis", server, "nothing")
    assert (status, out) == (1, "undefined\n")
    status, _, err = run(capsys, "whereis", server, "{no, a, name}")
    assert status == 2 and "not a registered name" in err


def test_send_reply(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "send", server, "echo", "{self(), [1, 2.5, <<\"b\">>, #{k => \"v\"}]}", "--reply")
    assert status == 0, err
    assert re.fullmatch(r'\{<0\.\d+\.\d+>,\[1,2\.5,<<"b">>,#\{k => "v"\}\]\}\n', out)


def test_send_without_reply_is_delivered(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "send", server, "sink", "{hello, 'World', 16#FF, [$a | \"bc\"]}")
    assert (status, out) == (0, ""), err
    assert SINKS[server].receive(timeout=5) == (Atom("hello"), Atom("World"), 255, "abc")


def test_send_errors(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "send", server, "echo", "{a,")
    assert status == 2 and "bad term: unexpected end of input" in err and "column 4" in err
    status, _, err = run(capsys, "send", server, "42", "x")
    assert status == 2 and "cannot send to 42" in err
    status, _, err = run(capsys, "send", server, "sink", "x", "--reply", "--timeout", "0.3")
    assert status == 3 and "no reply" in err


def test_call(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "call", server, "kv", "{put, k, [1]}")[:2] == (0, "ok\n")
    assert run(capsys, "call", server, "kv", "{get, k}")[:2] == (0, "{ok,[1]}\n")
    status, _, err = run(capsys, "call", server, "kv", "unanswered", "--timeout", "0.3")
    assert status == 3 and "no reply to the call" in err
    status, _, err = run(capsys, "call", server, "nobody", "x")
    assert status == 1 and "no process is registered as nobody" in err
    status, _, err = run(capsys, "call", server, "kv", "die")
    assert status == 1 and "the server exited during the call: died" in err


def test_stats(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "stats", server)
    assert status == 0, err
    fields = dict(line.split(": ", 1) for line in out.splitlines())
    assert fields["mode"] == "extended" and fields["client.state"] == "connected"
    assert re.fullmatch(r"'?py_\w+@[\w.-]+'?", fields["node"])


def test_connection_errors(server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    status, _, err = run(capsys, "whereis", f"127.0.0.1:{closed_port()}", "echo")
    assert status == 4 and "cannot connect" in err and "Is a fabric server listening" in err
    monkeypatch.setenv("PYFABRIC_SECRET", "wrong")
    status, _, err = run(capsys, "whereis", server, "echo")
    assert status == 4 and "authentication" in err and "Check the secret" in err
    assert len(err.splitlines()) == 1  # one event, one line
    status, _, err = run(capsys, "whereis", server, "echo", "--tls-cert", "x.pem")
    assert status == 2 and "need --tls-ca" in err


# -- repl -------------------------------------------------------------------------------------


def test_split_statements() -> None:
    text = "a. b.\nc"
    spans, rest = split_statements(text)
    assert [text[s:e] for s, e in spans] == ["a.", " b."] and text[rest:] == "\nc"
    spans, rest = split_statements('"a. b')  # inside a string: incomplete
    assert spans == [] and rest == 0
    assert split_statements("1.5.")[0] == [(0, 4)]


@pytest.fixture()
def repl(server: str) -> Iterator[tuple[Repl, io.StringIO]]:
    host, port = parse_address(server)
    client = pyfabric.connect(host, port, SECRET)
    session = Session(client, 2.0)
    out = io.StringIO()
    try:
        yield Repl(session, out), out
    finally:
        session.close()


def test_repl_session(repl: tuple[Repl, io.StringIO], caplog: pytest.LogCaptureFixture) -> None:
    shell, out = repl
    caplog.set_level(logging.ERROR, "pyfabric.cli")
    shell.run(iter([
        "P = whereis(echo).\n",
        "P ! {self(), one}, P ! {self(),\n",
        "  two}.\n",
        "recv(5000), recv(5000).\n",
        "self() ! {local, 1}, self() ! [2], flush().\n",
        "X = 1. X = 1. X = 2.\n",
        "call(kv, {put, a, 1}), call(kv, {get, a}).\n",
        "recv(50).\n",
        "f(X), X = 3.\n",
        "b().\n",
        "q().\n",
        "not_reached.\n",
    ]))
    lines = out.getvalue().splitlines()
    pid = shell.show(shell.session.self_pid())
    echo_pid = lines[0]
    assert lines[1] == f"{{{pid},two}}"
    assert lines[2] == f"{{{echo_pid},two}}"  # the value of the last expression
    assert lines[3:6] == ["Shell got {local,1}", "Shell got [2]", "ok"]
    assert lines[6:8] == ["1", "1"]
    assert lines[8:11] == ["{ok,1}", "timeout", "3"]
    assert lines[11:] == [f"P = {echo_pid}", "X = 3", "ok"]
    assert shell.failed == 1
    assert "no match of right hand side value 2 (X is 1)" in caplog.text


def test_repl_errors_name_the_input_line(repl: tuple[Repl, io.StringIO], caplog: pytest.LogCaptureFixture) -> None:
    shell, out = repl
    caplog.set_level(logging.ERROR, "pyfabric.cli")
    shell.run(iter(["ok.\n", "\n", "[1,\n", "  ]}.\n", "Y.\n", "nope(1).\n", "{a, \"open\n"]))
    assert out.getvalue() == "ok\n"
    assert "syntax error at line 4, column 3: a term was expected, found ']'" in caplog.text
    assert "line 5, column 1: variable Y is unbound" in caplog.text
    assert "unknown function nope/1" in caplog.text
    assert "the input ended inside a statement" in caplog.text
    assert shell.failed == 4


def test_repl_prompt(repl: tuple[Repl, io.StringIO]) -> None:
    shell, _out = repl
    assert shell.prompt() == "1> "
    shell.run(iter(["ok.\n", "{a,\n"]))
    assert shell.prompt() == "   "


# -- serve ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("X = 1\n", "defines no PROCESSES"),
        ("PROCESSES = {'a': print}\n", "is not an async function"),
        ("async def f(p): pass\nPROCESSES = {1: f}\n", "is not a name"),
        ("import not_a_module_anywhere\n", "cannot import --module"),
    ],
)
def test_load_processes_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, message: str) -> None:
    name = f"cli_mod_{abs(hash(source))}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CliError, match=message) as info:
        load_processes(name)
    assert info.value.status == 2


SERVED = """
from pyfabric import Pid

async def echo(proc):
    while True:
        sender, msg = await proc.receive()
        proc.send(sender, (proc.pid, msg))

async def quiet(proc):
    await proc.receive()

PROCESSES = {"echo": echo, "quiet": quiet}
"""


def _serve(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    (tmp_path / "cli_served_unit.py").write_text(SERVED)
    env = dict(os.environ, PYFABRIC_SECRET=SECRET)
    return subprocess.Popen(
        [sys.executable, "-m", "pyfabric", "serve", "--module", "cli_served_unit", *extra],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_serve_allow_and_stats(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "--allow", "echo", "--stats", "fabric_stats")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert m, line
        with pyfabric.connect("127.0.0.1", int(m.group(1)), SECRET) as client:
            assert client.whereis("quiet") is None  # defined, but not allowed
            echo_pid = client.whereis("echo")
            assert echo_pid is not None
            with client.mailbox() as box:
                client.send(echo_pid, (box.pid, "hi"))
                assert box.receive(timeout=5) == (echo_pid, "hi")
            session = Session(client, 5)
            stats = session.call(Atom("fabric_stats"), Atom("statistics"))
            assert stats[Atom("connections")] == 1
            assert stats[Atom("registered")] == [Atom("echo"), Atom("fabric_stats"), Atom("quiet")]
            assert session.call(Atom("fabric_stats"), Atom("other")) == (Atom("error"), (Atom("unknown_request"), Atom("other")))
            session.box.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_usage_errors(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "--allow", "nope")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "--allow nope: cli_served_unit.PROCESSES has no such name (it has echo, quiet)" in err


def test_main_leaves_logging_as_it_was(server: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    root = logging.getLogger("pyfabric")
    before = (root.handlers[:], root.level, root.propagate)
    run(capsys, "whereis", server, "nothing", "-vv")
    assert (root.handlers[:], root.level, root.propagate) == before
    caplog.set_level(logging.WARNING, "pyfabric")
    logging.getLogger("pyfabric.protocol").warning("still captured")
    assert "still captured" in caplog.text


def test_serve_and_commands_over_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pyfabric.certs import write_dev_certs

    certs = write_dev_certs(tmp_path / "certs", hostnames=["localhost"], ips=["127.0.0.1"], clients=["cli"])
    assert certs.server_cert is not None and certs.server_key is not None
    proc = _serve(tmp_path, "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    monkeypatch.setenv("PYFABRIC_SECRET", SECRET)
    try:
        assert proc.stdout is not None
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", proc.stdout.readline())
        assert m
        address = f"127.0.0.1:{m.group(1)}"
        status, out, err = run(capsys, "whereis", address, "echo", "--tls-ca", str(certs.ca_cert))
        assert status == 0 and re.fullmatch(r"<0\.\d+\.\d+>\n", out), err
        status, out, err = run(capsys, "whereis", address, "echo", "--timeout", "2")  # plain TCP to a TLS server
        assert status == 4, (out, err)
        other_ca = write_dev_certs(tmp_path / "other", hostnames=["localhost"], ips=["127.0.0.1"])
        status, _, err = run(capsys, "whereis", address, "echo", "--tls-ca", str(other_ca.ca_cert))
        assert status == 4 and "CERTIFICATE_VERIFY_FAILED" in err and "TLS failed: check that --tls-ca" in err, err
        status, _, err = run(capsys, "whereis", address, "echo", "--tls-ca", str(tmp_path / "missing.pem"))
        assert status == 2 and "cannot load the TLS files" in err
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class Terminal:
    """A child process on a pseudo-terminal, read until an expected text appears."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execve(sys.executable, [sys.executable, *argv], env)
        self.seen = b""
        self.done = False

    def expect(self, text: str, timeout: float = 10.0) -> None:
        import select
        import time

        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not seen; got {self.seen.decode(errors='replace')!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"the terminal closed before {text!r}; got {self.seen.decode(errors='replace')!r}"
                self.seen += chunk

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def wait(self) -> int:
        _pid, status = os.waitpid(self.pid, 0)
        self.done = True
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        if not self.done:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()


def test_repl_at_a_terminal(server: str, tmp_path: Path) -> None:
    """Secret typed at the prompt (not echoed), banner, numbered prompts, continuation
    lines, and the history file."""
    env = {k: v for k, v in os.environ.items() if k != "PYFABRIC_SECRET"}
    env["HOME"] = str(tmp_path)
    term = Terminal(["-m", "pyfabric", "repl", server], env)
    try:
        term.expect("fabric secret: ")
        term.type(SECRET)
        term.expect("help(). for help, q(). to quit.")
        assert SECRET.encode() not in term.seen  # getpass does not echo it
        term.expect("1> ")
        term.type("P = whereis(echo).")
        term.expect("2> ")
        term.type("{a,")
        term.expect("   ")
        term.type("P}.")
        term.expect("3> ")
        term.type("q().")
        assert term.wait() == 0
    finally:
        term.kill()
    text = term.seen.decode()
    assert re.search(r"connected to 127\.0\.0\.1:\d+ \(extended, node '?py_\w+@[\w.-]+'?\); self\(\) is <0\.1\.0>", text)
    assert re.search(r"\{a,<0\.2\.0>\}", text)
    assert (tmp_path / ".pyfabric_history").read_text().splitlines() == ["P = whereis(echo).", "{a,", "P}.", "q()."]
