"""Hostile and malformed input: every case is a typed error, never a crash or a wrong output."""

from __future__ import annotations

import pytest
import rbcl
from hypothesis import given, settings
from hypothesis import strategies as st

from contactmatch.errors import InvalidInput, InvalidKey, VerificationFailed
from contactmatch.hazmat import oprf
from contactmatch.hazmat import ristretto as r255
from contactmatch.hazmat.oprf import Mode
from contactmatch.hazmat.xmd import expand_message_xmd
from contactmatch.keys import ServerKey
from contactmatch.oprf import Evaluation, OprfClient, OprfServer

P = 2**255 - 19
L = r255.ORDER
SK, PK = oprf.derive_key_pair(bytes(range(32)), b"bad input", Mode.VOPRF)
INPUTS = [b"+14155550100", b"+14155550101"]
PAIRS = [oprf.blind(x, Mode.VOPRF) for x in INPUTS]
BLINDS = [b for b, _ in PAIRS]
BLINDED = [e for _, e in PAIRS]
EVALUATED, PROOF = oprf.blind_evaluate(SK, BLINDED, Mode.VOPRF, workers=1)
assert PROOF is not None

# Encodings RFC 9496 requires decoders to reject, plus the identity (valid but refused).
NON_CANONICAL = {
    "identity": bytes(32),
    "s-equals-p": P.to_bytes(32, "little"),
    "s-above-p": (P + 2).to_bytes(32, "little"),
    "negative-s": (1).to_bytes(32, "little"),
    "high-bit-set": bytes(31) + b"\x80",
    "all-ff": b"\xff" * 32,
    "valid-with-high-bit": BLINDED[0][:31] + bytes((BLINDED[0][31] | 0x80,)),
    "off-curve-small": (2).to_bytes(32, "little"),
}
WRONG_SHAPES = {
    "empty": b"",
    "short": BLINDED[0][:31],
    "long": BLINDED[0] + b"\x00",
    "bytearray": bytearray(BLINDED[0]),
    "str": "a" * 32,
    "int": 12345,
    "none": None,
}
ALL_BAD = {**NON_CANONICAL, **WRONG_SHAPES}


def _reference_valid(p: bytes) -> bool:
    # Independent oracle: rbcl's own wrapper (decode), the RFC 9496 rule that the top bit of a
    # canonical encoding is clear (libsodium 1.0.18 skips it), and RFC 9497's identity rule.
    return (
        len(p) == 32
        and not p[31] & 0x80
        and rbcl.crypto_core_ristretto255_is_valid_point(p)
        and p != bytes(32)
    )


def test_bundled_libsodium_ignores_the_top_bit() -> None:
    # Why the explicit top-bit check exists: if rbcl's libsodium starts rejecting these
    # encodings itself, this test tells us the workaround can go.
    aliased = BLINDED[0][:31] + bytes((BLINDED[0][31] | 0x80,))
    assert rbcl.crypto_core_ristretto255_is_valid_point(aliased)
    assert not r255.is_valid_element(aliased)


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.name)
@pytest.mark.parametrize("bad", list(ALL_BAD.values()), ids=list(ALL_BAD))
def test_blind_evaluate_rejects_bad_elements(mode: Mode, bad: object) -> None:
    for batch in ([bad], [BLINDED[0], bad], [bad] * 40 + BLINDED):
        for workers in (1, None):
            with pytest.raises(VerificationFailed):
                oprf.blind_evaluate(SK, batch, mode, workers=workers)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", list(ALL_BAD.values()), ids=list(ALL_BAD))
def test_finalize_rejects_bad_evaluated_elements(bad: object) -> None:
    for mode in (Mode.OPRF, Mode.VOPRF):
        with pytest.raises(VerificationFailed):
            oprf.finalize(
                INPUTS, BLINDS, [EVALUATED[0], bad], mode,  # type: ignore[list-item]
                blinded_elements=BLINDED, pk=PK, proof=PROOF,
            )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=40))
def test_random_bytes_as_blinded_element(data: bytes) -> None:
    if _reference_valid(data):
        evaluated, _ = oprf.blind_evaluate(SK, [data], Mode.OPRF, workers=1)
        assert evaluated == [rbcl.crypto_scalarmult_ristretto255(SK, data)]
    else:
        with pytest.raises(VerificationFailed):
            oprf.blind_evaluate(SK, [data], Mode.OPRF, workers=1)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_random_32_bytes_agree_with_reference_decoder(data: bytes) -> None:
    assert r255.is_valid_element(data) == _reference_valid(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_random_bytes_as_proof(proof: bytes) -> None:
    with pytest.raises(VerificationFailed):
        oprf.finalize(
            INPUTS, BLINDS, EVALUATED, Mode.VOPRF, blinded_elements=BLINDED, pk=PK, proof=proof
        )


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=8 * 64 - 1))
def test_any_bit_flip_in_the_proof_is_caught(bit: int) -> None:
    flipped = bytearray(PROOF)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(VerificationFailed):
        oprf.finalize(
            INPUTS, BLINDS, EVALUATED, Mode.VOPRF,
            blinded_elements=BLINDED, pk=PK, proof=bytes(flipped),
        )  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_random_evaluated_element_in_voprf(data: bytes) -> None:
    with pytest.raises(VerificationFailed):
        oprf.finalize(
            INPUTS, BLINDS, [EVALUATED[0], data], Mode.VOPRF,
            blinded_elements=BLINDED, pk=PK, proof=PROOF,
        )  # fmt: skip


def test_non_canonical_proof_scalars_are_rejected() -> None:
    # c + L and s + L are the same scalars mod L, but RFC 9497 requires canonical encodings.
    c, s = PROOF[:32], PROOF[32:]
    for bad in (
        (int.from_bytes(c, "little") + L).to_bytes(32, "little") + s,
        c + (int.from_bytes(s, "little") + L).to_bytes(32, "little"),
    ):
        with pytest.raises(VerificationFailed):
            oprf.finalize(
                INPUTS, BLINDS, EVALUATED, Mode.VOPRF, blinded_elements=BLINDED, pk=PK, proof=bad
            )
    # The untouched proof verifies: the rejections above are about the encoding alone.
    assert oprf.finalize(
        INPUTS, BLINDS, EVALUATED, Mode.VOPRF, blinded_elements=BLINDED, pk=PK, proof=PROOF
    ) == [oprf.evaluate(SK, x, Mode.VOPRF) for x in INPUTS]


@pytest.mark.parametrize(
    "sk",
    [bytes(32), L.to_bytes(32, "little"), (L + 1).to_bytes(32, "little"), b"\x01" * 31, "k", None],
    ids=["zero", "order", "order-plus-one", "short", "str", "none"],
)
def test_bad_private_keys(sk: object) -> None:
    with pytest.raises(InvalidKey):
        oprf.blind_evaluate(sk, BLINDED, Mode.OPRF)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        oprf.evaluate(sk, b"x", Mode.OPRF)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        ServerKey(sk)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pk",
    [bytes(32), b"\xff" * 32, PK[:31], "pk"],
    ids=["identity", "invalid", "short", "str"],
)
def test_bad_public_keys(pk: object) -> None:
    with pytest.raises(InvalidKey):
        oprf.finalize(
            INPUTS, BLINDS, EVALUATED, Mode.VOPRF,
            blinded_elements=BLINDED, pk=pk, proof=PROOF,  # type: ignore[arg-type]
        )  # fmt: skip
    with pytest.raises(InvalidKey):
        OprfClient(Mode.VOPRF, public_keys={"0" * 16: pk})  # type: ignore[dict-item]


def test_pinned_key_must_match_its_id() -> None:
    key = ServerKey.generate(Mode.VOPRF)
    with pytest.raises(InvalidKey):
        OprfClient(Mode.VOPRF, public_keys={"0123456789abcdef": key.public_key})
    with pytest.raises(InvalidKey):
        OprfClient(Mode.OPRF, public_keys={key.key_id: key.public_key})  # id is per mode


@pytest.mark.parametrize(
    "scalar",
    [bytes(32), L.to_bytes(32, "little"), b"\x01", "s"],
    ids=["zero", "order", "short", "str"],
)
def test_bad_injected_scalars(scalar: object) -> None:
    with pytest.raises(InvalidInput):
        oprf.blind(b"x", Mode.OPRF, blind=scalar)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        oprf.blind_evaluate(SK, BLINDED, Mode.VOPRF, proof_random=scalar)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        oprf.finalize(INPUTS, [BLINDS[0], scalar], EVALUATED, Mode.OPRF)  # type: ignore[list-item]


def test_mismatched_and_empty_batches() -> None:
    with pytest.raises(InvalidInput):
        oprf.finalize(INPUTS, BLINDS[:1], EVALUATED, Mode.OPRF)
    with pytest.raises(InvalidInput):
        oprf.finalize(INPUTS, BLINDS, EVALUATED[:1], Mode.OPRF)
    with pytest.raises(InvalidInput):
        oprf.finalize(
            INPUTS, BLINDS, EVALUATED, Mode.VOPRF, blinded_elements=BLINDED[:1], pk=PK, proof=PROOF
        )
    with pytest.raises(InvalidInput):
        oprf.finalize(INPUTS, BLINDS, EVALUATED, Mode.VOPRF)  # proof arguments missing
    with pytest.raises(InvalidInput):
        oprf.finalize([], [], [], Mode.OPRF)
    with pytest.raises(InvalidInput):
        oprf.blind_evaluate(SK, [], Mode.OPRF)
    with pytest.raises(InvalidInput):
        r255.scalar_mult_each(BLINDS[:1], EVALUATED)


@pytest.mark.parametrize("workers", [0, -1, 1.5, "2"], ids=str)
def test_bad_worker_counts(workers: object) -> None:
    with pytest.raises(InvalidInput):
        oprf.blind_evaluate(SK, BLINDED * 40, Mode.OPRF, workers=workers)  # type: ignore[arg-type]


def test_bad_lengths_and_modes() -> None:
    with pytest.raises(InvalidInput):
        oprf.derive_key_pair(bytes(31), b"", Mode.OPRF)
    with pytest.raises(InvalidInput):
        oprf.derive_key_pair(bytes(32), b"i" * 65536, Mode.OPRF)
    with pytest.raises(InvalidInput):
        oprf.blind(b"x" * 65536, Mode.OPRF)
    with pytest.raises(InvalidInput):
        oprf.blind("x", Mode.OPRF)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        oprf.blind(b"x", 7)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        expand_message_xmd(b"", b"", 32)
    with pytest.raises(InvalidInput):
        expand_message_xmd(b"", b"d" * 256, 32)
    with pytest.raises(InvalidInput):
        expand_message_xmd(b"", b"d", 0)
    with pytest.raises(InvalidInput):
        expand_message_xmd(b"", b"d", 255 * 64 + 1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=4))
def test_safe_client_rejects_forged_evaluations(forged: list[bytes]) -> None:
    server = OprfServer(ServerKey.generate(Mode.VOPRF))
    client = OprfClient(Mode.VOPRF, public_keys=server.public_keys())
    state, _ = client.blind(INPUTS[: len(forged)] or INPUTS[:1])
    evaluation = Evaluation(
        key_id=server.current_key_id,
        mode=Mode.VOPRF,
        evaluated_elements=tuple(forged),
        proof=PROOF,
    )
    with pytest.raises(VerificationFailed):
        client.finalize(state, evaluation)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=5))
def test_safe_server_rejects_random_requests(request_elements: list[bytes]) -> None:
    server = OprfServer(ServerKey.generate(Mode.VOPRF), workers=1)
    if all(_reference_valid(e) for e in request_elements):
        assert len(server.evaluate_batch(request_elements)) == len(request_elements)
    else:
        with pytest.raises(VerificationFailed):
            server.evaluate_batch(request_elements)


def test_proof_batches_are_bounded_by_the_two_byte_index() -> None:
    too_many = BLINDED[:1] * (oprf.MAX_PROOF_BATCH + 1)
    for mode in (Mode.VOPRF, Mode.POPRF):
        with pytest.raises(InvalidInput):
            oprf.blind_evaluate(SK, too_many, mode)
    with pytest.raises(InvalidInput):
        oprf.verify_proof(PK, PK, too_many, too_many, PROOF, mode=Mode.VOPRF)
    with pytest.raises(InvalidInput):
        oprf.generate_proof(SK, PK, PK, BLINDED, EVALUATED[:1], mode=Mode.VOPRF)
    with pytest.raises(InvalidInput):
        oprf.verify_proof(PK, PK, [], [], PROOF, mode=Mode.VOPRF)


def test_verify_proof_checks_its_own_elements() -> None:
    from contactmatch.hazmat import oprf as hz

    sk, pk = hz.derive_key_pair(b"\x07" * 32, b"t", hz.Mode.VOPRF)
    _, blinded = hz.blind(b"x", hz.Mode.VOPRF)
    evaluated, proof = hz.blind_evaluate(sk, [blinded], hz.Mode.VOPRF, workers=1)
    assert proof is not None
    for bad_a, bad_b in (
        (b"\xff" * 32, pk),
        (pk, b"\xff" * 32),
    ):
        with pytest.raises(VerificationFailed):
            hz.verify_proof(bad_a, bad_b, [blinded], evaluated, proof, mode=hz.Mode.VOPRF)


def test_concurrent_batches_of_growing_size_share_the_pool() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from contactmatch.hazmat._pool import map_chunks

    def run(n: int) -> int:
        return sum(hi - lo for lo, hi in map_chunks(lambda lo, hi: (lo, hi), n, None))

    with ThreadPoolExecutor(max_workers=16) as ex:
        sizes = [16 * k for k in range(1, 200)]
        assert list(ex.map(run, sizes)) == sizes
