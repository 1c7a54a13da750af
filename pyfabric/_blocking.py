"""The blocking facade: :func:`connect` and :func:`start_server` for scripts and threads.

Each facade object runs its own asyncio event loop (uvloop when installed) in a daemon
thread and marshals every call onto it, so its methods are safe to call from any
thread. Blocking calls made *from* that loop's thread (e.g. inside a process function
spawned through the facade) would deadlock and raise :class:`RuntimeError` instead: use
the async API there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar, Unpack

from .etf import Atom, Pid, Reference
from .runtime import Mailbox
from .transport import Client, ClientClosed, Server, ServerClosed, ServerConnection, aconnect, serve
from .transport._connect import DEFAULT_SEND_TIMEOUT
from .transport._signature import BlockingConnectOptions, BlockingServeOptions, show_options

__all__ = ["connect", "start_server", "BlockingClient", "BlockingServer", "BlockingMailbox"]

_log = logging.getLogger("pyfabric.blocking")
T = TypeVar("T")
_Target = TypeVar("_Target", Client, Server)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, name: str, closed: Callable[[str], Exception], what: str, hint: str) -> None:
        # The error of a call made after close() (ClientClosed / ServerClosed) and its words.
        self.closed, self._what, self._hint = closed, what, hint
        self.loop = _new_loop()
        self._close_lock = threading.Lock()
        self._closed = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                # Calls still waiting (another thread's receive while we close) end with
                # RuntimeError in their thread instead of hanging, and no task is destroyed
                # while pending.
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result in the calling thread."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                "a blocking pyfabric call was made from its own event loop thread (it would deadlock); "
                "use the async API inside processes"
            )
        if self.loop.is_closed() or not self.thread.is_alive():
            coro.close()
            raise self.closed(f"{self._what} is closed; {self._hint}")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.CancelledError:
            if not self.thread.is_alive() or self.loop.is_closed() or not self.loop.is_running():
                raise self.closed(f"{self._what} was closed while the call was waiting; {self._hint}") from None
            raise
        except BaseException as exc:
            if fut.done():
                raise  # the coroutine's own outcome (ReceiveTimeout is a TimeoutError too)
            fut.cancel()  # our wait timed out, or e.g. KeyboardInterrupt in the waiting thread
            if isinstance(exc, concurrent.futures.TimeoutError):
                raise TimeoutError(f"no result within {timeout} s") from None
            raise

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run the plain function ``fn`` on the loop thread and return its result."""

        async def call() -> T:
            return fn(*args, **kwargs)

        return self.run(call())

    def close(self, aclose: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``aclose()`` on the loop, then stop the loop; once, whichever thread asks
        (the others wait for the first to finish)."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("a blocking pyfabric close() was called from its own event loop thread; use the async API")
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.run(aclose())
            finally:
                self.stop()

    def stop(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # already closed (two threads closing at once)
            return
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)


class BlockingMailbox:
    """A mailbox usable from any thread: a process without a task, held by plain code.

    ``receive`` blocks the calling thread (``timeout`` in seconds; raises
    :class:`~pyfabric.runtime.ReceiveTimeout`). Close it when done (or use ``with``).
    """

    def __init__(self, runner: _LoopThread, box: Mailbox) -> None:
        self._runner = runner
        self._box = box

    @property
    def pid(self) -> Pid:
        """This mailbox's pid: ship it in messages so remote processes can answer."""
        return self._box.pid

    def send(self, dest: Pid | Atom | str | tuple[Atom | str, Atom | str], msg: Any) -> None:
        """Send to a local process, a proxy, a locally registered name, or ``(name, node)``
        (see :meth:`pyfabric.runtime.Node.send`)."""
        self._runner.call(self._box.send, dest, msg)

    def receive(self, match: Any = None, timeout: float | None = None) -> Any:
        """The first queued message matching ``match`` (a predicate or a pattern with
        ``ANY``), waiting up to ``timeout`` s; see :meth:`pyfabric.runtime.Mailbox.receive`."""
        return self._runner.run(self._box.receive(match, timeout))

    def link(self, pid: Pid) -> None:
        """Link to ``pid`` (a local process or a proxy); see :meth:`pyfabric.runtime.Mailbox.link`."""
        self._runner.call(self._box.link, pid)

    def unlink(self, pid: Pid) -> None:
        """Remove the link to ``pid``."""
        self._runner.call(self._box.unlink, pid)

    def monitor(self, pid: Pid) -> Reference:
        """Monitor ``pid``: a ``('DOWN', ref, 'process', pid, reason)`` message comes when it ends."""
        return self._runner.call(self._box.monitor, pid)

    def demonitor(self, ref: Reference, flush: bool = False) -> bool:
        """Cancel a monitor; ``flush`` also drops its ``DOWN`` if already queued."""
        return self._runner.call(self._box.demonitor, ref, flush)

    def exit(self, pid: Pid, reason: Any) -> None:
        """Send an exit signal to ``pid`` (Erlang's ``exit/2``)."""
        self._runner.call(self._box.exit, pid, reason)

    @property
    def trap_exit(self) -> bool:
        """True if exit signals arrive as ``('EXIT', pid, reason)`` messages instead of ending the mailbox."""
        return self._box.trap_exit

    @trap_exit.setter
    def trap_exit(self, value: bool) -> None:
        self._runner.call(setattr, self._box, "trap_exit", value)

    def register(self, name: Atom | str) -> None:
        """Register this mailbox under ``name`` on its node."""
        self._runner.call(self._box.register, name)

    def qsize(self) -> int:
        """Messages waiting in the mailbox."""
        return self._runner.call(self._box.qsize)

    @property
    def alive(self) -> bool:
        """False once the mailbox is closed or ended by an exit signal."""
        return self._box.alive

    def close(self, reason: Any = Atom("normal")) -> None:
        """End the mailbox with ``reason`` (links and monitors fire). Idempotent."""
        if self._box.alive:
            self._runner.call(self._box.close, reason)

    def __enter__(self) -> BlockingMailbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BlockingMailbox {self._box.pid!r}>"


class _BlockingNodeApi(Generic[_Target]):
    """What the blocking client and server share: local processes on their node."""

    _runner: _LoopThread
    _target: _Target

    def mailbox(self, name: Atom | str | None = None, **options: Any) -> BlockingMailbox:
        """A new :class:`BlockingMailbox` on this node."""
        return BlockingMailbox(self._runner, self._runner.call(self._target.mailbox, name, **options))

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **options: Any) -> Pid:
        """Start ``async def fn(proc, *args)`` as a process on this node's loop thread."""
        return self._runner.call(self._target.spawn, fn, *args, **options)

    def register(self, name: Atom | str, pid: Pid) -> None:
        """Register the local process ``pid`` as ``name`` (remote peers reach it only if allowed)."""
        self._runner.call(self._target.register, name, pid)

    def unregister(self, name: Atom | str) -> None:
        """Remove a local registered name."""
        self._runner.call(self._target.unregister, name)

    def whereis_local(self, name: Atom | str) -> Pid | None:
        """The local process registered as ``name``, or None."""
        return self._runner.call(self._target.node.whereis, name)

    def statistics(self) -> dict[str, Any]:
        """Counters of the underlying client or server (see their ``statistics``)."""
        return self._runner.call(self._target.statistics)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (in its own thread) that runs this object."""
        return self._runner.loop


class BlockingClient(_BlockingNodeApi[Client]):
    """A connection to a fabric server for blocking code; create it with :func:`connect`.

    Every method is safe to call from any thread. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, runner: _LoopThread, client: Client, send_timeout: float) -> None:
        self._runner = runner
        self._target = client
        self._send_timeout = send_timeout

    @property
    def async_client(self) -> Client:
        """The underlying :class:`~pyfabric.transport.Client` (use only on :attr:`loop`)."""
        return self._target

    @property
    def state(self) -> str:
        """The connection state (see :class:`~pyfabric.transport.ConnectionState`)."""
        return self._target.state

    @property
    def mode(self) -> str | None:
        """``"extended"``, ``"legacy"``, or None before the first handshake."""
        return self._target.mode

    @property
    def features(self) -> frozenset[str]:
        """The extension features agreed with the server."""
        return self._target.features

    def send(self, dest: Pid | Atom | str | tuple[Any, Any], msg: Any) -> None:
        """Send ``msg`` to ``dest`` (a pid or proxy, a remote name, or ``(name, node)``).

        Blocks only for backpressure (a full socket buffer) or, while the client
        reconnects, until it is connected again (at most ``send_timeout`` s, then
        :class:`~pyfabric.transport.NotConnected`). With ``acks`` (docs/protocol.md
        12.6) it blocks until the message can be issued (connected, room in the outbox of
        unacknowledged frames), at most ``send_timeout`` s, then raises
        :class:`~pyfabric.transport.SendTimeout` and sends nothing.
        """
        self._runner.run(self._send(dest, msg))

    async def _send(self, dest: Any, msg: Any) -> None:
        client = self._target
        if client.acks:
            await client.wait_issuable(self._send_timeout, dest if dest.__class__ is not str else Atom(dest))
        client.send(dest, msg)
        if not client.writable:
            await client.drain(self._send_timeout)

    def send_confirmed(self, dest: Pid | Atom | str | tuple[Any, Any], msg: Any, *, timeout: float | None = None) -> None:
        """Send ``msg`` and block until the server has put it in the destination's
        mailbox (docs/protocol.md 11.8), at most ``timeout`` s (default ``send_timeout``);
        raises :class:`~pyfabric.transport.SendRefused` with the server's code,
        :class:`~pyfabric.transport.SendTimeout`, or
        :class:`~pyfabric.protocol.FeatureNotSupported` without ``acks``."""
        limit = self._send_timeout if timeout is None else timeout
        self._runner.run(self._target.send_confirmed(dest, msg, timeout=limit))

    def whereis(self, name: Atom | str, *, node: Atom | str | None = None, timeout: float | None = None) -> Pid | None:
        """The server's process registered as ``name`` (a proxy pid), or None; with
        ``node``, another client node's (routing server); see
        :meth:`pyfabric.transport.Client.whereis`."""
        return self._runner.run(self._target.whereis(name, node=node, timeout=timeout))

    def nodes(self, *, timeout: float | None = None) -> list[Atom]:
        """The other client nodes of a routing server this client may see; see
        :meth:`pyfabric.transport.Client.nodes`."""
        return self._runner.run(self._target.nodes(timeout=timeout))

    def monitor_node(self, node: Atom | str, pid: Pid, *, timeout: float | None = None) -> None:
        """``pid`` receives ``('nodedown', node)`` once when that client node goes down; see
        :meth:`pyfabric.transport.Client.monitor_node`."""
        self._runner.run(self._target.monitor_node(node, pid, timeout=timeout))

    def demonitor_node(self, node: Atom | str, pid: Pid) -> bool:
        """Remove one :meth:`monitor_node` of ``pid`` on ``node``; True if there was one."""
        return self._runner.call(self._target.demonitor_node, node, pid)

    def register_global(self, name: Atom | str, pid: Pid, *, timeout: float | None = None) -> None:
        """Register local process ``pid`` in Erlang's ``global`` as ``name`` through an
        erlang_peer server; see :meth:`pyfabric.transport.Client.register_global`
        (:class:`~pyfabric.GlobalNameInUse` when another process holds the name)."""
        self._runner.run(self._target.register_global(name, pid, timeout=timeout))

    def unregister_global(self, name: Atom | str, *, timeout: float | None = None) -> None:
        """Remove a global name of one of this client's processes; see
        :meth:`pyfabric.transport.Client.unregister_global`."""
        self._runner.run(self._target.unregister_global(name, timeout=timeout))

    def join(self, group: str | bytes, pid: Pid, *, timeout: float | None = None) -> None:
        """Join local process ``pid`` to ``pg`` group ``group`` of a clustered erlang_peer
        server; see :meth:`pyfabric.transport.Client.join` (:class:`~pyfabric.GroupError`)."""
        self._runner.run(self._target.join(group, pid, timeout=timeout))

    def leave(self, group: str | bytes, pid: Pid, *, timeout: float | None = None) -> None:
        """Take ``pid`` out of group ``group``; see :meth:`pyfabric.transport.Client.leave`."""
        self._runner.run(self._target.leave(group, pid, timeout=timeout))

    def members(self, group: str | bytes, *, timeout: float | None = None) -> list[Pid]:
        """The members of group ``group`` in the cluster; see
        :meth:`pyfabric.transport.Client.members`."""
        return self._runner.run(self._target.members(group, timeout=timeout))

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until connected (``TimeoutError`` after ``timeout`` s; ``NotConnected`` if closed)."""
        self._runner.run(self._target.wait_connected(timeout))

    def add_state_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(state)`` on every connection state change (from the loop thread)."""
        self._runner.call(self._target.add_state_listener, callback)

    def close(self) -> None:
        """Close the connection and stop the loop thread. Idempotent, from any thread."""
        self._runner.close(self._target.close)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BlockingClient {self._target!r}>"


class BlockingServer(_BlockingNodeApi[Server]):
    """A fabric server for blocking code; create it with :func:`start_server`."""

    def __init__(self, runner: _LoopThread, server: Server) -> None:
        self._runner = runner
        self._target = server
        self.port: int = server.port
        """The port the server listens on."""

    @property
    def async_server(self) -> Server:
        """The underlying :class:`~pyfabric.transport.Server` (use only on :attr:`loop`)."""
        return self._target

    def send(self, dest: Pid | Atom | str | tuple[Atom | str, Atom | str], msg: Any) -> None:
        """Send to a local process, a proxy of a client's process, a local name, or
        ``(name, node)`` of a client node (see :meth:`pyfabric.transport.Server.send`)."""
        self._runner.call(self._target.send, dest, msg)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the server's event loop thread and return its result: the
        way to use the async API from another thread, e.g.
        ``server.call(server.async_server.statistics)``."""
        return self._runner.call(fn, *args)

    def connections(self) -> list[ServerConnection]:
        """:meth:`Server.connections` (use the returned objects through :meth:`call`)."""
        return self._runner.call(self._target.connections)

    def serve_forever(self) -> None:
        """Block the calling thread until the server is closed (e.g. from another thread)."""
        self._runner.thread.join()

    def close(self) -> None:
        """Stop serving, close every connection and stop the loop thread. Idempotent, from
        any thread."""
        self._runner.close(self._target.close)

    def __enter__(self) -> BlockingServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BlockingServer {self._target!r}>"


@show_options(like=aconnect)
def connect(
    host: str, port: int, secret: bytes | str, *, send_timeout: float = DEFAULT_SEND_TIMEOUT, **options: Unpack[BlockingConnectOptions]
) -> BlockingClient:
    """Blocking :func:`~pyfabric.aconnect`: connect to a fabric server; same options.

    Returns a :class:`BlockingClient` whose methods are safe to call from any thread.
    Raises what ``aconnect`` raises (``ConnectFailed``, ``AuthenticationError``).
    """
    runner = _LoopThread(
        f"pyfabric-client-{host}:{port}", ClientClosed, f"the client of {host}:{port}", "call pyfabric.connect() again for a new one"
    )
    try:
        client = runner.run(aconnect(host, port, secret, send_timeout=send_timeout, **options))
    except BaseException:
        runner.stop()
        raise
    return BlockingClient(runner, client, send_timeout)


@show_options(like=serve)
def start_server(host: str, port: int, secret: bytes | str, **options: Unpack[BlockingServeOptions]) -> BlockingServer:
    """Blocking :func:`~pyfabric.serve`: start a fabric server in a background thread.

    Same options as ``serve``; returns a :class:`BlockingServer` (``.port``, ``.mailbox()``,
    ``.spawn()``, ``.register()``, ``.close()``), safe to use from any thread.
    """
    runner = _LoopThread(
        f"pyfabric-server-{host}:{port}", ServerClosed, f"the server on {host}:{port}", "call pyfabric.start_server() again for a new one"
    )
    try:
        server = runner.run(serve(host, port, secret, **options))
    except BaseException:
        runner.stop()
        raise
    return BlockingServer(runner, server)
