"""The Python core against the conformance corpus (conformance/, see its README).

Handshake transcripts: the side of each transcript made by Python is replayed byte for byte
(fixed nonces and session ids), the side made by the Erlang peer is verified by the Python
role that talks to it, and both MACs are recomputed from docs/protocol.md with hashlib.
Exchange cases: every step is played on an established Python connection and what it
produced (frames, events) must be exactly the case's observation lines. The mutation tests
at the end show that the runner notices a broken MAC or a changed rewritten id.
"""

from __future__ import annotations

import dataclasses

import pytest
from conformance_corpus import Case, legacy_paths, load_cases
from conformance_driver import (
    exchange_steps,
    frame,
    handshake_result,
    handshake_role,
    outcome_of,
    run_exchange,
    run_handshake_frames,
    spec_client_mac,
    spec_server_mac,
    split_frames,
)

from pyfabric.etf import Atom, decode

HANDSHAKES = load_cases("handshake")
EXCHANGES = load_cases("exchange")
FLOWS = load_cases("flow")  # exchanges with acks / credit (credit.cases; the Erlang runner plays them too: fabric_peer_conformance_flow)
DRIFTS = load_cases("drift")
HANDSHAKE_FRAMES = load_cases("handshake_frames")
ROUTE = load_cases("route_exchange")


def check_handshake(case: Case) -> None:
    """Raise AssertionError when the Python core disagrees with the transcript."""
    f1, f2, f3, f4 = (case.hex(k) for k in ("f1", "f2", "f3", "f4"))
    if case.get("client") == "python":
        conn = handshake_role(case, "client")
        conn.start()
        assert split_frames(conn.data_to_send()) == [f1], "Python client's hello differs from f1"
        conn.receive_data(frame(f2))
        conn.events()
        assert split_frames(conn.data_to_send()) == [f3], "Python client's response differs from f3"
        conn.receive_data(frame(f4))
        events = conn.events()
        assert outcome_of(events) == case.get("client_outcome"), f"client outcome {events}"
        if case.get("client_outcome") != "auth_failed":
            assert handshake_result(events) == {"session_id": case.get("session_id"), "resumed": case.get("resumed")}
    if case.get("server") == "python":
        conn = handshake_role(case, "server")
        conn.receive_data(frame(f1))
        conn.events()
        assert split_frames(conn.data_to_send()) == [f2], "Python server's challenge differs from f2"
        conn.receive_data(frame(f3))
        events = conn.events()
        assert split_frames(conn.data_to_send()) == [f4], "Python server's auth frame differs from f4"
        assert outcome_of(events) == case.get("server_outcome"), f"server outcome {events}"
        if case.get("server_outcome") != "auth_failed":
            assert handshake_result(events) == {"session_id": case.get("session_id"), "resumed": case.get("resumed")}
    # The MACs as the spec defines them, over the frames as they travelled.
    response = decode(f3)
    assert response == (Atom("response"), case.hex("client_mac"), case.hex("accept_bin")), "f3 is not {response, ClientMac, AcceptBin}"
    assert spec_client_mac(case.hex("client_secret"), f1, f2, case.hex("accept_bin")) == case.hex("client_mac"), "ClientMac"
    auth = decode(f4)
    if len(auth) == 4:
        assert auth[2:] == (case.hex("server_mac"), case.hex("info_bin")), "f4 is not {auth, success, ServerMac, InfoBin}"
        good = spec_server_mac(case.hex("server_secret"), f1, f2, f3, case.hex("info_bin")) == case.hex("server_mac")
        assert good == (case.get("server") != "tampered"), "ServerMac"


def check_exchange(case: Case) -> None:
    expected = exchange_steps(case)
    observed = run_handshake_frames(case) if case.get("kind") == "handshake_frames" else run_exchange(case)
    for n, ((step, want), (_, got)) in enumerate(zip(expected, observed), 1):
        assert got == want, f"step {n} {step[0]}: expected {want}, the Python core did {got}"


@pytest.mark.parametrize("case", HANDSHAKES, ids=lambda c: c.name)
def test_handshake(case: Case) -> None:
    check_handshake(case)


@pytest.mark.parametrize("case", EXCHANGES + FLOWS, ids=lambda c: c.name)
def test_exchange(case: Case) -> None:
    check_exchange(case)


@pytest.mark.parametrize("case", HANDSHAKE_FRAMES, ids=lambda c: c.name)
def test_handshake_frames(case: Case) -> None:
    check_exchange(case)


@pytest.mark.parametrize("case", ROUTE, ids=lambda c: c.name)
def test_route_exchange(case: Case) -> None:
    check_exchange(case)


def test_route_cases_cover_every_route_frame() -> None:
    """docs/protocol.md 16.10: each route frame is received and written in some case."""
    steps = {k for c in ROUTE for k, _ in c.lines}
    assert {"whereis_node", "nodes", "reply_nodes", "nodeup", "nodedown"} <= steps
    events = {v.split()[0] for c in ROUTE for v in c.all("event")}
    assert {"routed", "whereis_node_requested", "nodes_requested", "nodes_replied", "nodeup", "nodedown"} <= events


def test_changed_routed_node_fails() -> None:
    """A routed message recorded for another node than the core routes to fails."""
    case = next(c for c in ROUTE if c.name == "route_m_to_client_nodes")
    check_exchange(case)
    lines = [(k, v.replace(" c2@conformance ", " c3@conformance ", 1) if v.startswith("routed ") else v) for k, v in case.lines]
    with pytest.raises(AssertionError, match="recv"):
        check_exchange(dataclasses.replace(case, lines=lines))


@pytest.mark.parametrize("case", DRIFTS, ids=lambda c: c.name)
def test_drift_is_still_as_described(case: Case) -> None:
    """A known disagreement: Python does exactly its lines, and they differ from the Erlang
    peer's (checked by its runner). When one side changes, this fails: settle the case."""
    check_exchange(case)
    python = [obs for _, obs in exchange_steps(case, "python")]
    erlang = [obs for _, obs in exchange_steps(case, "erlang")]
    assert python != erlang


def test_corpus_covers_the_spec() -> None:
    """Every error code of section 9 has a case, and both implementations made transcripts."""
    codes = {v.split()[1] for c in EXCHANGES for v in c.all("event") if v.split()[0] in ("dropped", "closed")}
    codes |= {v for c in EXCHANGES for v in c.all("refused")}
    codes |= {"auth_failed"} if any(c.get("client_outcome") == "auth_failed" for c in HANDSHAKES) else set()
    assert {"closed auth_failed"} <= {v for c in HANDSHAKE_FRAMES for v in c.all("event")}
    assert codes >= {"frame_too_large", "auth_failed", "bad_term", "unknown_frame", "unknown_id", "not_allowed",
                     "bad_payload", "limit", "too_many_errors"}
    makers = {(c.get("client"), c.get("server")) for c in HANDSHAKES}
    assert {("python", "python"), ("erlang", "erlang"), ("python", "erlang"), ("erlang", "python")} <= makers
    assert any(c.get("resumed") == "true" for c in HANDSHAKES)
    assert len(legacy_paths()) == 53
    flow = {v.split()[1] for c in FLOWS for v in c.all("event") if v.split()[0] == "dropped"}
    assert flow >= {"credit_exceeded", "credit_overflow", "unknown_frame", "not_allowed"}
    assert {v.split()[2] for c in FLOWS for v in c.all("event") if v.startswith("result")} >= {"ok", "noproc"}


def test_corpus_covers_resume() -> None:
    """Section 7: a resume that resends a DEAD sent before the cut, and one that cannot resume."""
    lines = [[k for k, _ in c.lines] for c in EXCHANGES]
    after_resume = [keys[keys.index("resume") + 1 :] for keys in lines if "resume" in keys]
    assert any(after[:2] == ["event", "out"] for after in after_resume)
    assert any(k == "reconnect" for c in EXCHANGES for k, _ in c.lines)


# --------------------------------------------------------------------------- mutations


def _mutated(case: Case, key: str, new: str) -> Case:
    lines = [(k, new if k == key else v) for k, v in case.lines]
    assert lines != case.lines
    return dataclasses.replace(case, lines=lines)


def _flip(hex_text: str, index: int) -> str:
    data = bytearray(bytes.fromhex(hex_text))
    data[index] ^= 0x01
    return data.hex()


def _case(name: str) -> Case:
    return next(c for c in HANDSHAKES + EXCHANGES if c.name == name)


@pytest.mark.parametrize("name", ["hs_py_client_py_server", "hs_py_client_er_server", "hs_er_client_py_server"])
def test_flipped_client_mac_fails(name: str) -> None:
    case = _case(name)
    check_handshake(case)
    with pytest.raises(AssertionError):
        check_handshake(_mutated(case, "client_mac", _flip(case.get("client_mac"), 0)))


@pytest.mark.parametrize("name", ["hs_py_client_py_server", "hs_er_client_er_server"])
def test_flipped_server_mac_fails(name: str) -> None:
    case = _case(name)
    with pytest.raises(AssertionError, match="ServerMac|f4"):
        check_handshake(_mutated(case, "server_mac", _flip(case.get("server_mac"), 31)))


def test_flipped_mac_inside_a_frame_fails() -> None:
    """A broken MAC inside the frame itself: the Python server must refuse it."""
    case = _case("hs_er_client_py_server")
    f3 = case.get("f3")
    mac_at = bytes.fromhex(f3).index(case.hex("client_mac"))
    broken = _mutated(_mutated(case, "f3", _flip(f3, mac_at)), "client_mac", _flip(case.get("client_mac"), 0))
    with pytest.raises(AssertionError, match="Python server's auth frame differs"):
        check_handshake(broken)


def test_changed_rewritten_id_fails() -> None:
    """{pr, 1} changed into {pr, 2} in an expected frame: the runner reports the case."""
    case = _case("rw_in_markers_ext")
    check_exchange(case)
    out = case.get("out")
    pr1 = bytes.fromhex("680264000270726101")  # {pr, 1}
    assert bytes.fromhex(out).count(pr1) == 1
    broken = out.replace(pr1.hex(), "680264000270726102")
    with pytest.raises(AssertionError, match="step 1 send"):
        check_exchange(_mutated(case, "out", broken))


def test_changed_delivered_id_fails() -> None:
    """A delivery naming another local id than the core delivers to fails."""
    case = _case("rw_in_markers_ext")
    events = case.all("event")
    message = next(e for e in events if e.startswith("message id 1 "))
    lines = [(k, message.replace("message id 1 ", "message id 2 ") if v == message else v) for k, v in case.lines]
    with pytest.raises(AssertionError, match="step 2 recv"):
        check_exchange(dataclasses.replace(case, lines=lines))


def _without_line(case: Case, index: int) -> Case:
    return dataclasses.replace(case, lines=case.lines[:index] + case.lines[index + 1 :])


def test_missing_dead_resend_fails() -> None:
    """The DEAD notice resent after a resume left out of the case: the core's resend fails it."""
    case = _case("resume_dead_resent")
    check_exchange(case)
    at = [k for k, _ in case.lines].index("resume")
    assert case.lines[at + 1] == ("event", "resumed") and case.lines[at + 2][0] == "out"
    with pytest.raises(AssertionError, match="step .* resume"):
        check_exchange(_without_line(case, at + 2))
