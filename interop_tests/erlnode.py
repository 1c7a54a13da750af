"""Start, drive and stop an Erlang node running erlang_peer (stdlib only).

The node runs ``fabric_peer_cli`` (erlang_peer/test_support/, never shipped in the app; see
erlang_peer/README.md, "Harness"), compiled with ``erlc`` into ``SUPPORT_EBIN``: one Erlang term per
line on stdin, exactly one reply line per command on stdout, ``ok <term>`` or
``error <term>``. Logs go to stderr and are kept (``node.stderr_tail()``) for failure messages.

    with ErlangNode() as node:
        port = node.start_server("secret", allowed=["ping"])   # registers nothing by itself
        node.command('{start_demo, [ping]}')
        ...

Everything listens on 127.0.0.1 with port 0 (the OS picks); ``start_server`` returns the port.
"""

from __future__ import annotations

import collections
import os
import queue
import re
import shutil
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "erlang_peer"
EBIN = PEER_DIR / "_build" / "default" / "lib" / "fabric_peer" / "ebin"
SUPPORT_DIR = PEER_DIR / "test_support"
SUPPORT_EBIN = PEER_DIR / "_build" / "test_support" / "ebin"


class ErlangNodeError(RuntimeError):
    """The node could not be started, died, or did not answer in time."""


class ErlangCommandError(RuntimeError):
    """A command was answered with ``error <term>``; ``.term`` is the term's text."""

    def __init__(self, command: str, term: str):
        super().__init__(f"{command!r} -> error {term}")
        self.command = command
        self.term = term


def _stale(sources: list[Path], ebin: Path, modules: int) -> bool:
    """True when ``ebin`` has fewer than ``modules`` beams or one older than a source."""
    beams = list(ebin.glob("*.beam")) if ebin.is_dir() else []
    newest_src = max(p.stat().st_mtime for p in sources)
    return len(beams) < modules or min(p.stat().st_mtime for p in beams) < newest_src


def ensure_compiled() -> Path:
    """Return the app's ebin directory, running ``rebar3 compile`` when it is missing or stale.

    Also compiles the test-support modules (``fabric_peer_cli``, ``fabric_peer_demo``) into
    ``SUPPORT_EBIN`` with ``erlc`` when needed (``make peer`` does the same).
    """
    src = PEER_DIR / "fabric_peer" / "src"
    sources = list(src.glob("*.erl")) + [src / "fabric_peer.app.src"]
    if _stale(sources, EBIN, len(sources) - 1):
        if shutil.which("rebar3") is None:
            raise ErlangNodeError("rebar3 is not installed (make erlang)")
        subprocess.run(["rebar3", "compile"], cwd=PEER_DIR, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    support = sorted(SUPPORT_DIR.glob("*.erl"))
    if _stale(support + sources, SUPPORT_EBIN, len(support)):
        SUPPORT_EBIN.mkdir(parents=True, exist_ok=True)
        subprocess.run(["erlc", "-o", str(SUPPORT_EBIN), "-pa", str(EBIN), *map(str, support)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    return EBIN


class ErlangNode:
    """One ``erl`` OS process running the erlang_peer command driver."""

    def __init__(self, extra_args: tuple[str, ...] = (), startup_timeout: float = 30.0):
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> ErlangNode:
        if shutil.which("erl") is None:
            raise ErlangNodeError("erl is not installed (make erlang)")
        ebin = ensure_compiled()
        cmd = ["erl", "-noshell", "-pa", str(ebin), "-pa", str(SUPPORT_EBIN), *self.extra_args,
               "-run", "fabric_peer_cli", "main"]
        env = dict(os.environ)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                     bufsize=1, env=env)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        line = self._next_line(self.startup_timeout, "startup")
        if not line.startswith("ready "):
            self.stop()
            raise ErlangNodeError(f"unexpected first line {line!r}; stderr: {self.stderr_tail()}")
        return self

    def stop(self) -> None:
        """Ask the node to quit, then make sure the OS process is gone."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin:
                proc.stdin.write("quit.\n")
                proc.stdin.flush()
                proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)

    def __enter__(self) -> ErlangNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands ----------------------------------------------------------------------

    def command_raw(self, term_text: str, timeout: float = 10.0) -> tuple[str, str]:
        """Send one command; return ``(status, term_text)`` with status ``ok`` or ``error``."""
        if self.proc is None or self.proc.poll() is not None:
            raise ErlangNodeError(f"node is not running; stderr: {self.stderr_tail()}")
        text = term_text.strip()
        if "\n" in text:
            raise ValueError("a command is one line")
        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(text + ("" if text.endswith(".") else ".") + "\n")
            self.proc.stdin.flush()
            line = self._next_line(timeout, text)
        status, _, rest = line.partition(" ")
        if status not in ("ok", "error"):
            raise ErlangNodeError(f"unparsable reply {line!r} to {text!r}")
        return status, rest

    def command(self, term_text: str, timeout: float = 10.0) -> str:
        """Send one command; return the reply term's text, raise ErlangCommandError on error."""
        status, rest = self.command_raw(term_text, timeout)
        if status == "error":
            raise ErlangCommandError(term_text, rest)
        return rest

    # -- conveniences ------------------------------------------------------------------

    def start_server(self, secret: str = "secret", allowed: list[str] | None = None,
                     demo: bool = False, **opts: str) -> int:
        """Start a server on 127.0.0.1, port 0; return its port. ``opts`` values are
        Erlang term texts, e.g. ``allow_legacy_auth="true"``."""
        parts = ['port => 0', f'secret => {erl_string(secret)}']
        if allowed is not None:
            parts.append("allowed => [" + ", ".join(allowed) + "]")
        parts += [f"{k} => {v}" for k, v in opts.items()]
        cmd = "demo_server" if demo else "start_server"
        reply = self.command("{%s, #{%s}}" % (cmd, ", ".join(parts)))
        m = re.search(r"port => (\d+)", reply)
        if not m:
            raise ErlangNodeError(f"no port in {reply!r}")
        self.server_id = int(re.search(r"id => (\d+)", reply).group(1))  # type: ignore[union-attr]
        return int(m.group(1))

    def stderr_tail(self, n: int = 30) -> str:
        return "\n".join(list(self._stderr)[-n:])

    # -- internals ---------------------------------------------------------------------

    def _next_line(self, timeout: float, what: str) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ErlangNodeError(f"no reply to {what!r} within {timeout}s; "
                                  f"stderr: {self.stderr_tail()}") from None
        if line is None:
            raise ErlangNodeError(f"node exited during {what!r}; stderr: {self.stderr_tail()}")
        return line

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip("\n"))


def erl_string(s: str) -> str:
    """A Python str as an Erlang string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
