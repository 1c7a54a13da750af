"""Record the extended-protocol cases of conformance/cases/ by running our implementations.

    .venv/bin/python conformance/tools/generate.py      # from the repository root, after `make peer`

Handshake transcripts are made by the implementations that play each role (a Python
``Connection``, or the Erlang peer's ``fabric_peer_handshake`` functions through
``conformance_gen.erl``), with fixed secrets, nonces and session ids. Exchange cases are
scripts of steps; the Python core records what each step produces. Every stored case is
then checked by BOTH runners (tests/conformance, fabric_peer_conformance_SUITE): a case
recorded from one side that the other side does not reproduce fails there, so the files
capture agreement. Re-running this script rewrites the files; review the diff.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "conformance"))

from conformance_corpus import CASES_DIR, Case  # noqa: E402
from conformance_driver import (  # noqa: E402
    US,
    etf_hex,
    handshake_result,
    handshake_role,
    outcome_of,
    run_exchange,
    run_handshake_frames,
    split_frames,
)

from pyfabric.etf import Atom, ImproperList, Pid, Reference, decode, encode  # noqa: E402

EBIN = ROOT / "erlang_peer" / "_build" / "default" / "lib" / "fabric_peer" / "ebin"
TMP = pathlib.Path(tempfile.mkdtemp(prefix="conformance_gen"))
ALL_PY = sorted(["whereis", "link", "maps", "bitstrings", "ports", "funs", "heartbeat", "error", "session"])
# The Erlang peer's default order (fabric_peer_opts:all_features/0): what it offers and accepts.
ALL_ERL = ["whereis", "link", "maps", "bitstrings", "ports", "funs", "heartbeat", "error", "session"]


def erl(args: dict[str, Any]) -> bytes:
    hexarg = encode({Atom(k): v for k, v in args.items()}, minor_version=1).hex()
    out = subprocess.run(
        ["erl", "-noshell", "-pa", str(EBIN), "-pa", str(TMP), "-eval",
         f'conformance_gen:main("{hexarg}"), halt().'],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return decode(bytes.fromhex(out))


def _b(words: list[str]) -> list[bytes]:
    return [w.encode() for w in words]


def feed(conn: Any, payload: bytes) -> tuple[bytes, list[Any]]:
    conn.receive_data(len(payload).to_bytes(4, "big") + payload)
    events = conn.events()
    frames = split_frames(conn.data_to_send())
    return (frames[0] if frames else b""), events


def transcript(name: str, client: str, server: str, *, note: str, client_secret: bytes = b"conformance secret",
               server_secret: bytes = b"conformance secret", client_features: list[str] | None = None,
               server_features: list[str] | None = None, resume: bytes | None = None,
               kept: bytes | None = None, seed: int = 1, client_node: str = "cli@conformance",
               server_routing: int | None = None, file: str = "handshakes.cases") -> Case:
    cf = client_features if client_features is not None else (ALL_PY if client == "python" else ALL_ERL)
    sf = server_features if server_features is not None else (ALL_PY if server == "python" else ALL_ERL)
    client_nonce = bytes(range(seed, seed + 32))
    server_nonce = bytes(range(100 + seed, 132 + seed))
    new_sid = bytes(range(200 + seed, 216 + seed))
    lines: list[tuple[str, str]] = [("kind", "handshake"), ("note", note), ("client", client), ("server", server),
             ("client_secret", client_secret.hex()), ("server_secret", server_secret.hex()),
             ("client_nonce", client_nonce.hex()), ("server_nonce", server_nonce.hex()),
             ("resume", resume.hex() if resume else "none"), ("server_kept_session", kept.hex() if kept else "none"),
             ("client_node", client_node), ("client_features", " ".join(cf)),
             ("client_max_frame", "1048576"), ("client_heartbeat", "0"),
             ("server_node", "srv@conformance"), ("server_features", " ".join(sf)),
             ("server_max_frame", "67108864"), ("server_heartbeat", "15000")]
    if server_routing is not None:  # a routing server (16.1), its route_heartbeat in ms
        lines.append(("server_routing", str(server_routing)))
    # the session id the server ends with: the resumed one, a new one, or none
    agreed = [f for f in cf if f in sf]
    session_on = "session" in agreed
    resumed = session_on and resume is not None and resume == kept
    sid = (resume if resumed else new_sid) if session_on else None
    lines += [("session_id", sid.hex() if sid else "none"), ("resumed", str(resumed).lower())]
    case = Case(name, "generated", list(lines))
    cconn = handshake_role(case, "client") if client == "python" else None
    sconn = handshake_role(case, "server") if server == "python" else None
    if cconn is not None:
        cconn.start()
        f1 = split_frames(cconn.data_to_send())[0]
    else:
        f1 = erl({"op": Atom("hello"), "client_nonce": client_nonce})
    if sconn is not None:
        f2, _ = feed(sconn, f1)
    else:
        f2 = erl({"op": Atom("challenge"), "f1": f1, "server_nonce": server_nonce, "features": _b(sf),
                  "node": b"srv@conformance", "max_frame": 67108864, "heartbeat": 15000})
    if cconn is not None:
        f3, _ = feed(cconn, f2)
    else:
        f3 = erl({"op": Atom("response"), "secret": client_secret, "f1": f1, "f2": f2, "features": _b(cf),
                  "node": b"cli@conformance", "max_frame": 1048576, "heartbeat": 0,
                  "resume": resume if resume else Atom("undefined")})
    if sconn is not None:
        f4, sevents = feed(sconn, f3)
        server_outcome = outcome_of(sevents)
    else:
        f4 = erl({"op": Atom("auth"), "secret": server_secret, "f1": f1, "f2": f2, "f3": f3, "features": _b(sf),
                  "session_id": new_sid, "kept_session": kept if kept else Atom("undefined")})
        server_outcome = "auth_failed" if decode(f4) == (Atom("auth"), Atom("failed")) else "established " + " ".join(sorted(agreed))
    _, mac, accept_bin = decode(f3)
    lines += [("f1", f1.hex()), ("f2", f2.hex()), ("f3", f3.hex()), ("f4", f4.hex()),
              ("accept_bin", accept_bin.hex()), ("client_mac", mac.hex())]
    t4 = decode(f4)
    if len(t4) == 4:
        lines += [("info_bin", t4[3].hex()), ("server_mac", t4[2].hex())]
    lines.append(("server_outcome", server_outcome))
    if cconn is not None:
        _, cevents = feed(cconn, f4)
        client_outcome = outcome_of(cevents)
        got = handshake_result(cevents)
        if got and (got["session_id"], got["resumed"]) != (sid.hex() if sid else "none", str(resumed).lower()):
            raise AssertionError(f"{name}: Python client ended with {got}")
    else:
        client_outcome = server_outcome  # an Erlang client accepts what the server established (checked by its runner)
    lines.append(("client_outcome", client_outcome))
    return Case(name, file, lines)


def tamper_server_mac(case: Case, name: str) -> Case:
    """The same transcript with frame 4's ServerMac replaced: a server that does not know the secret."""
    f4 = decode(bytes.fromhex(case.get("f4")))
    bad_mac = bytes(b ^ 0x5A for b in f4[2])
    lines = [(k, v) for k, v in case.lines if k not in ("f4", "server_mac", "client_outcome", "note", "server")]
    lines.insert(1, ("note", "frame 4 from an impostor: the ServerMac is wrong; the client must refuse it"))
    lines.insert(2, ("server", "tampered"))
    new_f4 = encode((Atom("auth"), Atom("success"), bad_mac, f4[3]), minor_version=1)
    lines += [("f4", new_f4.hex()), ("server_mac", bad_mac.hex()), ("client_outcome", "auth_failed")]
    return Case(name, "handshakes.cases", lines)


def handshakes() -> list[Case]:
    out = []
    for c, s in (("python", "python"), ("erlang", "erlang"), ("python", "erlang"), ("erlang", "python")):
        out.append(transcript(f"hs_{c[:2]}_client_{s[:2]}_server", c, s, seed=len(out) + 1,
                              note=f"{c} client, {s} server, every version 1 feature, a new session"))
    sid = bytes(range(240, 256))
    for c, s in (("python", "python"), ("erlang", "erlang"), ("python", "erlang"), ("erlang", "python")):
        out.append(transcript(f"hs_resume_{c[:2]}_client_{s[:2]}_server", c, s, resume=sid, kept=sid, seed=len(out) + 1,
                              note="the client asks to resume a session the server keeps: resumed, same id"))
    out.append(transcript("hs_resume_unknown_py_client_er_server", "python", "erlang", resume=sid, seed=20,
                          note="the client asks to resume a session the server does not know: a new session"))
    out.append(transcript("hs_resume_unknown_er_client_py_server", "erlang", "python", resume=sid, seed=21,
                          note="the client asks to resume a session the server does not know: a new session"))
    out.append(transcript("hs_subset_py_client_er_server", "python", "erlang", client_features=["link", "whereis"], seed=22,
                          note="the client enables only link and whereis: no session id in Info"))
    out.append(transcript("hs_subset_er_client_py_server", "erlang", "python", client_features=["whereis", "link"], seed=23,
                          note="the client enables only whereis and link: no session id in Info"))
    out.append(transcript("hs_reserved_offer_er_client_py_server", "erlang", "python", seed=24,
                          server_features=["error", "session"], client_features=["error", "session", "whereis"],
                          note="the client knows features the server does not offer: it enables the intersection"))
    out.append(transcript("hs_wrong_secret_py_client_er_server", "python", "erlang", client_secret=b"WRONG", seed=25,
                          note="auth_failed: the client's secret is wrong; the server answers {auth, failed}"))
    out.append(transcript("hs_wrong_secret_er_client_py_server", "erlang", "python", client_secret=b"WRONG", seed=26,
                          note="auth_failed: the client's secret is wrong; the server answers {auth, failed}"))
    out.append(tamper_server_mac(out[0], "hs_bad_server_mac_py_client"))
    out.append(tamper_server_mac(out[2], "hs_bad_server_mac_py_client_er_server"))
    out.append(tamper_server_mac(out[1], "hs_bad_server_mac_er_client"))
    return out


# --------------------------------------------------------------------------- exchanges


def P(n: int) -> Pid:
    return Pid(US, n, 0, 1)


A = Atom
LOCAL_A, LOCAL_B = P(1), P(2)
REF = Reference(US, 1, (7, 8, 9))


def hx(term: Any) -> str:
    return etf_hex(term)


def fr(term: Any) -> str:
    """A received frame: plain term_to_binary/1 (minor_version 1), as our peers send it."""
    return encode(term, minor_version=1).hex()


def exchange(name: str, note: str, context: list[tuple[str, str]], steps: list[tuple[str, str]], kind: str = "exchange") -> Case:
    lines = [("kind", kind), ("note", note)] + context + [(k, v) for k, v in steps]
    case = Case(name, "generated", lines)
    recorded = run_exchange(case)
    out = [("kind", kind), ("note", note)] + context
    for step, obs in recorded:
        out.append(step)
        out.extend(obs)
    return Case(name, "", out)


def proxies(*ids: int) -> list[tuple[str, str]]:
    return [("proxy_pid", f"{i} {hx(P(1000 + i))}") for i in ids]


EXT = [("mode", "extended"), ("features", " ".join(ALL_PY)), ("allowed", "echo")]
LEG = [("mode", "legacy"), ("allowed", "echo")]
M = A("m")


def m_to_echo(payload: Any) -> str:
    return fr((M, A("echo"), payload))


def rewriting() -> list[Case]:
    rich = (LOCAL_A, REF, ImproperList((1, 2), A("tail")), "text", b"\x01\x02", 3.5, -(1 << 70), (), [A("x"), (A("y"),)])
    wire_rich_in = (A("t"), ((A("pr"), 7), (A("pl"), 1), (A("r"), encode(REF, minor_version=1)), [1, (A("t"), (A("z"),))]))
    return [
        exchange("rw_out_rich_ext", "section 4.1 outbound: tuples wrapped, a local pid exported as {pr,1}, a reference as "
                 "{r,Bin}; m frames compressed when smaller (with the compress option on)",
                 EXT + [("compress_messages", "true")], [("send", f"name echo {hx(rich)}")]),
        exchange("rw_out_plain_by_default", "section 4.1: an m frame to one of our peers is plain by default, even "
                 "when zlib would make it smaller (both implementations; compress_messages / compress turn it on)",
                 [("mode", "extended"), ("features", " ".join(ALL_PY)), ("allowed", "echo")],
                 [("send", f"name echo {hx((LOCAL_A, [b'abcdefgh'] * 8))}")]),
        exchange("rw_out_rich_legacy", "the same payload to an original peer: the frame is compressed when smaller",
                 LEG, [("send", f"name echo {hx(rich)}")]),
        exchange("rw_in_markers_ext", "section 4.1 inbound: {pr,Id} becomes a proxy, {pl,Id} our own pid, {r,Bin} the reference",
                 EXT + proxies(7),
                 [("send", f"name echo {hx(LOCAL_A)}"), ("recv", fr((M, 1, wire_rich_in)))]),
        exchange("rw_proxy_back_to_origin", "our proxy for the peer's process 7 goes back as {pl,7}; a local pid shipped twice is {pr,1} both times",
                 EXT + [("compress_messages", "true")] + proxies(7),
                 [("recv", m_to_echo((A("pr"), 7))), ("send", f"proxy 7 {hx((P(1007), LOCAL_B, LOCAL_B))}")]),
        exchange("rw_pl_unknown_ext", "an unknown {pl,Id} is replaced by an exited pid (section 4.1)",
                 EXT + [("dead_pid", hx(Pid(US, 0, 0, 0)))], [("recv", m_to_echo((A("t"), ((A("pl"), 777), A("x")))))]),
        exchange("rw_maps_ext", "maps travel with 'maps' agreed; keys and values rewritten",
                 EXT + proxies(3),
                 [("send", f"name echo {hx({A('k'): (1, 2)})}"),
                  ("recv", m_to_echo({A("k"): (A("t"), (A("v"), (A("pr"), 3)))}))]),
        exchange("rw_map_refused_legacy", "a map to an original peer is a local error before anything is written",
                 LEG, [("send", f"name echo {hx({A('k'): 1})}")]),
        exchange("rw_map_refused_unagreed", "a map to our peer that did not agree on 'maps' is a local error",
                 [("mode", "extended"), ("features", "error link"), ("allowed", "echo")],
                 [("send", f"name echo {hx({A('k'): 1})}")]),
        exchange("rw_dead_and_graves", "DEAD frames: ours on exit (reason raw); theirs end the proxy (noproc kept with our peers)",
                 EXT + proxies(4, 5),
                 [("send", f"name echo {hx(LOCAL_A)}"), ("exited", f"{hx(LOCAL_A)} {hx((A('shutdown'), 1.5))}"),
                  ("recv", m_to_echo([(A("pr"), 4), (A("pr"), 5)])),
                  ("recv", fr((A("DEAD"), (A("pr"), 4), A("noproc")))),
                  ("recv", fr((A("DEAD"), (A("pr"), 5), (A("boom"), [1])))),
                  ("recv", fr((A("DEAD"), (A("pr"), 99), A("normal"))))]),
        exchange("rw_dead_noproc_legacy", "with an original peer DEAD noproc becomes normal (section 4.4)",
                 LEG + proxies(5),
                 [("recv", m_to_echo((A("pr"), 5))), ("recv", fr((A("DEAD"), (A("pr"), 5), A("noproc"))))]),
    ]


def resume_cases() -> list[Case]:
    """docs/protocol.md 7: what a resumed session keeps and sends (our side is the server;
    the peer's new connection resumes with the same secret, features and session id)."""
    ext = EXT + [("compress_messages", "true")]  # as the Erlang peer writes m frames (drift.cases)
    dead = lambda ident, reason: fr((A("DEAD"), (A("pr"), ident), reason))  # noqa: E731
    return [
        exchange("resume_tables_kept", "after a resume our export 1 and the proxy for the peer's 7 keep their ids both ways",
                 ext + proxies(7),
                 [("recv", m_to_echo((A("pr"), 7))), ("send", f"proxy 7 {hx(LOCAL_A)}"), ("lost", ""), ("resume", ""),
                  ("recv", fr((M, 1, (A("t"), (A("back"), (A("pr"), 7)))))),
                  ("send", f"proxy 7 {hx((LOCAL_A, P(1007)))}")]),
        exchange("resume_dead_resent", "the DEAD sent before the cut is sent again after the resume, oldest first, then the "
                 "one queued while disconnected; nothing else is resent",
                 ext,
                 [("send", f"name echo {hx((LOCAL_A, LOCAL_B, P(3)))}"), ("exited", f"{hx(LOCAL_A)} {hx(A('normal'))}"),
                  ("exited", f"{hx(LOCAL_B)} {hx((A('shutdown'), 1))}"), ("lost", ""),
                  ("exited", f"{hx(P(3))} {hx(A('killed'))}"), ("resume", ""), ("send", f"name echo {hx(1)}")]),
        exchange("resume_duplicate_dead_ignored", "a DEAD received again after a resume (the peer resends its last ones) is "
                 "ignored: the proxy already ended; one for a live proxy still ends it",
                 ext + proxies(7, 8),
                 [("recv", m_to_echo([(A("pr"), 7), (A("pr"), 8)])), ("recv", dead(7, A("normal"))), ("lost", ""),
                  ("resume", ""), ("recv", dead(7, A("normal"))), ("recv", dead(8, A("crashed"))),
                  ("recv", dead(8, A("crashed"))), ("recv", m_to_echo((A("pr"), 7)))]),
        exchange("resume_twice_resends_again", "the recent DEAD notices are kept: a second resume resends them again",
                 ext,
                 [("send", f"name echo {hx(LOCAL_A)}"), ("exited", f"{hx(LOCAL_A)} {hx(A('normal'))}"), ("lost", ""),
                  ("resume", ""), ("lost", ""), ("resume", "")]),
        exchange("resume_unknown_session", "the peer asks for a session we no longer keep: a new session, nothing is "
                 "resent, the old ids are void (our 1 is unknown, the peer's 7 is a new proxy)",
                 ext + proxies(7),
                 [("recv", m_to_echo((A("pr"), 7))), ("send", f"name echo {hx(LOCAL_A)}"),
                  ("exited", f"{hx(LOCAL_A)} {hx(A('normal'))}"), ("lost", ""), ("reconnect", ""),
                  ("recv", fr((M, 1, A("x")))), ("recv", m_to_echo((A("pr"), 7)))]),
    ]


def frames_cases() -> list[Case]:
    return [
        exchange("whereis_both_ways", "section 5.1: a refused name is undefined; an allowed one is answered by the runtime",
                 EXT + proxies(9),
                 [("recv", fr((A("whereis"), 1, b"echo"))), ("reply_whereis", f"1 {hx(LOCAL_A)}"),
                  ("recv", fr((A("whereis"), 2, b"rex"))), ("recv", fr((A("whereis"), 3, b"never_heard_of_it"))),
                  ("whereis", "svc"), ("recv", fr((A("whereis_reply"), 1, (A("pr"), 9)))),
                  ("whereis", "gone"), ("recv", fr((A("whereis_reply"), 2, A("undefined"))))]),
        exchange("link_exit2", "section 5.2: link/unlink/exit2 frames both ways; exit2's Reason is rewritten",
                 EXT + proxies(7),
                 [("recv", m_to_echo((A("pr"), 7))), ("send", f"proxy 7 {hx(LOCAL_A)}"),
                  ("recv", fr((A("link"), 7, 1))), ("recv", fr((A("unlink"), 7, 1))),
                  ("recv", fr((A("exit2"), 7, 1, (A("t"), (A("shutdown"), (A("pl"), 1)))))),
                  ("recv", fr((A("link"), 7, 42))),
                  ("link", f"{hx(LOCAL_B)} 7"), ("unlink", f"{hx(LOCAL_B)} 7"),
                  ("exit_signal", f"{hx(LOCAL_B)} 7 {hx((A('bye'), LOCAL_B))}")]),
        exchange("whereis_reply_unsolicited", "section 9: a whereis_reply nobody asked for is unknown_frame (dropped, error frame)",
                 EXT, [("recv", fr((A("whereis_reply"), 5, A("undefined"))))]),
        exchange("heartbeat", "section 5.3: a heartbeat is acknowledged with the same N",
                 EXT, [("recv", fr((A("heartbeat"), 5))), ("heartbeat", ""), ("recv", fr((A("heartbeat_ack"), 0)))]),
        exchange("peer_error_frame", "section 5.4: an error frame is logged, never answered",
                 EXT, [("recv", fr((A("error"), b"bad_payload", b"x")))]),
    ]


FLOW = ["acks", "credit", "error", "session"]
CREDIT = [("mode", "extended"), ("features", " ".join(FLOW)), ("allowed", "echo other ghost"), ("registered", "echo other")]
NO_CREDIT = [("mode", "extended"), ("features", "acks error session"), ("allowed", "echo ghost"), ("registered", "echo")]


def credit_cases() -> list[Case]:
    """docs/protocol.md 12 and 13.4: grants, owed credit, windows both ways, violations."""
    ok, err = A("ok"), A("error")
    cases = [
        exchange("credit_grant_at_half_the_destination_window", "12.4: a return reaching half of credit_dest (rounded up) is granted at once",
                 CREDIT + [("credit_dest", "2")],
                 [("recv", m_to_echo(A("a")))]),
        exchange("credit_owed_until_the_mailbox_has_room", "12.3: over mailbox_high the credit waits; the recheck returns it in one grant",
                 CREDIT + [("mailbox_high", "4")],
                 [("mailbox", "echo 10"), ("recv", m_to_echo(A("a"))), ("recv", m_to_echo(A("b"))), ("grant", ""),
                  ("mailbox", "echo 2"), ("grant", "")]),
        exchange("credit_grant_after_grant_delay", "12.4: below every threshold the grant waits for the grant_delay timer",
                 CREDIT, [("recv", m_to_echo(1)), ("recv", fr((M, A("other"), 2))), ("grant", ""), ("grant", "")]),
        exchange("credit_returned_at_once_when_not_delivered", "12.3: an unregistered name, an unknown id: returned at once",
                 CREDIT + [("credit_dest", "1")],
                 [("recv", fr((M, A("ghost"), 1))), ("recv", fr((M, 99, 2)))]),
        exchange("credit_exceeded", "13.4: a frame over credit_dest is dropped, returned at once, error frame",
                 CREDIT + [("credit_dest", "1"), ("mailbox_high", "1")],
                 [("recv", m_to_echo(1)), ("recv", m_to_echo(2)), ("mailbox", "echo 0")]),
        exchange("credit_sender_waits_per_destination", "12.2, 14.2: a destination out of credit waits, the others go on; a grant releases it in order",
                 CREDIT + [("peer_credit_dest", "1")],
                 [("send", f"name echo {hx(A('a'))}"), ("send", f"name echo {hx(A('b'))}"), ("send", f"name other {hx(A('x'))}"),
                  ("send", f"name echo {hx(A('c'))}"),
                  ("recv", fr((A("credit"), [(A("echo"), 1)], 13))), ("recv", fr((A("credit"), [(A("echo"), 1), (A("other"), 1)], 31)))]),
        exchange("credit_overflow", "13.4: a grant above what is outstanding is clamped, dropped with an error frame",
                 CREDIT, [("send", f"name echo {hx(1)}"), ("recv", fr((A("credit"), [(A("echo"), 5)], 0))),
                          ("recv", fr((A("credit"), A("bad"), 0)))]),
        exchange("credit_frame_without_the_feature", "13.1: a credit frame when credit was not agreed is unknown_frame",
                 NO_CREDIT, [("recv", fr((A("credit"), [], 0)))]),
        exchange("mc_answered", "11.8: ok at delivery, noproc for an unregistered name, not_allowed (no error frame), a bad Ref",
                 NO_CREDIT, [("recv", fr((A("mc"), 1, A("echo"), A("hi")))), ("recv", fr((A("mc"), 2, A("ghost"), 1))),
                             ("recv", fr((A("mc"), 3, A("secret"), 1))), ("recv", fr((A("mc"), 0, A("echo"), 1)))]),
        exchange("mc_with_credit", "11.8, 12.3: an mc is credited like an m and answered at delivery",
                 CREDIT + [("credit_dest", "1")], [("recv", fr((A("mc"), 7, A("echo"), A("hi"))))]),
        exchange("send_confirmed", "11.8: our mc, its result, a result for a Ref not pending",
                 NO_CREDIT, [("send_confirmed", f"name echo {hx(A('hi'))}"), ("send_confirmed", f"name ghost {hx(2)}"),
                             ("recv", fr((A("mc_result"), 1, ok))), ("recv", fr((A("mc_result"), 2, (err, b"noproc")))),
                             ("recv", fr((A("mc_result"), 1, ok)))]),
        exchange("send_confirmed_needs_acks", "11.8: without acks a confirmed send is refused, nothing written; an mc frame is unknown",
                 [("mode", "extended"), ("features", "error session"), ("allowed", "echo")],
                 [("send_confirmed", f"name echo {hx(1)}"), ("recv", fr((A("mc"), 1, A("echo"), 1)))]),
    ]
    # Kind `flow`: exchanges with the acks / credit keys and steps (read by the Erlang runner once it knows them).
    return [Case(c.name, c.file, [("kind", "flow") if k == "kind" else (k, v) for k, v in c.lines]) for c in cases]


def route_cases() -> list[Case]:
    """docs/protocol.md 16: the route frames on one connection, ours a routing server
    (``route_nodes``: client nodes it reaches, ``route_refused``: ones its policy refuses)
    or, with ``role client``, ours a client of one (kind ``route_exchange``)."""
    feats = " ".join(sorted(ALL_PY + ["route"]))
    hub = [("mode", "extended"), ("features", feats), ("allowed", "echo"),
           ("route_nodes", "c2@conformance"), ("route_refused", "c3@conformance")]
    node = [("mode", "extended"), ("features", feats), ("allowed", "echo"), ("role", "client")]
    c2, c3 = b"c2@conformance", b"c3@conformance"
    route = lambda name, steps, note, ctx=hub: exchange(name, note, ctx, steps, kind="route_exchange")  # noqa: E731
    return [
        route("route_m_to_client_nodes",
              [("recv", fr((M, (A("echo"), A("c2@conformance")), (A("t"), (A("hi"), (A("pr"), 7)))))),
               ("recv", fr((M, (A("echo"), A("us@conformance")), A("local")))),
               ("recv", fr((M, (A("rex"), A("c2@conformance")), A("not_ours_to_check")))),
               ("recv", fr((M, (A("echo"), A("c3@conformance")), A("refused")))),
               ("recv", fr((M, (A("echo"), A("c9@conformance")), (A("pr"), 8))))],
              "16.3: {Name, Node} to a client node is routed (the payload's pids become our proxies, our name "
              "policy does not apply), to our own node delivered here, refused by the policy not_allowed, to an "
              "unknown node dropped without a word (no proxy made)",
              hub + proxies(7)),
        route("route_whereis_node",
              [("recv", fr((A("whereis_node"), 1, b"echo", c2))), ("reply_whereis", f"1 {hx(P(1007))}"),
               ("recv", fr((A("whereis_node"), 2, b"echo", c3))),
               ("recv", fr((A("whereis_node"), 3, b"echo", b"us@conformance"))), ("reply_whereis", "3 undefined"),
               ("recv", fr((A("whereis_node"), 4, b"rex", b"us@conformance"))),
               ("recv", fr((A("whereis_node"), 5, b"echo", b"c9@conformance"))),
               ("recv", fr((A("whereis_node"), 6, b"echo", b"not a node"))),
               ("recv", fr((A("whereis_node"), 0, b"echo", c2)))],
              "16.5: whereis on a client node is asked of the runtime (it asks that client), the answer exported "
              "as ours; refused, unknown or malformed nodes and our own refused names are undefined at once; a bad "
              "ReqId is unknown_frame"),
        route("route_nodes_and_notices",
              [("recv", fr((A("nodes"), 1))), ("reply_nodes", "1 c2@conformance c4@conformance"),
               ("nodeup", "c5@conformance"), ("nodedown", "c5@conformance"),
               ("recv", fr((A("nodes"), 2))), ("recv", fr((A("nodes"), 2))), ("reply_nodes", "2"),
               ("recv", fr((A("nodeup"), c2))), ("recv", fr((A("nodes_reply"), 1, [c2])))],
              "16.6: nodes answered with what the runtime lists; nodeup/nodedown written; a ReqId already pending "
              "and the client-bound frames at a server are unknown_frame"),
        route("route_client_side",
              [("nodes", ""), ("recv", fr((A("nodes_reply"), 1, [c2, c3]))),
               ("recv", fr((A("nodeup"), b"c4@conformance"))), ("recv", fr((A("nodedown"), c2))),
               ("whereis_node", "echo c2@conformance"), ("recv", fr((A("whereis_reply"), 2, (A("pr"), 9)))),
               ("recv", fr((A("nodes_reply"), 7, []))), ("recv", fr((A("nodeup"), b"no_host"))),
               ("recv", fr((A("whereis_node"), 1, b"echo", c2))), ("recv", fr((A("nodes"), 1)))],
              "16.5, 16.6 at a client: nodes and whereis_node written, the replies and notices become events; a "
              "reply to no request, a bad node name and the server-bound frames are unknown_frame",
              node + proxies(9)),
        route("route_not_agreed",
              [("recv", fr((A("nodes"), 1))), ("recv", fr((A("whereis_node"), 1, b"echo", c2))),
               ("recv", fr((M, (A("echo"), A("c2@conformance")), A("as_before"))))],
              "a server without routing: the route frames are unknown_frame, and {Name, Node} is delivered here "
              "as in version 1 (a Python node treats every Node as itself, docs/protocol.md 4.1)",
              EXT),
        transcript("hs_route_py_client_py_server", "python", "python", seed=30, file="route.cases",
                   client_features=sorted(ALL_PY + ["route"]), server_features=sorted(ALL_PY + ["route"]),
                   server_routing=1000,
                   note="16.1: a routing server offers route with route_heartbeat; the client accepts it with a "
                        "heartbeat of at most that, and its node name name@host"),
        transcript("hs_route_bad_node_py_client_py_server", "python", "python", seed=31, file="route.cases",
                   client_features=sorted(ALL_PY + ["route"]), server_features=sorted(ALL_PY + ["route"]),
                   server_routing=1000, client_node="cli_without_host",
                   note="16.1: a route Accept whose node name is not name@host fails the handshake, auth_failed"),
    ]


def errors() -> list[Case]:
    legacy = lambda n: (ROOT / "conformance" / "legacy").glob(f"{n:02d}_*.bin")  # noqa: E731
    vec = lambda n: next(legacy(n)).read_bytes().hex()  # noqa: E731
    return [
        exchange("err_bad_term", "bad_term: a frame that is not ETF (vector 45) is dropped, an error frame follows",
                 EXT, [("recv", vec(45))]),
        exchange("err_unknown_frame", "unknown_frame: an unknown shape (vector 44), and a frame of a feature not agreed",
                 [("mode", "extended"), ("features", "error link"), ("allowed", "echo")],
                 [("recv", vec(44)), ("recv", fr((A("heartbeat"), 1))), ("recv", fr((A("whereis"), 1, b"echo")))]),
        exchange("err_unknown_id", "unknown_id: m to an id never issued (vector 46)", EXT, [("recv", vec(46))]),
        exchange("err_not_allowed", "not_allowed: a name outside the policy, a system name, {Name, Node} (vectors 27, 28)",
                 EXT, [("recv", vec(27)), ("recv", fr((M, A("rex"), 1))),
                       ("recv", vec(28))]),
        exchange("err_bad_payload", "bad_payload: an untagged tuple (as in vector 47), a bad marker, a map without 'maps'",
                 [("mode", "extended"), ("features", "error"), ("allowed", "echo")],
                 [("recv", m_to_echo((A("a"), A("b")))), ("recv", m_to_echo((A("pr"), A("x")))), ("recv", m_to_echo({A("a"): 1}))]),
        exchange("err_limit_max_proxies", "limit: a frame that would create a proxy beyond max_proxies (here 1)",
                 EXT + [("max_proxies", "1")] + proxies(1, 2),
                 [("recv", m_to_echo((A("pr"), 1))), ("recv", m_to_echo((A("pr"), 2)))]),
        exchange("err_frame_too_large", "frame_too_large: a length header over max_frame closes (error frame first)",
                 EXT + [("max_frame", "1000")], [("recv_raw", (1001).to_bytes(4, "big").hex())]),
        exchange("err_too_many_errors", "too_many_errors: more than max_errors (2) dropped frames in the window close",
                 EXT + [("max_errors", "2"), ("error_window", "10")],
                 [("recv", vec(44)), ("recv", m_to_echo(1)), ("recv", vec(44)), ("recv", vec(44))]),
        exchange("err_legacy_no_error_frames", "with an original peer bad frames are dropped silently (vectors 44-46, 47 sent to echo)",
                 LEG, [("recv", vec(44)), ("recv", vec(45)), ("recv", vec(46)), ("recv", m_to_echo((A("a"), A("b"))))]),
    ]


def drift(name: str, note: str, context: list[tuple[str, str]], steps: list[tuple[tuple[str, str], list[str]]]) -> Case:
    """A known disagreement: the Python core's observations are recorded, the Erlang peer's
    are given here (each runner checks its own side, and that the two still differ)."""
    script = Case(name, "generated", [("kind", "drift"), ("note", note)] + context + [s for s, _ in steps])
    out = [("kind", "drift"), ("note", note)] + context
    for (step, py_obs), (_, erl_obs) in zip(run_exchange(script), steps):
        out.append(step)
        out += [("python", f"{k} {v}") for k, v in py_obs]
        out += [("erlang", line) for line in erl_obs]
    return Case(name, "", out)


def drifts() -> list[Case]:
    ctx = [("mode", "extended"), ("features", "error heartbeat link whereis"), ("allowed", "echo"), ("max_proxies", "1")]
    ctx += proxies(7, 8)
    return [
        drift("drift_proxy_of_dropped_frame",
              "a proxy made while decoding a frame that is then dropped: Python keeps it (it counts against "
              "max_proxies), the Erlang peer ends it",
              ctx, [(("recv", m_to_echo([(A("pr"), 7), (A("a"), A("b"))])),
                     ["event dropped bad_payload", "out_error bad_payload"]),
                    (("recv", m_to_echo((A("pr"), 8))),
                     ["event proxy_created 8", f"event message name echo {hx(P(1008))}"])]),
        drift("drift_bad_payload_to_unregistered_name",
              "a bad payload to an allowed name nothing is registered under: the Erlang peer drops it silently "
              "(no process, payload not decoded), the Python core reports bad_payload (its runtime checks the name later)",
              [("mode", "extended"), ("features", "error"), ("allowed", "echo nobody_here"), ("registered", "echo")],
              [(("recv", fr((M, A("nobody_here"), (A("a"), A("b"))))), [])]),
        drift("drift_link_to_ended_target",
              "{link, A, B} for an unknown or ended B: Python still makes the proxy for A, the Erlang peer does not",
              ctx, [(("recv", fr((A("link"), 7, 42))), []),
                    (("recv", m_to_echo((A("pr"), 8))),
                     ["event proxy_created 8", f"event message name echo {hx(P(1008))}"])]),
    ]


def legacy_handshakes() -> list[Case]:
    """Legacy handshakes with the recorded frames, and first frames a server refuses."""
    vec = lambda n: next((ROOT / "conformance" / "legacy").glob(f"{n:02d}_*.bin")).read_bytes().hex()  # noqa: E731
    challenge = "ce7e5a220e0749da5543bce7f8d953fb"  # vector 02's challenge text = hex of these 16 bytes
    server = lambda allow: [("role", "server"), ("secret", b"secret".hex()),  # noqa: E731
                            ("allow_legacy_auth", allow), ("random", challenge)]
    cases = [
        ("legacy_server_success", "vectors 01-04: our server with legacy auth allowed answers the original client byte for byte",
         server("true"), [("recv", vec(1)), ("recv", vec(3))]),
        ("legacy_server_wrong_secret", "vectors 01, 02, 05, 06: a wrong legacy response gets {auth, failed}",
         server("true"), [("recv", vec(1)), ("recv", vec(5))]),
        ("legacy_server_refused_by_default", ("legacy auth disabled (the default): the original client still gets "
         "a challenge, then {auth, failed}"), server("false"), [("recv", vec(1)), ("recv", vec(3))]),
        ("legacy_server_short_response", "vector 43: a short response gets {auth, failed} (the original crashed)",
         server("true"), [("recv", vec(1)), ("recv", vec(43))]),
        ("hs_bad_hello_unknown_atom", "vector 40: a first frame that is not a hello closes, nothing is sent",
         server("true"), [("recv", vec(40))]),
        ("hs_bad_hello_known_atom", "vector 41: {ok, \"x\"} as first frame closes, nothing is sent",
         server("true"), [("recv", vec(41))]),
        ("hs_garbage_hello", "vector 42: a first frame that is not ETF closes, nothing is sent",
         server("true"), [("recv", vec(42))]),
        ("legacy_client_against_original", "our client (extended hello) against an original server: vectors 02, 03, 04",
         [("role", "client"), ("secret", b"secret".hex()), ("allow_legacy_auth", "true"), ("random", bytes(range(32)).hex())],
         [("start", ""), ("recv", vec(2)), ("recv", vec(4))]),
        ("legacy_client_refused_by_default", "our client with legacy auth disabled refuses an original server's challenge",
         [("role", "client"), ("secret", b"secret".hex()), ("allow_legacy_auth", "false"), ("random", bytes(range(32)).hex())],
         [("start", ""), ("recv", vec(2))]),
    ]
    out = []
    for name, note, context, steps in cases:
        lines = [("kind", "handshake_frames"), ("note", note)] + context
        recorded = run_handshake_frames(Case(name, "generated", lines + steps))
        for step, obs in recorded:
            lines.append(step)
            lines.extend(obs)
        out.append(Case(name, "", lines))
    return out


def write(path: pathlib.Path, header: str, cases: list[Case]) -> None:
    parts = [header.rstrip() + "\n"]
    for case in cases:
        parts.append(f"\ncase {case.name}\n")
        for key, value in case.lines:
            parts.append(f"{key} {value}\n".replace(" \n", "\n"))
        parts.append("end\n")
    path.write_text("".join(parts), encoding="utf-8")
    print(f"{path.relative_to(ROOT)}: {len(cases)} cases")


HEADER = """# Generated by conformance/tools/generate.py (see conformance/README.md for the format).
# Checked by tests/conformance (Python) and erlang_peer/fabric_peer/test/fabric_peer_conformance_SUITE.erl."""


def main() -> None:
    subprocess.run(["erlc", "-o", str(TMP), str(ROOT / "conformance" / "tools" / "conformance_gen.erl")], check=True)
    CASES_DIR.mkdir(exist_ok=True)
    write(CASES_DIR / "handshakes.cases", HEADER + "\n# Extended handshake transcripts (docs/protocol.md 3), both MACs.", handshakes())
    write(CASES_DIR / "legacy_handshakes.cases", HEADER + "\n# Legacy handshakes (docs/protocol.md 2) and refused first frames (section 10).", legacy_handshakes())
    write(CASES_DIR / "rewriting.cases", HEADER + "\n# Payload rewriting and DEAD (docs/protocol.md 4).", rewriting())
    write(CASES_DIR / "frames.cases", HEADER + "\n# Extended frames: whereis, link/exit2, heartbeat, error (docs/protocol.md 5).", frames_cases())
    write(CASES_DIR / "resume.cases", HEADER + "\n# Resumed sessions: tables kept, DEAD notices resent, duplicates ignored (docs/protocol.md 7).", resume_cases())
    write(CASES_DIR / "drift.cases", HEADER + "\n# Known disagreements between the two implementations (each side's lines are its own).", drifts())
    write(CASES_DIR / "credit.cases", HEADER + "\n# Flow control and confirmed sends (docs/protocol.md 11.8, 12, 13.4).", credit_cases())
    write_route()
    write(CASES_DIR / "errors.cases", HEADER + "\n# One case per error code of docs/protocol.md 9 (auth_failed: handshakes.cases).", errors())


def write_route() -> None:
    """Only route.cases (recorded from the Python core alone: ``generate.py route``)."""
    write(CASES_DIR / "route.cases", HEADER + "\n# Routing between clients: the route frames (docs/protocol.md 16), kind route_exchange; two route handshakes (16.1), kind handshake.", route_cases())


if __name__ == "__main__" and sys.argv[1:] == ["route"]:
    write_route()
elif __name__ == "__main__":
    main()
