"""Every code example in README.md runs, against real Erlang where it talks to Erlang.

Examples are found by the README section they sit in; each section's own port (5555, 5556,
5557) is replaced by a port the OS picked. A README edit that breaks an example, or that adds one
this file does not run, fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EBIN = ROOT / "erlang_peer" / "_build" / "default" / "lib" / "fabric_peer" / "ebin"
EXAMPLE_PORT = "5555"  # Python client, Erlang server
PYSERVER_PORT = "5556"  # Python server, Erlang client
SECURITY_PORT = "5557"  # Security
ROUTING_PORT = "5558"  # Clients talking to each other
GLOBAL_PORT = "5559"  # Global names


def _sections() -> dict[str, list[tuple[str, str]]]:
    """``{heading: [(language, code), ...]}`` for every fenced block with a language."""
    sections: dict[str, list[tuple[str, str]]] = {}
    heading = ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("```") and len(line) > 3:
            lang = line[3:].strip()
            body = []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            sections.setdefault(heading, []).append((lang, "\n".join(body) + "\n"))
        i += 1
    return sections


SECTIONS = _sections()


def _blocks(heading: str, lang: str) -> list[str]:
    return [code for language, code in SECTIONS.get(heading, []) if language == lang]


def test_every_example_is_run_here() -> None:
    run_here = {
        "Python client, Erlang server": {"erlang": 1, "python": 2},
        "Python server, Erlang client": {"erlang": 1, "python": 1},
        "Processes in Python": {"python": 1},
        "Clients talking to each other": {"python": 1},
        "Security": {"python": 1},
        "Global names": {"erlang": 1, "python": 1},
    }
    found = {
        heading: {lang: len(_blocks(heading, lang)) for lang in {lang for lang, _ in blocks}}
        for heading, blocks in SECTIONS.items()
        if any(lang in ("python", "erlang") for lang, _ in blocks)
    }
    assert found == run_here


def _erl() -> str:
    erl = shutil.which("erl")
    assert erl is not None, "erl is not installed: run `make setup`"
    assert (EBIN / "fabric_peer.beam").exists(), "erlang_peer is not built: run `make peer`"
    return erl


def _run_python(code: str, timeout: float = 60, cwd: Path = ROOT) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, f"example failed:\n{code}\nstderr:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def erlang_ping_server():
    """The README's Erlang server example, run in a real erl on a port the OS picks."""
    (code,) = _blocks("Python client, Erlang server", "erlang")
    assert f"start_server({EXAMPLE_PORT}," in code
    code = code.replace(f"start_server({EXAMPLE_PORT},", "start_server(0,").rstrip().rstrip(".")
    script = code + ', io:format("port ~b~n", [fabric_peer:port(Server)]), receive stop -> ok end.'
    proc = subprocess.Popen(
        [_erl(), "-noshell", "-pa", str(EBIN), "-eval", script], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"port (\d+)\n", line)
        assert match, f"the Erlang example did not start: {line!r}"
        yield int(match.group(1))
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_blocking_client_example(erlang_ping_server: int) -> None:
    code = _blocks("Python client, Erlang server", "python")[0].replace(EXAMPLE_PORT, str(erlang_ping_server))
    out = _run_python(code).splitlines()
    assert out[0] == "(Atom('pong'), (Atom('payload'), 'abababa'))"
    assert out[1].endswith("(Atom('pong'), 'again'))")


def test_async_client_example(erlang_ping_server: int) -> None:
    code = _blocks("Python client, Erlang server", "python")[1].replace(EXAMPLE_PORT, str(erlang_ping_server))
    out = _run_python(code).splitlines()
    assert out == ["(Atom('pong'), (Atom('payload'), 'abababa'))", "(Atom('done'), 42)"]


def test_client_examples_run_one_after_another_against_one_server(erlang_ping_server: int) -> None:
    """A user runs the examples in any order against the one server they started."""
    blocking, asynchronous = (
        code.replace(EXAMPLE_PORT, str(erlang_ping_server)) for code in _blocks("Python client, Erlang server", "python")
    )
    for code in (asynchronous, blocking, asynchronous, blocking):
        assert _run_python(code).splitlines()[0] == "(Atom('pong'), (Atom('payload'), 'abababa'))"


def test_each_section_has_its_own_port() -> None:
    ports = {
        "Python client, Erlang server": EXAMPLE_PORT,
        "Python server, Erlang client": PYSERVER_PORT,
        "Security": SECURITY_PORT,
        "Clients talking to each other": ROUTING_PORT,
        "Global names": GLOBAL_PORT,
    }
    for heading, port in ports.items():
        code = "".join(code for _, code in SECTIONS[heading])
        assert port in code, heading
        assert set(re.findall(r"\b55\d\d\b", code)) == {port}, heading


def test_global_names_example() -> None:
    """The Erlang block (a server with register_global, a process greeting the name) in a real
    erl, then the Python block: it registers a mailbox, is greeted through `global`, meets
    GlobalNameInUse, unregisters."""
    (erlang_code,) = _blocks("Global names", "erlang")
    (python_code,) = _blocks("Global names", "python")
    erlang_code = erlang_code.replace(f"start_server({GLOBAL_PORT},", "start_server(0,").rstrip().rstrip(".")
    script = (
        erlang_code + ', io:format("port ~b~n", [fabric_peer:port(Server)]), receive stop -> ok end.'
    )
    proc = subprocess.Popen([_erl(), "-noshell", "-pa", str(EBIN), "-eval", script], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"port (\d+)\n", line)
        assert match, f"the Erlang example did not start: {line!r}"
        out = _run_python(python_code.replace(GLOBAL_PORT, match.group(1))).splitlines()
        assert out == ["(Atom('hello'), Atom('nonode@nohost'))", "in_use"]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_python_server_with_erlang_client_example() -> None:
    (server_code,) = _blocks("Python server, Erlang client", "python")
    (client_code,) = _blocks("Python server, Erlang client", "erlang")
    server_code = server_code.replace(PYSERVER_PORT, "0")
    server = subprocess.Popen([sys.executable, "-c", server_code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = server.stdout.readline()
        match = re.fullmatch(r"listening on (\d+)\n", line)
        assert match, f"the Python server example did not start: {line!r}"
        script = client_code.replace(PYSERVER_PORT, match.group(1)).rstrip().rstrip(".") + ", halt()."
        out = subprocess.run(
            [_erl(), "-noshell", "-pa", str(EBIN), "-eval", script], capture_output=True, text=True, timeout=60
        )
        assert out.stdout.strip() == '{pong,{payload,"abababa"}}', out.stdout + out.stderr
    finally:
        server.kill()
        server.wait(timeout=10)


def test_processes_example() -> None:
    (code,) = _blocks("Processes in Python", "python")
    out = _run_python(code).strip()
    assert out.startswith("(Atom('EXIT'), Pid(") and out.endswith("(Atom('gave_up'), 'work'))"), out


def test_routing_example() -> None:
    """Two clients through a routing server; the port comes from the OS, both clients use it."""
    (code,) = _blocks("Clients talking to each other", "python")
    assert code.count(ROUTING_PORT) == 3
    code = code.replace(f'"127.0.0.1", {ROUTING_PORT}, "secret", routing=True)', '"127.0.0.1", 0, "secret", routing=True)')
    code = code.replace(ROUTING_PORT, "server.port")
    out = _run_python(code).splitlines()
    assert out == ["[Atom('c2@localhost')]", "hello", "(Atom('nodedown'), Atom('c2@localhost'))"]


def test_security_example(tmp_path: Path) -> None:
    (code,) = _blocks("Security", "python")
    for _ in range(2):  # a second run in the same directory works too (the files are replaced)
        out = _run_python(code.replace(SECURITY_PORT, "0"), cwd=tmp_path).strip()
        assert out == "over mutual TLS"
    keys = sorted(p.name for p in (tmp_path / "certs").glob("*-key.pem"))
    assert keys == ["ca-key.pem", "client-worker-key.pem", "server-key.pem"]
    assert all((tmp_path / "certs" / k).stat().st_mode & 0o077 == 0 for k in keys)
