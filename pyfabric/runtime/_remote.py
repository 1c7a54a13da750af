"""The node's entry points for a transport on remote processes: creating and ending
proxies, and the link and exit-signal frames a peer sends (docs/protocol.md 4.3, 4.4, 5.2).

:class:`RemoteEntries` is a base class of :class:`~._node.Node` (its attributes are the
node's); it only touches the process table and the relations the node owns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyfabric.etf import Pid

from ._errors import ProcessError
from ._process import LocalProcess
from ._proxy import Proxy, RemoteHandle, relay
from ._relations import Entry, Relations

__all__ = ["RemoteEntries"]


class RemoteEntries:
    """Proxies and remote signals, for the transport (a base of :class:`~._node.Node`)."""

    _table: dict[Pid, Entry]
    _relations: Relations
    _check_open: Callable[[], None]
    _new_pid: Callable[[], Pid]

    # -- proxies (for the transport) --------------------------------------------------------

    def new_proxy(self, handle: RemoteHandle) -> Pid:
        """Create a proxy for a remote process; return its new pid (of this node).

        Everything sent to the pid goes to ``handle.deliver``; see :class:`RemoteHandle`.
        The transport keeps one proxy per remote process (so the same remote process is
        always the same pid) and ends it with :meth:`terminate_proxy`.
        """
        self._check_open()
        if not isinstance(handle, RemoteHandle):
            raise TypeError(f"handle must implement RemoteHandle, got {type(handle).__name__}")
        pid = self._new_pid()
        self._table[pid] = Proxy(pid, handle)
        return pid

    def dead_pid(self) -> Pid:
        """A new pid of this node whose process has already exited (it never lived).

        For a ``{pl, Id}`` naming an id that was never issued (docs/protocol.md 4.1):
        sending to it does nothing, linking to it gives ``noproc``, monitoring it gives a
        ``DOWN`` with ``noproc``.
        """
        return self._new_pid()

    def proxy_handle(self, pid: Pid) -> RemoteHandle | None:
        """The handle of the live proxy ``pid``, or ``None`` (not a proxy, or ended)."""
        entry = self._table.get(pid)
        return entry.handle if isinstance(entry, Proxy) else None

    def terminate_proxy(self, pid: Pid, reason: Any) -> bool:
        """End proxy ``pid`` with ``reason`` (its DEAD arrived, or ``noconnection``).

        Local links and monitors fire with ``reason`` exactly as for a local exit. Returns
        False if the proxy had already ended or never existed (a duplicate DEAD: ignore
        it); :class:`ProcessError` if ``pid`` is a local process.
        """
        entry = self._table.get(pid)
        if entry is None:
            return False
        if not isinstance(entry, Proxy):
            raise ProcessError(f"terminate_proxy: {pid!r} is a local process, not a proxy")
        self._relations.terminate(entry, reason)
        return True

    def remote_link(self, proxy_pid: Pid, local_pid: Pid) -> bool:
        """A ``{link, A, B}`` frame arrived: link local process B with the proxy for A.

        The handle is not called (the remote side made the link). Returns False, doing
        nothing, if B is not a live local process (its DEAD is on its way) or the proxy has
        ended. B may be a proxy of another connection (a node relaying between two peers,
        docs/protocol.md 16.4): the link is then passed on through B's handle.
        """
        proxy = self._table.get(proxy_pid)
        local = self._table.get(local_pid)
        if not isinstance(proxy, Proxy) or not isinstance(local, (LocalProcess, Proxy)) or proxy_pid == local_pid:
            return False
        if isinstance(local, Proxy) and not relay(local.handle.link_added, proxy_pid):
            return False
        self._relations.add_link(proxy_pid, local_pid)
        return True

    def remote_unlink(self, proxy_pid: Pid, local_pid: Pid) -> bool:
        """An ``{unlink, A, B}`` frame arrived: remove that link (without calling the handle).

        Returns True if there was such a link.
        """
        proxy = self._table.get(proxy_pid)
        local = self._table.get(local_pid)
        if not isinstance(proxy, Proxy) or not isinstance(local, (LocalProcess, Proxy)):
            return False
        removed = self._relations.remove_link(proxy_pid, local_pid)
        if removed and isinstance(local, Proxy):
            relay(local.handle.link_removed, proxy_pid)
        return removed

    def remote_exit(self, proxy_pid: Pid, local_pid: Pid, reason: Any) -> bool:
        """An ``{exit2, A, B, Reason}`` frame arrived: ``exit(B, Reason)`` sent by the proxy for A.

        Applies ``exit/2`` rules on B (``kill`` kills it with ``killed``; a trapping B gets
        ``(Atom('EXIT'), proxy_pid, Reason)``). Returns False (ignored) if B is not a live
        local process. B a proxy of another connection: the signal is passed on to its peer.
        """
        local = self._table.get(local_pid)
        if isinstance(local, Proxy):
            return relay(local.handle.exit_signal, proxy_pid, reason)
        if not isinstance(local, LocalProcess):
            return False
        self._relations.signal(local, proxy_pid, reason, via_link=False)
        return True

    def remote_link_exit(self, proxy_pid: Pid, local_pid: Pid, reason: Any) -> bool:
        """A ``{link_exit, A, B, Reason}`` frame arrived (docs/protocol.md 5.2): the remote
        process A, lazily linked to B, ended with ``reason``.

        B gets the exit signal of a link from the proxy for A (a trapping B receives
        ``(Atom('EXIT'), proxy_pid, Reason)``, ``kill`` included; otherwise ``normal`` is
        ignored and any other reason, ``kill`` included, ends B with it), and the proxy for
        A ends with ``reason`` (its DEAD, when it arrives, is for an ended proxy). B a proxy
        of another connection: the signal is passed on to its peer (through the handle's
        optional ``link_exit_signal``, else as ``exit_signal``) before the proxy for A ends.
        Returns False (ignored) if B is neither.
        """
        local = self._table.get(local_pid)
        proxy = self._table.get(proxy_pid)
        if isinstance(local, Proxy):
            handle = local.handle
            relayed = relay(getattr(handle, "link_exit_signal", handle.exit_signal), proxy_pid, reason)
        elif isinstance(local, LocalProcess):
            relayed = True
            if not (isinstance(proxy, Proxy) and local_pid in self._relations.links_of(proxy_pid)):
                # a link held here too fires when the proxy ends below: one signal, not two
                self._relations.signal(local, proxy_pid, reason, via_link=True)
        else:
            return False
        if isinstance(proxy, Proxy):
            self._relations.terminate(proxy, reason)
        return relayed
