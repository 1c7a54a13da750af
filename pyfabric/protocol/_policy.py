"""The name policy (docs/protocol.md section 6): which registered names a peer may reach.

One check serves every way of naming a process: an atom ``Dest``, ``{Name, Node}``
and ``whereis``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..etf import Atom

__all__ = ["NamePolicy", "SYSTEM_NAMES", "RESERVED_PREFIXES"]

# Names an Erlang node gives its own system processes: reaching one of them by name
# gives a peer code execution (rex, vectors 28-30) or control of the node.
SYSTEM_NAMES = frozenset(
    """rex init code_server erl_prim_loader net_kernel net_sup auth global_name_server
    global_group global_group_check application_controller kernel_sup kernel_safe_sup
    kernel_refc user user_drv standard_error standard_error_sup file_server_2 inet_db
    erts_code_purger erl_signal_server logger logger_sup error_logger timer_server
    ssl_manager erpc socket_registry erl_epmd dist_util os_mon disk_log_server pg
    fabric_server""".split()
)

# Our own processes.
RESERVED_PREFIXES = ("fabric_", "pyfabric_")


def _name_of(name: Atom | str) -> str:
    return name.name if name.__class__ is Atom else str(name)


class NamePolicy:
    """``policy(name) -> bool``: may the peer reach the process registered as ``name``?

    ``allowed`` is a set of names (``str`` or ``Atom``) or a predicate on the name
    (a ``str``). System names and ``fabric_``/``pyfabric_`` names are refused even when
    allowed, unless they are also listed in ``force`` (an explicit, separate opt-in).
    The default allows nothing.
    """

    __slots__ = ("_allowed", "_predicate", "_force")

    def __init__(
        self,
        allowed: Iterable[Atom | str] | Callable[[str], bool] = (),
        *,
        force: Iterable[Atom | str] = (),
    ) -> None:
        if callable(allowed):
            self._predicate: Callable[[str], bool] | None = allowed
            self._allowed: frozenset[str] = frozenset()
        else:
            self._predicate = None
            self._allowed = frozenset(_name_of(name) for name in allowed)
        self._force = frozenset(_name_of(name) for name in force)

    @staticmethod
    def is_system_name(name: str) -> bool:
        return name in SYSTEM_NAMES or name.startswith(RESERVED_PREFIXES)

    def __call__(self, name: Atom | str) -> bool:
        text = _name_of(name)
        if text in self._force:
            return True
        if text in SYSTEM_NAMES or text.startswith(RESERVED_PREFIXES):
            return False
        if self._predicate is not None:
            try:
                return bool(self._predicate(text))
            except Exception:  # a broken user predicate must not open anything
                return False
        return text in self._allowed

    def __repr__(self) -> str:
        allowed = self._predicate if self._predicate is not None else sorted(self._allowed)
        return f"NamePolicy({allowed!r}, force={sorted(self._force)!r})"
