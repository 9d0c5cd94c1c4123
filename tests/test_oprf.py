"""The OPRF protocol end to end: safe layer, rotation, parallel evaluation and POPRF."""

from __future__ import annotations

import pytest

from contactmatch.errors import (
    InvalidInput,
    UnknownKeyId,
    VerificationFailed,
)
from contactmatch.hazmat import oprf
from contactmatch.hazmat import ristretto as r255
from contactmatch.hazmat.oprf import Mode
from contactmatch.keys import KeyRing, ServerKey
from contactmatch.oprf import BlindState, Evaluation, OprfClient, OprfServer, Tokens

NUMBERS = [f"+4915112345{i:03d}".encode() for i in range(40)]
SAFE_MODES = [Mode.OPRF, Mode.VOPRF]


def _pair(mode: Mode) -> tuple[OprfServer, OprfClient]:
    server = OprfServer(ServerKey.generate(mode))
    client = OprfClient(mode, public_keys=server.public_keys())
    return server, client


@pytest.mark.parametrize("mode", SAFE_MODES, ids=lambda m: m.name)
def test_client_tokens_equal_server_precomputed_tokens(mode: Mode) -> None:
    server, client = _pair(mode)
    state, blinded = client.blind(NUMBERS)
    evaluation = server.evaluate_batch(blinded)
    tokens = client.finalize(state, evaluation)
    registered = server.evaluate_tokens(NUMBERS[::2])
    assert tokens.key_id == registered.key_id == server.current_key_id
    assert list(tokens)[::2] == list(registered)
    assert len(set(tokens)) == len(NUMBERS)
    assert all(len(t) == oprf.OUTPUT_SIZE for t in tokens)
    assert (evaluation.proof is None) is (mode is Mode.OPRF)


@pytest.mark.parametrize("mode", SAFE_MODES, ids=lambda m: m.name)
def test_blinding_is_fresh_but_tokens_are_deterministic(mode: Mode) -> None:
    server, client = _pair(mode)
    s1, b1 = client.blind(NUMBERS[:3])
    s2, b2 = client.blind(NUMBERS[:3])
    assert set(b1).isdisjoint(b2)
    assert set(s1.blinds).isdisjoint(s2.blinds)
    t1 = client.finalize(s1, server.evaluate_batch(b1))
    t2 = client.finalize(s2, server.evaluate_batch(b2))
    assert t1 == t2


def test_tokens_depend_on_the_key() -> None:
    a, b = ServerKey.generate(Mode.VOPRF), ServerKey.generate(Mode.VOPRF)
    assert a.key_id != b.key_id
    ta = OprfServer(a).evaluate_tokens(NUMBERS[:5])
    tb = OprfServer(b).evaluate_tokens(NUMBERS[:5])
    assert set(ta).isdisjoint(tb)


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.name)
def test_parallel_evaluation_equals_serial(mode: Mode) -> None:
    sk, _ = oprf.derive_key_pair(bytes(range(32)), b"parallel", mode)
    blinded = [oprf.blind(x, mode)[1] for x in NUMBERS * 5]
    r = r255.random_scalar()
    info = b"info" if mode is Mode.POPRF else None
    serial = oprf.blind_evaluate(sk, blinded, mode, proof_random=r, workers=1, info=info)
    for workers in (2, 3, None):
        assert (
            oprf.blind_evaluate(sk, blinded, mode, proof_random=r, workers=workers, info=info)
            == serial
        )


def test_server_precompute_parallel_equals_serial() -> None:
    key = ServerKey.generate(Mode.OPRF)
    many = [f"+1202555{i:04d}".encode() for i in range(100)]
    assert OprfServer(key, workers=1).evaluate_tokens(many) == OprfServer(
        key, workers=2
    ).evaluate_tokens(many)


def test_voprf_client_refuses_a_key_it_has_not_pinned() -> None:
    # The point of VOPRF: a server that evaluates one user under a key of their own (to
    # recognise their requests later) is caught, because that key is not the published one.
    published = ServerKey.generate(Mode.VOPRF)
    targeted = ServerKey.generate(Mode.VOPRF)
    client = OprfClient(Mode.VOPRF, public_keys=OprfServer(published).public_keys())
    state, blinded = client.blind(NUMBERS[:4])
    with pytest.raises(UnknownKeyId):
        client.finalize(state, OprfServer(targeted).evaluate_batch(blinded))


def test_voprf_client_catches_a_key_swap_under_the_pinned_key_id() -> None:
    published = ServerKey.generate(Mode.VOPRF)
    targeted = ServerKey.generate(Mode.VOPRF)
    client = OprfClient(Mode.VOPRF, public_keys={published.key_id: published.public_key})
    state, blinded = client.blind(NUMBERS[:4])
    honest = OprfServer(targeted).evaluate_batch(blinded)
    lying = Evaluation(
        key_id=published.key_id,
        mode=Mode.VOPRF,
        evaluated_elements=honest.evaluated_elements,
        proof=honest.proof,
    )
    with pytest.raises(VerificationFailed):
        client.finalize(state, lying)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda e: Evaluation(key_id=e.key_id, mode=e.mode, evaluated_elements=e.evaluated_elements),
        lambda e: Evaluation(
            key_id=e.key_id, mode=Mode.OPRF, evaluated_elements=e.evaluated_elements
        ),
        lambda e: Evaluation(
            key_id=e.key_id,
            mode=e.mode,
            evaluated_elements=e.evaluated_elements[::-1],
            proof=e.proof,
        ),
        lambda e: Evaluation(
            key_id=e.key_id,
            mode=e.mode,
            evaluated_elements=e.evaluated_elements[:-1],
            proof=e.proof,
        ),
        lambda e: Evaluation(
            key_id=e.key_id,
            mode=e.mode,
            evaluated_elements=(
                r255.scalar_mult_base(r255.random_scalar()),
                *e.evaluated_elements[1:],
            ),
            proof=e.proof,
        ),
    ],
    ids=["proof-stripped", "downgraded-mode", "reordered", "truncated", "element-replaced"],
)
def test_voprf_client_rejects_tampered_evaluations(tamper: object) -> None:
    server, client = _pair(Mode.VOPRF)
    state, blinded = client.blind(NUMBERS[:3])
    evaluation = server.evaluate_batch(blinded)
    with pytest.raises(VerificationFailed):
        client.finalize(state, tamper(evaluation))  # type: ignore[operator]


def test_rotation_with_grace_period_and_retirement() -> None:
    old = ServerKey.generate(Mode.VOPRF)
    ring = KeyRing(old)
    server = OprfServer(ring)
    client = OprfClient(Mode.VOPRF, public_keys=server.public_keys())
    state, blinded = client.blind(NUMBERS[:3])
    before = client.finalize(state, server.evaluate_batch(blinded))
    assert before.key_id == old.key_id

    new = ServerKey.generate(Mode.VOPRF)
    assert ring.rotate(new) == old.key_id
    assert ring.key_ids == (new.key_id, old.key_id)
    # A client that has not refreshed its pinned keys notices the rotation.
    state, blinded = client.blind(NUMBERS[:3])
    with pytest.raises(UnknownKeyId):
        client.finalize(state, server.evaluate_batch(blinded))
    # During the grace period it can still finish under the previous key...
    still_old = client.finalize(state, server.evaluate_batch(blinded, key_id=old.key_id))
    assert still_old == before
    # ...and after refreshing it gets tokens under the new key.
    client.set_public_keys(server.public_keys())
    after = client.finalize(state, server.evaluate_batch(blinded))
    assert after.key_id == new.key_id
    assert set(after).isdisjoint(before)
    assert after == server.evaluate_tokens(NUMBERS[:3])

    ring.retire(old.key_id)
    assert server.public_keys() == {new.key_id: new.public_key}
    with pytest.raises(UnknownKeyId):
        server.evaluate_batch(blinded, key_id=old.key_id)
    with pytest.raises(UnknownKeyId):
        server.evaluate_tokens(NUMBERS[:1], key_id=old.key_id)


def test_oprf_client_with_pinned_ids_refuses_other_ids() -> None:
    _, client = _pair(Mode.OPRF)
    other = OprfServer(ServerKey.generate(Mode.OPRF))
    state, blinded = client.blind(NUMBERS[:2])
    with pytest.raises(UnknownKeyId):
        client.finalize(state, other.evaluate_batch(blinded))
    # Without pinned keys an OPRF client takes the key id as a cache label only.
    unpinned = OprfClient(Mode.OPRF)
    tokens = unpinned.finalize(state, other.evaluate_batch(blinded))
    assert tokens.key_id == other.current_key_id


def test_reprs_show_no_secrets() -> None:
    key = ServerKey.generate(Mode.VOPRF)
    server = OprfServer(key)
    client = OprfClient(Mode.VOPRF, public_keys=server.public_keys())
    state, blinded = client.blind(NUMBERS[:2])
    evaluation = server.evaluate_batch(blinded)
    tokens = client.finalize(state, evaluation)
    shown = " ".join(map(repr, (key, server, client, state, evaluation, tokens, server.key_ring)))
    secrets = [key.private_bytes(), *state.blinds, *state.inputs, *tokens, *blinded]
    for secret in secrets:
        assert secret.hex() not in shown
        assert repr(secret) not in shown
    assert "+49151" not in shown


def test_safe_layer_limits_and_modes() -> None:
    server = OprfServer(ServerKey.generate(Mode.OPRF), max_batch=3)
    client = OprfClient(Mode.OPRF)
    _, blinded = client.blind(NUMBERS[:4])
    with pytest.raises(InvalidInput):
        server.evaluate_batch(blinded)
    with pytest.raises(InvalidInput):
        client.blind([])
    with pytest.raises(InvalidInput):
        client.blind(["+4915112345000"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        OprfServer(ServerKey.generate(Mode.POPRF))
    with pytest.raises(InvalidInput):
        OprfClient(Mode.POPRF)
    voprf_state, _ = OprfClient(Mode.VOPRF, public_keys={}).blind(NUMBERS[:1])
    with pytest.raises(InvalidInput):
        client.finalize(voprf_state, server.evaluate_batch(blinded[:1]))


def test_result_types_are_frozen_and_aligned() -> None:
    server, client = _pair(Mode.VOPRF)
    state, blinded = client.blind(NUMBERS[:3])
    assert isinstance(state, BlindState)
    assert len(state) == 3
    evaluation = server.evaluate_batch(blinded)
    tokens = client.finalize(state, evaluation)
    assert isinstance(tokens, Tokens)
    assert tokens[0] == next(iter(tokens))
    with pytest.raises(AttributeError):
        tokens.key_id = "x"  # type: ignore[misc]


def test_poprf_round_trip_and_info_binding() -> None:
    mode = Mode.POPRF
    sk, pk = oprf.derive_key_pair(bytes(32), b"poprf", mode)
    inputs = NUMBERS[:3]
    pairs = [oprf.blind(x, mode) for x in inputs]
    blinds = [b for b, _ in pairs]
    blinded = [e for _, e in pairs]
    evaluated, proof = oprf.blind_evaluate(sk, blinded, mode, info=b"2026-11")
    assert proof is not None
    out = oprf.finalize(
        inputs, blinds, evaluated, mode, blinded_elements=blinded, pk=pk, proof=proof,
        info=b"2026-11",
    )  # fmt: skip
    assert out == [oprf.evaluate(sk, x, mode, info=b"2026-11") for x in inputs]
    assert out != [oprf.evaluate(sk, x, mode, info=b"2026-12") for x in inputs]
    with pytest.raises(VerificationFailed):
        oprf.finalize(
            inputs, blinds, evaluated, mode, blinded_elements=blinded, pk=pk, proof=proof,
            info=b"2026-12",
        )  # fmt: skip


def test_info_only_in_poprf() -> None:
    sk, _ = oprf.derive_key_pair(bytes(32), b"", Mode.VOPRF)
    _, element = oprf.blind(b"x", Mode.VOPRF)
    with pytest.raises(InvalidInput):
        oprf.blind_evaluate(sk, [element], Mode.VOPRF, info=b"x")
    with pytest.raises(InvalidInput):
        oprf.evaluate(sk, b"x", Mode.OPRF, info=b"x")


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_batch_inversion_matches_single_inversions(n: int) -> None:
    scalars = [r255.random_scalar() for _ in range(n)]
    assert r255.scalar_invert_many(scalars) == [r255.scalar_invert(s) for s in scalars]
    one = (1).to_bytes(32, "little")
    for s, inv in zip(scalars, r255.scalar_invert_many(scalars), strict=True):
        assert r255.scalar_mul(s, inv) == one


def test_threads_used_for_large_batches() -> None:
    # workers=None must really fan out (and workers=1 must not): observe the pool's threads.
    import threading

    from contactmatch.hazmat import _pool

    seen: set[str] = set()

    def record(lo: int, hi: int) -> int:
        seen.add(threading.current_thread().name)
        return hi - lo

    assert sum(_pool.map_chunks(record, 1000, 1)) == 1000
    assert seen == {threading.current_thread().name}
    seen.clear()
    assert sum(_pool.map_chunks(record, 1000, 4)) == 1000
    assert len(seen) >= 2
    assert any(name.startswith("contactmatch-oprf") for name in seen)


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.name)
def test_evaluate_many_equals_evaluate(mode: Mode) -> None:
    sk, _ = oprf.derive_key_pair(bytes(32), b"many", mode)
    info = b"i" if mode is Mode.POPRF else None
    many = NUMBERS * 3
    expected = [oprf.evaluate(sk, x, mode, info=info) for x in many]
    for workers in (1, 2, None):
        assert oprf.evaluate_many(sk, many, mode, info=info, workers=workers) == expected
    assert oprf.evaluate_many(sk, [], mode, info=info) == []


def test_batched_blinds_are_fresh_and_valid() -> None:
    blinds, blinded = oprf._blind_many(NUMBERS, Mode.OPRF)
    assert len(set(blinds)) == len(NUMBERS)
    assert all(r255.is_canonical_scalar(b) and b != bytes(32) for b in blinds)
    assert all(r255.is_valid_element(e) for e in blinded)
    assert len(set(r255.random_scalars(64))) == 64


def test_sum_elements_matches_chained_additions() -> None:
    elements = [r255.scalar_mult_base(r255.random_scalar()) for _ in range(9)]
    expected = r255.IDENTITY
    for e in elements:
        expected = r255.add(expected, e)
    assert r255.sum_elements(elements) == expected
    assert r255.sum_elements([*elements, r255.IDENTITY]) == expected
    assert r255.sum_elements([]) == r255.IDENTITY
    with pytest.raises(VerificationFailed):
        r255.sum_elements([elements[0], b"\xff" * 32])
