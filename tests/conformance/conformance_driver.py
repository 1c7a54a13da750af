"""Play conformance cases against the Python core (``pyfabric.protocol.Connection``).

Only public entry points are used: ``Connection``/``Session`` and the events of
``pyfabric.protocol``, ``encode``/``decode`` and the value types of ``pyfabric.etf``. The
same code records a new case (``conformance/tools/generate.py``) and checks a stored one
(``test_conformance_*.py``): it turns what the core does into the canonical observation
lines of ``conformance/README.md`` (``out``, ``out_error``, ``event``), which are compared
with the case's lines.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from typing import Any

from conformance_corpus import Case, legacy_vector

from pyfabric.etf import Atom, Pid, decode, encode
from pyfabric.protocol import (
    AuthFailed,
    Connection,
    ConnectionClosed,
    DeadPidSubstituted,
    ExitSignalReceived,
    FrameDropped,
    HandshakeComplete,
    HeartbeatAcked,
    HeartbeatReceived,
    LinkRequested,
    LocalProtocolError,
    MessageReceived,
    MessageRouted,
    NodeDown,
    NodesReplied,
    NodesRequested,
    NodeUp,
    PeerError,
    ProxyCreated,
    ProxyDied,
    RouteHooks,
    SendResult,
    Session,
    UnlinkRequested,
    WhereisNodeRequested,
    WhereisReplied,
    WhereisRequested,
)

# Keys of a case's lines that are observations (what a step produced); every other key
# after the first step line is a step.
OBSERVATIONS = frozenset({"out", "out_error", "event", "refused"})
STEPS = frozenset(
    {
        "start", "send", "recv", "recv_raw", "exited", "whereis", "reply_whereis", "link", "unlink", "exit_signal",
        "heartbeat", "lost", "resume", "reconnect", "send_confirmed", "mailbox", "grant", "ack",
        # route (docs/protocol.md 16): kind route_exchange
        "whereis_node", "nodes", "reply_nodes", "nodeup", "nodedown",
    }
)
# Options of our side ("us") and of the peer ("peer_" + name) a case may set (credit, acks).
FLOW_OPTIONS = ("credit_window", "credit_bytes", "credit_dest", "mailbox_high", "grant_every", "ack_every", "max_confirms")
SESSION_ID = bytes(16)  # the session an extended exchange's handshake creates (the server's random id)
NEW_SESSION_ID = bytes([1] * 16)  # the one a reconnect that cannot resume creates
A_ERROR = Atom("error")


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def split_frames(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def etf_hex(term: Any) -> str:
    """A term as the corpus writes it: ``term_to_binary(T, [{minor_version, 1}])`` in hex."""
    return encode(term, minor_version=1).hex()


def term_of(hex_text: str) -> Any:
    return decode(bytes.fromhex(hex_text), safe=False)


def fixed_random(*chunks: bytes) -> Callable[[int], bytes]:
    """``random_bytes`` returning the case's nonces and ids in order (and nothing else)."""
    queue = list(chunks)

    def random_bytes(n: int) -> bytes:
        if not queue:
            raise AssertionError(f"the core asked for {n} more random bytes than the case provides")
        data = queue.pop(0)
        if len(data) != n:
            raise AssertionError(f"the core asked for {n} random bytes, the case has {len(data)}")
        return data

    return random_bytes


# --------------------------------------------------------------------------- MACs (spec)


def spec_client_mac(secret: bytes, f1: bytes, f2: bytes, accept_bin: bytes) -> bytes:
    """docs/protocol.md 3.3, computed here with the standard library only."""
    lp = lambda b: len(b).to_bytes(4, "big") + b  # noqa: E731
    return hmac.new(secret, b"fabric-ext client\x00" + lp(f1) + lp(f2) + lp(accept_bin), hashlib.sha256).digest()


def spec_server_mac(secret: bytes, f1: bytes, f2: bytes, f3: bytes, info_bin: bytes) -> bytes:
    """docs/protocol.md 3.4, computed here with the standard library only."""
    lp = lambda b: len(b).to_bytes(4, "big") + b  # noqa: E731
    return hmac.new(secret, b"fabric-ext server\x00" + lp(f1) + lp(f2) + lp(f3) + lp(info_bin), hashlib.sha256).digest()


# --------------------------------------------------------------------------- handshakes


def _opt_hex(value: str) -> bytes | None:
    return None if value == "none" else bytes.fromhex(value)


def handshake_role(case: Case, role: str) -> Connection:
    """A Connection configured as the case's ``role`` side (client or server)."""
    p = role + "_"
    if role == "client":
        resume = _opt_hex(case.get("resume", "none"))
        chunks = [case.hex("client_nonce")]
        extra: dict[str, Any] = {"session": Session(resume) if resume else None}
    else:
        kept = _opt_hex(case.get("server_kept_session", "none"))
        chunks = [case.hex("server_nonce")]
        sid = _opt_hex(case.get("session_id", "none"))
        if sid is not None and case.get("resumed", "false") != "true":
            chunks.append(sid)
        extra = {"find_session": (lambda s: Session(s) if s == kept else None)}
        routing = case.get("server_routing", "none")
        if routing != "none":  # a routing server (16.1): every node name is free here
            extra["route"] = RouteHooks(int(routing), lambda node, resumed: True, lambda from_node, node: "unknown")
    return Connection(
        role,
        case.hex(p + "secret"),
        node_name=case.get(p + "node"),
        new_proxy_pid=lambda i: Pid(Atom("us@conformance"), 1000 + i, 0, 1),
        features=case.words(p + "features"),
        max_frame=int(case.get(p + "max_frame")),
        heartbeat_interval=int(case.get(p + "heartbeat")),
        random_bytes=fixed_random(*chunks),
        **extra,
    )


def outcome_of(events: list[Any]) -> str:
    """``established FEATURES...`` / ``auth_failed`` from a handshake's events."""
    for ev in events:
        if isinstance(ev, HandshakeComplete):
            return "established " + " ".join(sorted(ev.features))
        if isinstance(ev, AuthFailed):
            return "auth_failed"
    return "pending"


def handshake_result(events: list[Any]) -> dict[str, str]:
    for ev in events:
        if isinstance(ev, HandshakeComplete):
            return {"session_id": ev.session_id.hex() if ev.session_id else "none", "resumed": str(ev.resumed).lower()}
    return {}


# --------------------------------------------------------------------------- exchanges

US = Atom("us@conformance")
PEER = Atom("peer@conformance")
LEGACY_CHALLENGE = bytes.fromhex("ce7e5a220e0749da5543bce7f8d953fb")  # vector 02's challenge text, as 16 bytes


def route_hooks(case: Case) -> RouteHooks | None:
    """A routing server's hooks from a case's ``route_nodes`` (client nodes it may reach),
    ``route_refused`` (client nodes the policy refuses) and ``route_heartbeat`` (ms)."""
    if "route" not in case.words("features"):
        return None
    reachable = set(case.words("route_nodes"))
    refused = set(case.words("route_refused"))

    def lookup(from_node: Atom | None, node: Atom) -> str:
        if node == US:
            return "local"
        return "route" if node.name in reachable else "refused" if node.name in refused else "unknown"

    return RouteHooks(int(case.get("route_heartbeat", "1000")), lambda node, resumed: True, lookup)


class Exchange:
    """One established Python connection ("us") fed with a case's steps. ``role client``
    (route cases): we are the client of a routing server instead of the server."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.proxy_pids = {int(i): term_of(h) for i, h in (v.split() for v in case.all("proxy_pid"))}
        dead = case.get("dead_pid", "none")
        self.dead_pid = None if dead == "none" else term_of(dead)
        mode = case.get("mode")
        opts: dict[str, Any] = {
            "node_name": US,
            "new_proxy_pid": self._new_proxy,
            "new_dead_pid": self._new_dead,
            "allowed": case.words("allowed"),
            "max_frame": int(case.get("max_frame", str(64 * 1024 * 1024))),
            "max_errors": int(case.get("max_errors", "20")),
            "error_window": int(case.get("error_window", "200")),
            "max_proxies": int(case.get("max_proxies", "100000")),
            "compress_messages": case.get("compress_messages", "false") == "true",
        }
        opts.update({k: int(case.get(k)) for k in FLOW_OPTIONS if case.get(k, "") != ""})
        peer_opts = {k: int(case.get("peer_" + k)) for k in FLOW_OPTIONS if case.get("peer_" + k, "") != ""}
        self.peer_opts = peer_opts
        self.opts = opts
        # The runtime's side of credit and confirmed sends: mailbox lengths (by name, or
        # "id N" for an export), registered names.
        self.mailboxes: dict[str, int] = {}
        self.registered = set(case.words("registered")) if case.get("registered", "") != "" else set(opts["allowed"])
        self.high = opts.get("mailbox_high", 1024)
        if mode == "legacy":
            self.conn = Connection("server", b"secret", allow_legacy_auth=True, random_bytes=fixed_random(LEGACY_CHALLENGE), **opts)
            self.conn.receive_data(frame(legacy_vector(1)) + frame(legacy_vector(3)))
            events: list[Any] = []
        elif mode == "extended" and case.get("role", "server") == "client":
            features = case.words("features")
            self.conn = Connection("client", b"conformance", features=features, random_bytes=fixed_random(bytes(32)), **opts)
            server = Connection("server", b"conformance", node_name=PEER, new_proxy_pid=self._new_proxy, features=features,
                                random_bytes=fixed_random(bytes(32), SESSION_ID), route=route_hooks(case))
            events = self._client_handshake(self.conn, server)
        elif mode == "extended":
            features = case.words("features")
            self.conn = Connection(
                "server", b"conformance", features=features, random_bytes=fixed_random(bytes(32), SESSION_ID),
                route=route_hooks(case), **opts,
            )
            self.peer = Connection("client", b"conformance", node_name=PEER, new_proxy_pid=self._new_proxy,
                                   features=features, random_bytes=fixed_random(bytes(32)), **peer_opts)
            events, _ = self._handshake(self.conn, self.peer)
        else:
            raise ValueError(f"case {case.name}: mode must be legacy or extended, not {mode!r}")
        events += self.conn.events()
        done = [e for e in events if isinstance(e, HandshakeComplete)]
        if not done or done[0].mode != mode:
            raise AssertionError(f"case {case.name}: could not establish a {mode} connection: {events}")
        self.conn.data_to_send()
        self.pending_whereis: dict[int, int] = {}

    @staticmethod
    def _handshake(conn: Connection, peer: Connection) -> tuple[list[Any], list[bytes]]:
        """Run ``peer`` (a client) against ``conn`` (our server) to the end of the
        handshake; our events, and the frames we wrote after the handshake's last one."""
        peer.start()
        events: list[Any] = []
        after: list[bytes] = []
        for _ in range(2):
            conn.receive_data(peer.data_to_send())
            events += conn.events()
            frames = split_frames(conn.data_to_send())
            if conn.state == "established":
                frames, after = frames[:1], frames[1:]
            peer.receive_data(b"".join(frame(f) for f in frames))
            peer.events()
        return events, after

    @staticmethod
    def _client_handshake(conn: Connection, server: Connection) -> list[Any]:
        """Run our client ``conn`` against a routing ``server`` to the end of the handshake."""
        conn.start()
        events: list[Any] = []
        for _ in range(2):
            server.receive_data(conn.data_to_send())
            server.events()
            conn.receive_data(server.data_to_send())
            events += conn.events()
        return events

    def _resume(self, kept: Session | None) -> tuple[list[Any], list[bytes]]:
        """A new connection of the peer asks to resume its session: a client with the
        peer's old session against a new server connection that finds ``kept`` (resumed,
        docs/protocol.md 7) or, with None, no session (a new one: the old ids are void)."""
        self.peer.connection_lost()
        self.peer = Connection("client", b"conformance", node_name=PEER, new_proxy_pid=self._new_proxy,
                               features=self.case.words("features"), session=self.peer.session,
                               random_bytes=fixed_random(bytes(32)), **self.peer_opts)
        self.conn = Connection(
            "server", b"conformance", features=self.case.words("features"),
            random_bytes=fixed_random(bytes(32)) if kept else fixed_random(bytes(32), NEW_SESSION_ID),
            find_session=lambda sid: kept if kept is not None and sid == kept.id else None, **self.opts,
        )
        return self._handshake(self.conn, self.peer)

    def _new_proxy(self, remote_id: int) -> Pid:
        try:
            return self.proxy_pids[remote_id]
        except KeyError:
            raise AssertionError(f"case {self.case.name}: no proxy_pid line for remote id {remote_id}") from None

    def _new_dead(self, local_id: int) -> Pid:
        if self.dead_pid is None:
            raise AssertionError(f"case {self.case.name}: no dead_pid line for {{pl, {local_id}}}")
        return self.dead_pid

    # -- steps -----------------------------------------------------------------------

    def _proxy(self, remote_id: str) -> Pid:
        return self.conn.session.proxies[int(remote_id)]

    def step(self, key: str, value: str) -> list[tuple[str, str]]:
        """Run one step; the observation lines it produced."""
        conn = self.conn
        args = value.split()
        obs: list[tuple[str, str]] = []
        resumed: list[bytes] | None = None
        try:
            if key == "lost":
                conn.connection_lost()
            elif key in ("resume", "reconnect"):
                events, resumed = self._resume(conn.session if key == "resume" else None)
                conn = self.conn
                obs += [("event", line) for line in map(self._event, events) if line is not None]
            elif key == "send":
                kind, dest, payload = args
                target: Any = self._proxy(dest) if kind == "proxy" else Atom(dest)
                conn.send_message(target, term_of(payload))
            elif key == "recv":
                conn.receive_data(frame(bytes.fromhex(value)))
            elif key == "recv_raw":
                conn.receive_data(bytes.fromhex(value))
            elif key == "exited":
                conn.process_exited(term_of(args[0]), term_of(args[1]))
            elif key == "whereis":
                conn.whereis(Atom(value))
            elif key == "reply_whereis":
                conn.reply_whereis(int(args[0]), None if args[1] == "undefined" else term_of(args[1]))
            elif key in ("link", "unlink"):
                getattr(conn, key)(term_of(args[0]), self._proxy(args[1]))
            elif key == "exit_signal":
                conn.exit_signal(term_of(args[0]), self._proxy(args[1]), term_of(args[2]))
            elif key == "heartbeat":
                conn.heartbeat()
            elif key == "send_confirmed":
                kind, dest, payload = args
                conn.send_confirmed(self._proxy(dest) if kind == "proxy" else Atom(dest), term_of(payload))
            elif key == "mailbox":  # a mailbox's length changes; the grant_delay recheck runs
                self.mailboxes[args[0]] = int(args[1])
                conn.recheck_owed(lambda mailbox: self.mailboxes.get(self._box(mailbox), 0) < self.high)
            elif key == "grant":  # the grant_delay timer fires
                conn.send_grant()
            elif key == "ack":  # the ack_delay timer fires
                conn.send_ack()
            elif key == "whereis_node":
                conn.whereis_node(Atom(args[0]), Atom(args[1]))
            elif key == "nodes":
                conn.request_nodes()
            elif key == "reply_nodes":
                conn.reply_nodes(int(args[0]), [Atom(n) for n in args[1:]])
            elif key == "nodeup":
                conn.node_up(Atom(value))
            elif key == "nodedown":
                conn.node_down(Atom(value))
            else:
                raise ValueError(f"case {self.case.name}: unknown step {key!r}")
        except LocalProtocolError as exc:
            obs.append(("refused", exc.code))
        for ev in conn.events():
            line = self._event(ev)
            if line is not None:
                obs.append(("event", line))
            if isinstance(ev, MessageReceived) and (ev.credit is not None or ev.ref):
                self._runtime(conn, ev)
        for payload in (resumed or []) + split_frames(conn.data_to_send()):
            obs.append(self._out(payload))
        return obs

    def _box(self, dest: Any) -> str:
        return "id " + self._local_id(dest) if type(dest) is Pid else dest.name

    def _runtime(self, conn: Connection, ev: MessageReceived) -> None:
        """What the runtime does with a delivery (docs/protocol.md 11.8, 12.3): a name not
        registered drops it (credit back at once, ``noproc``); otherwise it goes into the
        mailbox, and its credit comes back if the mailbox then holds fewer than mailbox_high."""
        if type(ev.dest) is Atom and ev.dest.name not in self.registered:
            conn.credit_returned(ev.credit)
            conn.send_result(ev.ref, "noproc")
            return
        box = self._box(ev.dest)
        self.mailboxes[box] = self.mailboxes.get(box, 0) + 1
        conn.send_result(ev.ref, None)
        conn.credit_delivered(ev.credit, ev.dest, self.mailboxes[box] < self.high)

    def _out(self, payload: bytes) -> tuple[str, str]:
        term = decode(payload)
        if type(term) is tuple and len(term) == 3 and term[0] == A_ERROR and type(term[1]) is bytes:
            return ("out_error", term[1].decode())  # the message text is each side's own
        return ("out", payload.hex())

    def _local_id(self, pid: Pid) -> str:
        return str(self.conn.session.export_ids[pid])

    def _remote_id(self, pid: Pid) -> str:
        return str(self.conn.session.proxy_ids[pid])

    def _event(self, ev: Any) -> str | None:
        if isinstance(ev, MessageReceived):
            if type(ev.dest) is Pid:
                dest = "id " + self._local_id(ev.dest)
            elif ev.node is not None:
                dest = f"node {ev.dest.name} {ev.node.name}"
            else:
                dest = "name " + ev.dest.name
            return f"message {dest} {etf_hex(ev.payload)}"
        if isinstance(ev, ProxyCreated):
            return f"proxy_created {ev.remote_id}"
        if isinstance(ev, ProxyDied):
            return f"proxy_died {ev.remote_id} {etf_hex(ev.reason)}"
        if isinstance(ev, DeadPidSubstituted):
            return f"dead_pid_substituted {ev.local_id}"
        if isinstance(ev, LinkRequested):
            return f"link {self._remote_id(ev.proxy_pid)} {self._local_id(ev.local_pid)}"
        if isinstance(ev, UnlinkRequested):
            return f"unlink {self._remote_id(ev.proxy_pid)} {self._local_id(ev.local_pid)}"
        if isinstance(ev, ExitSignalReceived):
            return f"exit2 {self._remote_id(ev.from_proxy)} {self._local_id(ev.to_local)} {etf_hex(ev.reason)}"
        if isinstance(ev, WhereisRequested):
            return f"whereis_requested {ev.req_id} {ev.name.name}"
        if isinstance(ev, WhereisReplied):
            return f"whereis_replied {ev.req_id} {'undefined' if ev.pid is None else self._remote_id(ev.pid)}"
        if isinstance(ev, HeartbeatReceived):
            return f"heartbeat {ev.n}"
        if isinstance(ev, HeartbeatAcked):
            return f"heartbeat_ack {ev.n}"
        if isinstance(ev, PeerError):
            return f"peer_error {ev.code}"
        if isinstance(ev, FrameDropped):
            return f"dropped {ev.error.code}"
        if isinstance(ev, ConnectionClosed):
            # a lost socket (no code) is the step itself, not an observation
            return None if ev.code is None else f"closed {ev.code}"
        if isinstance(ev, HandshakeComplete):
            return "resumed" if ev.resumed else "not_resumed"
        if isinstance(ev, SendResult):
            return f"result {ev.ref} {ev.error or 'ok'}"
        if isinstance(ev, MessageRouted):
            return f"routed {ev.name.name} {ev.node.name} {etf_hex(ev.payload)}"
        if isinstance(ev, WhereisNodeRequested):
            return f"whereis_node_requested {ev.req_id} {ev.name.name} {ev.node.name}"
        if isinstance(ev, NodesRequested):
            return f"nodes_requested {ev.req_id}"
        if isinstance(ev, NodesReplied):
            return " ".join(["nodes_replied", str(ev.req_id), *(n.name for n in ev.nodes)])
        if isinstance(ev, (NodeUp, NodeDown)):
            return f"{'nodeup' if isinstance(ev, NodeUp) else 'nodedown'} {ev.node.name}"
        raise AssertionError(f"unexpected event {ev!r}")


def exchange_steps(case: Case, side: str = "python") -> list[tuple[tuple[str, str], list[tuple[str, str]]]]:
    """The case's steps, each with the observation lines that follow it: the common ones,
    and in a drift case those of ``side`` (lines ``python KEY VALUE`` / ``erlang KEY VALUE``)."""
    steps: list[tuple[tuple[str, str], list[tuple[str, str]]]] = []
    for key, value in case.lines:
        if key == side:
            key, _, value = value.partition(" ")
        elif key in ("python", "erlang"):
            continue
        if key in STEPS:
            steps.append(((key, value), []))
        elif key in OBSERVATIONS:
            if not steps:
                raise ValueError(f"case {case.name}: {key} before any step")
            steps[-1][1].append((key, value))
    return steps


def run_exchange(case: Case) -> list[tuple[tuple[str, str], list[tuple[str, str]]]]:
    """Play every step; (step, observed lines) in order."""
    ex = Exchange(case)
    return [(step, ex.step(*step)) for step, _ in exchange_steps(case)]


# --------------------------------------------------------------------------- handshake frames


def run_handshake_frames(case: Case) -> list[tuple[tuple[str, str], list[tuple[str, str]]]]:
    """A ``kind handshake_frames`` case: frames played on one side during the handshake
    (legacy handshakes and refused first frames); (step, observed lines) in order."""
    role = case.get("role")
    chunks = [bytes.fromhex(h) for h in case.words("random")]
    conn = Connection(
        role,
        case.hex("secret"),
        node_name=US,
        new_proxy_pid=lambda i: Pid(US, 1000 + i, 0, 1),
        allow_legacy_auth=case.get("allow_legacy_auth") == "true",
        random_bytes=fixed_random(*chunks),
    )
    out = []
    for (key, value), _ in exchange_steps(case):
        if key == "start":
            conn.start()
        elif key == "recv":
            conn.receive_data(frame(bytes.fromhex(value)))
        else:
            raise ValueError(f"case {case.name}: step {key!r} is not a handshake step")
        obs: list[tuple[str, str]] = []
        for ev in conn.events():
            if isinstance(ev, HandshakeComplete):
                obs.append(("event", " ".join(["established", ev.mode, *sorted(ev.features)])))
            elif isinstance(ev, AuthFailed):
                obs.append(("event", "auth_failed"))
            elif isinstance(ev, ConnectionClosed):
                obs.append(("event", f"closed {ev.code}"))
            else:
                raise AssertionError(f"unexpected event {ev!r} during a handshake")
        obs += [("out", f.hex()) for f in split_frames(conn.data_to_send())]
        out.append(((key, value), obs))
    return out
