"""The ``pyfabric`` command line against a real Erlang fabric server (erlang_peer), and
``pyfabric serve`` with an Erlang client: whereis, send (with a reply), call (a real
gen_server), a scripted repl session on stdin, stats, serve, and the error exits.

Each command runs as its own process (``python -m pyfabric``), with the secret in
``PYFABRIC_SECRET`` as a user would pass it.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from erlnode import erl_string
from interop_support import HOST, SECRET, WAIT, Harness, erl, erl_session  # noqa: F401

PID = r"<0\.\d+\.\d+>"

# A gen_server on the Erlang side, compiled and loaded at test time.
KV_SOURCE = """
-module(cli_kv).
-behaviour(gen_server).
-export([init/1, handle_call/3, handle_cast/2]).
init([]) -> {ok, #{}}.
handle_call({put, K, V}, _From, S) -> {reply, ok, S#{K => V}};
handle_call({get, K}, _From, S) -> {reply, maps:find(K, S), S};
handle_call(die, _From, S) -> {stop, died, S};
handle_call(Other, _From, S) -> {reply, {unknown, Other}, S}.
handle_cast(_, S) -> {noreply, S}.
"""

SERVED_MODULE = '''
from pyfabric import Atom, Pid

async def echo(proc):
    while True:
        msg = await proc.receive()
        if isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[0], Pid):
            proc.send(msg[0], (proc.pid, msg[1]))

async def adder(proc):
    total = 0
    while True:
        msg = await proc.receive()
        if isinstance(msg, tuple) and len(msg) == 3 and msg[0] == Atom("$gen_call"):
            (caller, tag), request = msg[1], msg[2]
            total += request
            proc.send(caller, (tag, total))

PROCESSES = {"echo": echo, "adder": adder}
'''


def pyfabric(*args: str, stdin: str | None = None, secret: str | None = SECRET, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYFABRIC_SECRET"}
    if secret is not None:
        env["PYFABRIC_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "pyfabric", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def server(erl: Harness, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``HOST:PORT`` of an Erlang server with ping, a collector ``cli_sink`` and the
    gen_server ``cli_kv``."""
    src = tmp_path_factory.mktemp("cli_kv") / "cli_kv.erl"
    src.write_text(KV_SOURCE)
    erl.eval(
        f"{{ok, M, Bin}} = compile:file({erl_string(str(src))}, [binary, return_errors]), "
        f"{{module, M}} = code:load_binary(M, {erl_string(str(src))}, Bin), "
        "case whereis(cli_kv) of undefined -> ok; Old -> gen_server:stop(Old) end, "
        "{ok, _} = gen_server:start({local, cli_kv}, cli_kv, [], []), ok"
    )
    erl.cmd("{start_demo, [ping]}")
    erl.cmd("{register, cli_sink, collector}")
    _sid, port = erl.start_server(["ping", "cli_sink", "cli_kv"])
    yield f"{HOST}:{port}"


def test_whereis(server: str) -> None:
    found = pyfabric("whereis", server, "ping")
    assert found.returncode == 0, found.stderr
    assert re.fullmatch(PID + "\n", found.stdout)
    missing = pyfabric("whereis", server, "not_there")
    assert (missing.returncode, missing.stdout) == (1, "undefined\n")


def test_send_with_reply(server: str) -> None:
    done = pyfabric("send", server, "ping", '{self(), {payload, "abababa"}}', "--reply")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\{" + PID + r',\{pong,\{payload,"abababa"\}\}\}' + "\n", done.stdout)


def test_send_delivers_the_term(erl: Harness, server: str) -> None:
    term = '{hello, [1, 2.5, -7], <<"bin">>, #{k => [v]}, \'odd atom\', 123456789012345678901234567890}'
    done = pyfabric("send", server, "cli_sink", term)
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    events = erl.events(1)
    assert "{collector,cli_sink,{hello,[1,2.5,-7],<<\"bin\">>,#{k => [v]},'odd atom',123456789012345678901234567890}}" in events


def test_send_reply_timeout(server: str) -> None:
    done = pyfabric("send", server, "cli_sink", "quiet", "--reply", "--timeout", "0.5")
    assert done.returncode == 3
    assert "no reply" in done.stderr and "--timeout" in done.stderr


def test_call_gen_server(server: str) -> None:
    put = pyfabric("call", server, "cli_kv", "{put, answer, {42, <<\"x\">>}}")
    assert (put.returncode, put.stdout) == (0, "ok\n"), put.stderr
    get = pyfabric("call", server, "cli_kv", "{get, answer}")
    assert (get.returncode, get.stdout) == (0, '{ok,{42,<<"x">>}}\n'), get.stderr
    other = pyfabric("call", server, "cli_kv", "[1, 2]")
    assert other.stdout == "{unknown,[1,2]}\n"


def test_call_unknown_name(server: str) -> None:
    done = pyfabric("call", server, "nobody", "hi")
    assert done.returncode == 1
    assert "no process is registered as nobody" in done.stderr


def test_repl_script(server: str) -> None:
    script = (
        "P = whereis(ping).\n"
        "P ! {self(), {payload, \"x\"}}.\n"
        "R = recv(5000).\n"
        "{_Pid, Pong} = {1, 2}.\n"  # an error: only variables are bound; the session goes on
        "call(cli_kv, {put, n,\n   7}), call(cli_kv, {get, n}).\n"
        "P ! {self(), again}, recv(5000).\n"
        "self() ! {local, [1]}, self() ! two, flush().\n"
        "recv(100).\n"
        "q().\n"
        "never_reached.\n"
    )
    done = pyfabric("repl", server, stdin=script)
    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stderr  # one statement failed
    assert re.fullmatch(PID, lines[0])
    pid = lines[0]
    assert re.fullmatch(r"\{" + PID + r',\{payload,"x"\}\}', lines[1])
    assert lines[2] == f'{{{pid},{{pong,{{payload,"x"}}}}}}'
    assert lines[3] == "{ok,7}"
    assert lines[4] == f"{{{pid},{{pong,again}}}}"
    assert lines[5:] == ["Shell got {local,[1]}", "Shell got two", "ok", "timeout"]
    assert "variable _Pid" in done.stderr or "_Pid" in done.stderr


def test_repl_syntax_error_keeps_going(server: str) -> None:
    done = pyfabric("repl", server, stdin="{a,,}.\nwhereis(ping) =:= x.\n[ok].\n")
    assert done.stdout.splitlines() == ["[ok]"]
    assert "syntax error" in done.stderr and "line 1, column 4" in done.stderr
    assert done.returncode == 1


def test_stats_of_an_erlang_server(server: str) -> None:
    done = pyfabric("stats", server)
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert fields["mode"] == "extended"
    assert fields["server_node"] == "nonode@nohost"
    assert "whereis" in fields["features"]
    assert float(fields["connect_ms"]) > 0
    assert int(fields["client.bytes_in"]) > 0


def test_wrong_secret_and_closed_port(server: str) -> None:
    wrong = pyfabric("whereis", server, "ping", secret="not-the-secret")
    assert wrong.returncode == 4
    assert "authentication" in wrong.stderr and "PYFABRIC_SECRET" in wrong.stderr
    assert wrong.stderr.count("\n") == 1  # reported once
    nosecret = pyfabric("whereis", server, "ping", secret=None)
    assert nosecret.returncode == 2 and "--secret-file" in nosecret.stderr


def test_secret_file(server: str, tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    done = pyfabric("whereis", server, "ping", "--secret-file", str(path), secret=None)
    assert done.returncode == 0, done.stderr


def test_serve_with_an_erlang_client(erl: Harness, tmp_path: Path) -> None:
    (tmp_path / "cli_served.py").write_text(SERVED_MODULE)
    env = dict(os.environ, PYFABRIC_SECRET=SECRET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyfabric", "serve", "--port", "0", "--module", "cli_served", "--stats", "fabric_stats"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        port = int(m.group(1))
        conn = erl.connect(port)
        handle, _pid = erl.whereis(conn, "echo") or (None, None)
        assert handle is not None
        assert erl.cmd(f"{{call, {{handle, {handle}}}, {{hello, <<1,2>>, 3.5}}, 5000}}").endswith(",{hello,<<1,2>>,3.5}}")
        adder = erl.whereis(conn, "adder")
        assert adder is not None
        for n, total in [(5, 5), (10, 15)]:
            assert erl.eval(f'gen_server:call(list_to_pid("{adder[1]}"), {n})') == str(total)
        stats = erl.whereis(conn, "fabric_stats")
        assert stats is not None
        reply = erl.eval(f'gen_server:call(list_to_pid("{stats[1]}"), statistics)')
        assert "connections => 1" in reply and "registered => [adder,echo,fabric_stats]" in reply
        # the same numbers through the command line
        done = pyfabric("stats", f"{HOST}:{port}", "--name", "fabric_stats")
        assert done.returncode == 0, done.stderr
        fields = dict(line.split(": ", 1) for line in done.stdout.splitlines())
        assert fields["remote.connections"] == "2"  # the Erlang client and this command
        assert fields["remote.registered"] == "[adder,echo,fabric_stats]"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT * 2) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


README = Path(__file__).resolve().parents[1] / "README.md"
README_PORT = "5555"


def _command_line_blocks() -> list[list[str]]:
    """The ```console blocks of README's "Command line" section, as lists of lines."""
    text = README.read_text()
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0].strip("\n").splitlines() for block in section.split("```console\n")[1:]]


def _expect(got: str, expected: list[str], what: str) -> None:
    lines = got.splitlines()
    if "..." in expected:
        cut = expected.index("...")
        expected, lines = expected[:cut], lines[:cut]
    assert lines == expected, what


def test_readme_command_line_examples(erl: Harness) -> None:
    """The README's command line examples, run against the README's Erlang server (ping and
    jobs), on an OS-picked port instead of 5555: same commands, same output."""
    erl.cmd("{start_demo, [ping]}")
    erl.eval(
        "case whereis(jobs) of undefined -> ok; Old -> unregister(jobs), exit(Old, kill) end, "
        "Jobs = spawn(fun Loop() -> receive {From, start} -> From ! {self(), spawn(fun() -> receive R -> exit(R) end end)}, "
        "Loop() end end), register(jobs, Jobs), ok"
    )
    blocks = _command_line_blocks()
    assert len(blocks) == 2
    shell, repl = blocks
    assert shell[0].startswith("$ export PYFABRIC_SECRET=")
    secret = shell[0].split("=", 1)[1]
    _sid, port = erl.start_server(["ping", "jobs"], secret=secret)
    commands = [i for i, line in enumerate(shell) if line.startswith("$ pyfabric ")]
    assert len(commands) == 4
    for n, i in enumerate(commands):
        end = commands[n + 1] if n + 1 < len(commands) else len(shell)
        argv = shlex.split(shell[i][len("$ pyfabric "):].replace(README_PORT, str(port)))
        done = pyfabric(*argv, secret=secret)
        assert done.returncode == 0, (shell[i], done.stderr)
        expected = [line.replace(README_PORT, str(port)) for line in shell[i + 1 : end]]
        _expect(done.stdout, expected, shell[i])
    # The shell, driven statement by statement as a person would (the banner is only printed
    # at a terminal). flush() does not wait, and a person types slower than a reply
    # travels: flush() is repeated until the reply is there (at most WAIT s), then its
    # output must be the README's.
    assert repl[0] == "$ pyfabric repl 127.0.0.1:5555" and repl[1].startswith("connected to 127.0.0.1:5555 (extended")
    prompt = re.compile(r"\d+> ")
    steps: list[tuple[str, list[str]]] = []
    for line in repl[2:]:
        if prompt.match(line):
            steps.append((prompt.sub("", line, count=1), []))
        else:
            steps[-1][1].append(line)
    shell_proc = ReplProcess(f"{HOST}:{port}", secret)
    try:
        for statement, expected in steps:
            if statement == "q().":
                assert shell_proc.finish() == 0, shell_proc.stderr()
                break
            if statement == "flush().":
                deadline = time.monotonic() + WAIT
                got = shell_proc.run(statement, until="ok")
                while got == ["ok"] and expected != ["ok"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                    got = shell_proc.run(statement, until="ok")
            else:
                got = shell_proc.run(statement)
            assert got == expected, statement
        else:
            pytest.fail("the README session does not end with q().")
    finally:
        shell_proc.kill()


class ReplProcess:
    """``pyfabric repl`` fed one statement at a time, its output read line by line."""

    def __init__(self, address: str, secret: str) -> None:
        env = dict(os.environ, PYFABRIC_SECRET=secret)
        self.proc = subprocess.Popen([sys.executable, "-m", "pyfabric", "repl", address], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def run(self, statement: str, until: str | None = None) -> list[str]:
        """Send one statement; return its output: one line, or lines up to ``until``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(statement + "\n")
        self.proc.stdin.flush()
        out: list[str] = []
        while True:
            line = self.lines.get(timeout=WAIT * 2)
            assert line is not None, f"repl ended: {self.stderr()}"
            out.append(line)
            if until is None or line == until:
                return out

    def finish(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write("q().\n")
        self.proc.stdin.close()
        return self.proc.wait(timeout=WAIT * 2)

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_send_to_name_at_node(server: str) -> None:
    done = pyfabric("send", server, "{ping, nonode@nohost}", "{self(), at_node}", "--reply")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\{" + PID + r",\{pong,at_node\}\}\n", done.stdout)


@pytest.fixture(scope="module")
def legacy_server(erl: Harness, server: str) -> str:
    """An Erlang server that behaves exactly like the original 2010 one (MD5 only, no whereis)."""
    _sid, port = erl.start_server(["ping", "cli_kv"], mode="legacy", allow_legacy_auth="true")
    return f"{HOST}:{port}"


def test_original_server(legacy_server: str) -> None:
    refused = pyfabric("send", legacy_server, "ping", "{self(), x}", "--reply")
    assert refused.returncode == 4 and "--allow-legacy-auth" in refused.stderr
    done = pyfabric("send", legacy_server, "ping", '{self(), {payload, "old"}}', "--reply", "--allow-legacy-auth")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\{" + PID + r',\{pong,\{payload,"old"\}\}\}\n', done.stdout)
    no_whereis = pyfabric("whereis", legacy_server, "ping", "--allow-legacy-auth")
    assert no_whereis.returncode == 1 and "cannot do this" in no_whereis.stderr and "send to the name instead" in no_whereis.stderr
    # gen_server:call by name still works: there is no whereis to monitor the server first
    call = pyfabric("call", legacy_server, "cli_kv", "{put, legacy, yes}", "--allow-legacy-auth")
    assert (call.returncode, call.stdout) == (0, "ok\n"), call.stderr
    stats = pyfabric("stats", legacy_server, "--allow-legacy-auth")
    assert stats.returncode == 0, stats.stderr
    assert "mode: legacy" in stats.stdout and "server_node: unknown (original server)" in stats.stdout
