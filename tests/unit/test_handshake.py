"""The handshake byte by byte: good proofs pass, everything else is refused with a code."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import msgpack
import pytest

from minigrid import handshake, protocol
from minigrid.errors import HandshakeError, HandshakeRejected, LocalProtocolError
from minigrid.handshake import (
    AcceptorHandshake,
    Code,
    DialerHandshake,
    Hello,
    Purpose,
    Role,
    derive_key,
    make_proof,
    proof_ok,
)
from minigrid.protocol import Op
from minigrid.rejections import RejectionLog

KEY = derive_key("secret-one")
OTHER_KEY = derive_key("secret-two")
ACCEPTOR = "10.0.0.1:9000"
DIALER = "10.0.0.2:9000"


def pair(
    dialer_key: bytes = KEY, purpose: Purpose = Purpose.DIAL, dialer_purpose: Purpose | None = None
) -> tuple[AcceptorHandshake, DialerHandshake]:
    acceptor = AcceptorHandshake(KEY, ACCEPTOR, "a" * 32, purpose)
    dialer = DialerHandshake(dialer_key, DIALER, "d" * 32, ACCEPTOR, dialer_purpose or purpose)
    return acceptor, dialer


def body_of(frame: bytes) -> dict[str, object]:
    [message] = protocol.decode_frame(frame)
    return protocol.unpack_map(message.payload, "test")


def frame_of(op: Op, body: dict[str, object]) -> bytes:
    return protocol.encode(op, payload=protocol.pack_obj(body))


def dialer_connect(acceptor: AcceptorHandshake, dialer: DialerHandshake) -> dict[str, object]:
    return body_of(dialer.receive_challenge(acceptor.challenge()))


def refused(acceptor: AcceptorHandshake, body: dict[str, object]) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        acceptor.receive_connect(frame_of(Op.CONNECT, body))
    assert acceptor.peer is None
    with pytest.raises(LocalProtocolError):
        acceptor.accept()  # nothing to accept: a refused dialer never gets an accept frame
    return info.value


def test_a_good_exchange_verifies_both_sides() -> None:
    acceptor, dialer = pair()
    reply = dialer.receive_challenge(acceptor.challenge())
    seen = acceptor.receive_connect(reply)
    assert (seen.host, seen.instance) == (DIALER, "d" * 32)
    peer = dialer.receive_response(acceptor.accept())
    assert (peer.host, peer.instance) == (ACCEPTOR, "a" * 32)
    assert dialer.verified


def test_every_connection_gets_a_fresh_nonce() -> None:
    challenges = [AcceptorHandshake(KEY, ACCEPTOR, "a").challenge() for _ in range(50)]
    nonces = {body_of(frame)["nonce"] for frame in challenges}
    assert len(nonces) == 50
    assert all(isinstance(n, bytes) and len(n) == handshake.NONCE_SIZE for n in nonces)


def test_wrong_secret_is_a_bad_proof() -> None:
    acceptor, dialer = pair(dialer_key=OTHER_KEY)
    error = refused(acceptor, dialer_connect(acceptor, dialer))
    assert error.code == Code.BAD_PROOF
    assert "cluster secret" in error.reason


def test_a_recorded_answer_is_worthless_on_the_next_connection() -> None:
    first, dialer = pair()
    recorded = dialer.receive_challenge(first.challenge())
    first.receive_connect(recorded)  # valid where it was made
    second = AcceptorHandshake(KEY, ACCEPTOR, "a" * 32)
    second.challenge()
    with pytest.raises(HandshakeError) as info:
        second.receive_connect(recorded)
    assert info.value.code == Code.BAD_PROOF


def test_a_proof_over_another_nonce_is_refused() -> None:
    acceptor, dialer = pair()
    acceptor.challenge()
    stale = AcceptorHandshake(KEY, ACCEPTOR, "a" * 32)  # a challenge from another connection
    body = body_of(dialer.receive_challenge(stale.challenge()))
    assert refused(acceptor, body).code == Code.BAD_PROOF


def _swap(field: str, value: object) -> Callable[[dict[str, object]], None]:
    return lambda body: body.__setitem__(field, value)


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (_swap("nonce", b"\x00" * 32), Code.BAD_PROOF),  # the dialer's nonce, changed
        (_swap("instance", "e" * 32), Code.BAD_PROOF),  # another instance than proven
        (_swap("host", "10.0.0.3:9000"), Code.BAD_PROOF),  # another (known) host than proven
        (_swap("proof", b""), Code.BAD_PROOF),
        (_swap("proof", b"\x01" * 31), Code.BAD_PROOF),  # truncated
        (_swap("proof", b"\x01" * 32), Code.BAD_PROOF),  # garbage
        (_swap("proof", "not bytes"), Code.BAD_PROOF),
        (lambda body: body.pop("proof"), Code.BAD_PROOF),
        (_swap("nonce", b"short"), Code.MALFORMED),
        (_swap("instance", ""), Code.MALFORMED),
        (_swap("instance", "x\n" * 4), Code.MALFORMED),
        (_swap("host", 7), Code.MALFORMED),
        (_swap("host", "h" * 300), Code.MALFORMED),
        (_swap("version", 1), Code.VERSION),
        (_swap("version", "2"), Code.VERSION),
        (_swap("version", True), Code.VERSION),
    ],
    ids=lambda value: getattr(value, "value", "") if isinstance(value, Code) else "",
)
def test_tampered_connects_are_refused(
    tamper: Callable[[dict[str, object]], None], code: Code
) -> None:
    acceptor, dialer = pair()
    body = dialer_connect(acceptor, dialer)
    tamper(body)
    assert refused(acceptor, body).code == code


def test_swapped_hosts_and_instances_change_the_proof() -> None:
    a = Hello(ACCEPTOR, "a" * 32, b"\x01" * 32)
    d = Hello(DIALER, "d" * 32, b"\x02" * 32)
    proof = make_proof(KEY, Role.DIALER, Purpose.DIAL, a, d)
    assert proof_ok(KEY, Role.DIALER, Purpose.DIAL, a, d, proof)
    swapped_hosts = (dataclasses.replace(a, host=DIALER), dataclasses.replace(d, host=ACCEPTOR))
    swapped_instances = (
        dataclasses.replace(a, instance=d.instance),
        dataclasses.replace(d, instance=a.instance),
    )
    swapped_nonces = (dataclasses.replace(a, nonce=d.nonce), dataclasses.replace(d, nonce=a.nonce))
    for acc, dia in (swapped_hosts, swapped_instances, swapped_nonces, (d, a)):
        assert not proof_ok(KEY, Role.DIALER, Purpose.DIAL, acc, dia, proof)


def test_the_direction_label_stops_reflection() -> None:
    a = Hello(ACCEPTOR, "a" * 32, b"\x01" * 32)
    d = Hello(DIALER, "d" * 32, b"\x02" * 32)
    acceptor_proof = make_proof(KEY, Role.ACCEPTOR, Purpose.DIAL, a, d)
    assert not proof_ok(KEY, Role.DIALER, Purpose.DIAL, a, d, acceptor_proof)
    # On the wire: a dialer that sends back a proof made with the acceptor's label is refused.
    acceptor, dialer = pair()
    body = dialer_connect(acceptor, dialer)
    assert acceptor.peer is None
    seen = Hello(DIALER, "d" * 32, body["nonce"])  # type: ignore[arg-type]
    body["proof"] = make_proof(KEY, Role.ACCEPTOR, Purpose.DIAL, acceptor.hello, seen)
    assert refused(acceptor, body).code == Code.BAD_PROOF


def test_a_poke_proof_cannot_open_a_session_and_the_reverse() -> None:
    for wanted, offered in ((Purpose.DIAL, Purpose.POKE), (Purpose.POKE, Purpose.DIAL)):
        acceptor, dialer = pair(purpose=wanted, dialer_purpose=offered)
        assert refused(acceptor, dialer_connect(acceptor, dialer)).code == Code.BAD_PROOF


def test_an_echoed_nonce_is_refused() -> None:
    acceptor, dialer = pair()
    body = dialer_connect(acceptor, dialer)
    body["nonce"] = acceptor.hello.nonce
    assert refused(acceptor, body).code == Code.MALFORMED


def test_admit_runs_before_the_proof_and_its_code_is_kept() -> None:
    def admit(host: str) -> tuple[Code, str] | None:
        return (Code.UNKNOWN_HOST, f"{host} is not a peer") if host != DIALER else None

    acceptor = AcceptorHandshake(KEY, ACCEPTOR, "a" * 32, admit=admit)
    dialer = DialerHandshake(OTHER_KEY, "10.9.9.9:1", "d" * 32, ACCEPTOR)
    error = refused(acceptor, dialer_connect(acceptor, dialer))
    assert error.code == Code.UNKNOWN_HOST
    assert acceptor.claimed == "10.9.9.9:1"


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00",
        b"\x97" * 10,
        msgpack.packb([0, 0, 0, 0, int(Op.PING), 0, b""]),
        frame_of(Op.CONNECT_RESPONSE, {"accepted": True}),
        frame_of(Op.CONNECT, {}) + b"x",
        bytes(handshake.MAX_FRAME + 1),
        protocol.merge([frame_of(Op.CONNECT, {}), frame_of(Op.CONNECT, {})]),
    ],
)
def test_garbage_frames_are_malformed(frame: bytes) -> None:
    acceptor = AcceptorHandshake(KEY, ACCEPTOR, "a" * 32)
    acceptor.challenge()
    with pytest.raises(HandshakeError) as info:
        acceptor.receive_connect(frame)
    assert info.value.code in (Code.MALFORMED, Code.VERSION)


def test_the_dialer_refuses_the_wrong_node_and_a_bad_acceptor_proof() -> None:
    acceptor = AcceptorHandshake(KEY, "10.0.0.9:9000", "a" * 32)
    dialer = DialerHandshake(KEY, DIALER, "d" * 32, ACCEPTOR)
    with pytest.raises(HandshakeError) as info:
        dialer.receive_challenge(acceptor.challenge())
    assert info.value.code == Code.WRONG_HOST

    acceptor, dialer = pair()
    acceptor.receive_connect(dialer.receive_challenge(acceptor.challenge()))
    forged = body_of(acceptor.accept())
    forged["proof"] = bytes(32)
    with pytest.raises(HandshakeError) as info:
        dialer.receive_response(frame_of(Op.CONNECT_RESPONSE, forged))
    assert info.value.code == Code.BAD_PROOF and not dialer.verified


def test_an_acceptor_without_the_secret_cannot_prove_itself() -> None:
    impostor = AcceptorHandshake(OTHER_KEY, ACCEPTOR, "a" * 32)
    dialer = DialerHandshake(KEY, DIALER, "d" * 32, ACCEPTOR)
    reply = dialer.receive_challenge(impostor.challenge())
    with pytest.raises(HandshakeError):
        impostor.receive_connect(reply)  # it cannot check our proof either
    # Even if it says yes, its proof (made with another key) does not verify.
    body = body_of(reply)
    seen = Hello(DIALER, "d" * 32, body["nonce"])  # type: ignore[arg-type]
    proof = make_proof(OTHER_KEY, Role.ACCEPTOR, Purpose.DIAL, impostor.hello, seen)
    with pytest.raises(HandshakeError) as info:
        dialer.receive_response(frame_of(Op.CONNECT_RESPONSE, {"accepted": True, "proof": proof}))
    assert info.value.code == Code.BAD_PROOF


def test_a_rejection_carries_a_known_code_and_sanitized_text() -> None:
    acceptor, dialer = pair()
    dialer.receive_challenge(acceptor.challenge())
    frame = handshake.reject_frame(Code.WRONG_SIDE, "we dial you")
    with pytest.raises(HandshakeRejected) as info:
        dialer.receive_response(frame)
    assert (info.value.code, info.value.reason) == (Code.WRONG_SIDE, "we dial you")

    acceptor, dialer = pair()
    dialer.receive_challenge(acceptor.challenge())
    hostile = {"accepted": False, "code": "pwned\x1b[31m", "reason": "line\nbreak" + "x" * 500}
    with pytest.raises(HandshakeRejected) as info:
        dialer.receive_response(frame_of(Op.CONNECT_RESPONSE, hostile))
    assert info.value.code == Code.UNKNOWN
    assert "\n" not in info.value.reason and len(info.value.reason) <= handshake.MAX_REASON + 3


def test_steps_out_of_order_are_local_errors() -> None:
    acceptor, dialer = pair()
    with pytest.raises(LocalProtocolError):
        acceptor.receive_connect(b"")
    with pytest.raises(LocalProtocolError):
        dialer.receive_response(b"")
    challenge = acceptor.challenge()
    with pytest.raises(LocalProtocolError):
        acceptor.challenge()
    dialer.receive_challenge(challenge)
    with pytest.raises(LocalProtocolError):
        dialer.receive_challenge(challenge)


def test_key_derivation() -> None:
    assert derive_key("s") != b"s" and len(derive_key("s")) == 32
    assert derive_key("s") == derive_key(b"s") != derive_key("t")
    with pytest.raises(ValueError, match="empty"):
        derive_key("")


def test_rejection_log_says_each_code_once_and_stays_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.rejections")
    caplog.set_level(logging.WARNING, logger="test.rejections")
    rejections = RejectionLog(logger, capacity=4)
    key = ("dial", "10.0.0.2:9000")
    assert rejections.note(key, "bad-proof", "first")
    assert not rejections.note(key, "bad-proof", "same code, other words: still quiet")
    assert rejections.note(key, "version-mismatch", "a new state is news")
    assert rejections.note(key, "bad-proof", "and back again")
    rejections.clear(key)
    assert rejections.note(key, "bad-proof", "after a success it is news again")
    for index in range(10_000):
        rejections.note(("dial", f"10.1.{index >> 8}.{index & 255}"), "unknown-host", "flood")
    assert len(rejections) == 4
    # The flood evicted the oldest key: at worst its line is said once more.
    assert rejections.note(key, "bad-proof", "evicted, so said again")
    messages = [r.getMessage() for r in caplog.records if r.name == "test.rejections"]
    assert messages[:5] == [
        "first",
        "a new state is news",
        "and back again",
        "after a success it is news again",
        "flood",
    ]
    assert messages[-1] == "evicted, so said again"
