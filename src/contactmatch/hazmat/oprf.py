"""RFC 9497 ciphersuite ristretto255-SHA512: modes OPRF (0x00), VOPRF (0x01) and POPRF (0x02).

Byte-oriented functions named after the RFC's (section 3.3). The keyword-only ``blind=`` and
``proof_random=`` hooks exist so the RFC's test vectors can be reproduced; production callers
leave them unset and the randomness comes from libsodium's CSPRNG. Elements and proofs from the
peer that fail to decode or verify raise the opaque :class:`VerificationFailed`; malformed
local arguments (lengths of batches, zero or non-canonical scalars) raise :class:`InvalidInput`
or :class:`InvalidKey`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from enum import IntEnum
from itertools import repeat, starmap

from contactmatch.errors import InvalidInput, InvalidKey, VerificationFailed
from contactmatch.hazmat import ristretto as r255
from contactmatch.hazmat._pool import map_chunks
from contactmatch.hazmat.xmd import expand_message_xmd

__all__ = [
    "ELEMENT_SIZE",
    "MAX_PROOF_BATCH",
    "OUTPUT_SIZE",
    "PROOF_SIZE",
    "SCALAR_SIZE",
    "SUITE_ID",
    "Mode",
    "blind",
    "blind_evaluate",
    "context_string",
    "derive_key_pair",
    "evaluate",
    "evaluate_many",
    "finalize",
    "generate_proof",
    "hash_to_group",
    "hash_to_scalar",
    "verify_proof",
]

SUITE_ID = b"ristretto255-SHA512"
ELEMENT_SIZE = 32  # Noe
SCALAR_SIZE = 32  # Ns
PROOF_SIZE = 2 * SCALAR_SIZE
OUTPUT_SIZE = 64  # Nh
MAX_PROOF_BATCH = 1 << 16  # composites index elements with I2OSP(i, 2)
_MAX_LEN = 0xFFFF  # inputs and infos are framed with a two-byte length
_GENERATOR = r255.scalar_mult_base((1).to_bytes(32, "little"))


class Mode(IntEnum):
    """The RFC 9497 protocol variant; its value is the mode byte of the context string."""

    OPRF = 0
    VOPRF = 1
    POPRF = 2


def context_string(mode: Mode) -> bytes:
    """``"OPRFV1-" || I2OSP(mode, 1) || "-" || identifier`` (RFC 9497 section 3.1)."""
    return b"OPRFV1-" + bytes((Mode(mode),)) + b"-" + SUITE_ID


_CONTEXT = {m: context_string(m) for m in Mode}
_DST_GROUP = {m: b"HashToGroup-" + c for m, c in _CONTEXT.items()}
_DST_SCALAR = {m: b"HashToScalar-" + c for m, c in _CONTEXT.items()}
_DST_SEED = {m: b"Seed-" + c for m, c in _CONTEXT.items()}
_DST_DERIVE = {m: b"DeriveKeyPair" + c for m, c in _CONTEXT.items()}


def _i2osp2(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _mode(mode: int) -> Mode:
    try:
        return Mode(mode)
    except ValueError:
        raise InvalidInput("unknown OPRF mode") from None


def hash_to_group(msg: bytes, mode: Mode) -> bytes:
    """RFC 9497 HashToGroup: expand_message_xmd to 64 bytes, then the ristretto255 map."""
    return r255.element_from_uniform_bytes(expand_message_xmd(msg, _DST_GROUP[mode], 64))


def hash_to_scalar(msg: bytes, mode: Mode, *, dst: bytes | None = None) -> bytes:
    """RFC 9497 HashToScalar: 64 uniform bytes reduced modulo the group order."""
    return r255.scalar_reduce(expand_message_xmd(msg, dst or _DST_SCALAR[mode], 64))


def _check_bytes(value: object, what: str) -> bytes:
    if type(value) is not bytes:
        raise InvalidInput(f"{what} must be bytes")
    if len(value) > _MAX_LEN:
        raise InvalidInput(f"{what} must be at most 65535 bytes")
    return value


def _check_key(sk: object) -> bytes:
    if not r255.is_canonical_scalar(sk):
        raise InvalidKey("the private key is not a canonical ristretto255 scalar")
    assert isinstance(sk, bytes)
    if hmac.compare_digest(sk, bytes(32)):
        raise InvalidKey("the private key is zero")
    return sk


def _check_public_key(pk: object) -> bytes:
    if not r255.is_valid_element(pk):
        raise InvalidKey("the public key is not a valid ristretto255 element")
    assert isinstance(pk, bytes)
    return pk


def _framed_info(info: object) -> bytes:
    return b"Info" + _i2osp2(len(_check_bytes(info, "info"))) + info  # type: ignore[operator]


# --- keys --------------------------------------------------------------------------------------


def derive_key_pair(seed: bytes, info: bytes, mode: Mode) -> tuple[bytes, bytes]:
    """RFC 9497 DeriveKeyPair: a deterministic key pair from a 32-byte seed and an info string.

    Args:
        seed: 32 bytes of secret, uniformly random seed material.
        info: public key-derivation info (at most 65535 bytes).
        mode: the protocol mode (it is part of the derivation's domain separation).

    Returns:
        ``(skS, pkS)``: the serialized private scalar and public element.

    Raises:
        InvalidInput: wrong seed length or info too long.
        InvalidKey: 256 counters all gave the zero scalar (DeriveKeyPairError; never observed).
    """
    mode = _mode(mode)
    if type(seed) is not bytes or len(seed) != SCALAR_SIZE:
        raise InvalidInput("seed must be 32 bytes")
    derive_input = seed + _i2osp2(len(_check_bytes(info, "info"))) + info
    for counter in range(256):
        sk = hash_to_scalar(derive_input + bytes((counter,)), mode, dst=_DST_DERIVE[mode])
        if not hmac.compare_digest(sk, bytes(32)):
            return sk, r255.scalar_mult_base(sk)
    raise InvalidKey("DeriveKeyPair failed")  # pragma: no cover -- probability 2^-2000


# --- client: blind -----------------------------------------------------------------------------


def blind(input: bytes, mode: Mode, *, blind: bytes | None = None) -> tuple[bytes, bytes]:
    """RFC 9497 Blind: hash ``input`` to the group and mask it with a random scalar.

    In POPRF mode the blinding is the same; the tweaked key is checked in :func:`finalize`.

    Args:
        input: the private input (at most 65535 bytes).
        mode: the protocol mode.
        blind: for test vectors only: the blind scalar to use instead of a random one.

    Returns:
        ``(blind, blindedElement)``; keep ``blind`` secret until :func:`finalize`.

    Raises:
        InvalidInput: input too long, a bad injected blind, or the input hashes to the identity.
    """
    mode = _mode(mode)
    input_element = hash_to_group(_check_bytes(input, "input"), mode)
    if hmac.compare_digest(input_element, r255.IDENTITY):
        raise InvalidInput("input hashes to the identity")  # pragma: no cover -- negligible
    b = r255.random_scalar() if blind is None else r255.check_scalar(blind, what="blind")
    return b, r255.scalar_mult_unchecked(b, input_element)


def _hash_to_group_many(inputs: Sequence[bytes], mode: Mode) -> list[bytes]:
    dst = _DST_GROUP[mode]
    for x in inputs:
        _check_bytes(x, "input")
    return r255.elements_from_uniform_bytes([expand_message_xmd(x, dst, 64) for x in inputs])


def _blind_many(
    inputs: Sequence[bytes], mode: Mode, *, blinds: Sequence[bytes] | None = None
) -> tuple[list[bytes], list[bytes]]:
    """:func:`blind` over a batch: one CSPRNG call, batched hashing and multiplication.

    The safe layer's path; ``blinds`` is the same test-only hook as in :func:`blind`.
    """
    mode = _mode(mode)
    elements = _hash_to_group_many(inputs, mode)
    if blinds is None:
        bs = r255.random_scalars(len(inputs))
    else:
        bs = [r255.check_scalar(b, what="blind") for b in blinds]
    try:
        # The multiplication refuses an identity input element (libsodium returns -1).
        return bs, r255.scalar_mult_each(bs, elements)
    except VerificationFailed:
        raise InvalidInput("an input hashes to the identity") from None  # pragma: no cover


# --- proofs ------------------------------------------------------------------------------------


def _composite_seed(pk: bytes, mode: Mode) -> bytes:
    seed_dst = _DST_SEED[mode]
    return hashlib.sha512(_i2osp2(len(pk)) + pk + _i2osp2(len(seed_dst)) + seed_dst).digest()


def _composite_scalar(seed: bytes, i: int, c: bytes, d: bytes, mode: Mode) -> bytes:
    h2 = b"".join((b"\x00\x40", seed, _i2osp2(i), b"\x00\x20", c, b"\x00\x20", d, b"Composite"))
    return hash_to_scalar(h2, mode)


def _mul_untrusted(s: bytes, p: bytes) -> bytes:
    # scalar_mult validates p; its only other failure is a zero s (probability 2^-252 for a
    # hash-derived scalar), whose correct product is the identity.
    try:
        return r255.scalar_mult(s, p)
    except VerificationFailed:
        r255.check_element(p)
        return r255.IDENTITY


def _composites(
    pk: bytes,
    c: Sequence[bytes],
    d: Sequence[bytes],
    mode: Mode,
    *,
    want_z: bool,
    workers: int | None,
) -> tuple[bytes, bytes]:
    """ComputeComposites (``want_z``) or the M half of ComputeCompositesFast, over chunks.

    Each d_i depends only on the seed, i and the pair, so chunks sum independently and the
    partial sums are added at the end.
    """
    if len(c) != len(d):
        raise InvalidInput("C and D must have the same length")
    if not 1 <= len(c) <= MAX_PROOF_BATCH:
        # The composite's index is framed as I2OSP(i, 2): a proof covers at most 65536 pairs.
        raise InvalidInput(f"a proof covers 1 to {MAX_PROOF_BATCH} elements")
    seed = _composite_seed(pk, mode)

    def weighted(ds: list[bytes], elements: Sequence[bytes]) -> list[bytes]:
        try:
            return r255.scalar_mult_each(ds, elements)
        except VerificationFailed:
            # Either an element is invalid (re-raised below) or some d_i is zero (probability
            # 2^-252), which the batch call cannot tell apart: redo one by one.
            return list(map(_mul_untrusted, ds, elements))

    def part(lo: int, hi: int) -> tuple[bytes, bytes]:
        ds = [_composite_scalar(seed, i, c[i], d[i], mode) for i in range(lo, hi)]
        m = r255.sum_elements(weighted(ds, c[lo:hi]))
        z = r255.sum_elements(weighted(ds, d[lo:hi])) if want_z else r255.IDENTITY
        return m, z

    parts = map_chunks(part, len(c), workers)
    m, z = parts[0]
    for pm, pz in parts[1:]:
        m, z = r255.add(m, pm), r255.add(z, pz)
    return m, z


def _challenge(elements: tuple[bytes, bytes, bytes, bytes, bytes], mode: Mode) -> bytes:
    # elements: (B, M, Z, t2, t3), each framed with its two-byte length.
    transcript = b"".join(b"\x00\x20" + x for x in elements) + b"Challenge"
    return hash_to_scalar(transcript, mode)


def generate_proof(
    k: bytes,
    a: bytes,
    b: bytes,
    c: Sequence[bytes],
    d: Sequence[bytes],
    *,
    mode: Mode,
    proof_random: bytes | None = None,
    workers: int | None = None,
) -> bytes:
    """RFC 9497 GenerateProof (batched DLEQ, section 2.2.1): prove ``B = k*A`` and ``D = k*C``.

    Uses ComputeCompositesFast: the prover knows ``k``, so ``Z = k*M``.

    Returns:
        The 64-byte proof ``c || s``.
    """
    m, _ = _composites(b, c, d, mode, want_z=False, workers=workers)
    z = r255.scalar_mult_unchecked(k, m)
    r = r255.random_scalar() if proof_random is None else r255.check_scalar(proof_random)
    t2 = r255.scalar_mult_unchecked(r, a)
    t3 = r255.scalar_mult_unchecked(r, m)
    ch = _challenge((b, m, z, t2, t3), mode)
    s = r255.scalar_sub(r, r255.scalar_mul(ch, k))
    return ch + s


def verify_proof(
    a: bytes,
    b: bytes,
    c: Sequence[bytes],
    d: Sequence[bytes],
    proof: bytes,
    *,
    mode: Mode,
    workers: int | None = 1,
) -> None:
    """RFC 9497 VerifyProof: check a batched DLEQ proof that ``B = k*A`` and ``D = k*C``.

    Raises:
        VerificationFailed: the proof or an element does not decode, or the proof is wrong.
    """
    if type(proof) is not bytes or len(proof) != PROOF_SIZE:
        raise VerificationFailed
    ch, s = proof[:SCALAR_SIZE], proof[SCALAR_SIZE:]
    if not (r255.is_canonical_scalar(ch) and r255.is_canonical_scalar(s)):
        raise VerificationFailed
    # a and b go to the unchecked multiplication below, so they are checked here too: this
    # is a public (hazmat) function and must not trust its callers to have done it.
    r255.check_element(a)
    r255.check_element(b)
    r255.check_elements(c)
    r255.check_elements(d)
    m, z = _composites(b, c, d, mode, want_z=True, workers=workers)
    t2 = r255.add(r255.scalar_mult_unchecked(s, a), r255.scalar_mult_unchecked(ch, b))
    t3 = r255.add(r255.scalar_mult_unchecked(s, m), r255.scalar_mult_unchecked(ch, z))
    expected = _challenge((b, m, z, t2, t3), mode)
    if not hmac.compare_digest(expected, ch):
        raise VerificationFailed


# --- server: blind_evaluate / evaluate ---------------------------------------------------------


def _poprf_tweak(sk: bytes, info: object, mode: Mode) -> bytes:
    t = r255.scalar_add(sk, hash_to_scalar(_framed_info(info), mode))
    if hmac.compare_digest(t, bytes(32)):
        # InverseError: info was chosen against this key (needs knowledge of skS).
        raise InvalidInput("this info cannot be evaluated under this key")
    return t


def blind_evaluate(
    sk: bytes,
    blinded_elements: Sequence[bytes],
    mode: Mode,
    *,
    proof_random: bytes | None = None,
    workers: int | None = None,
    info: bytes | None = None,
) -> tuple[list[bytes], bytes | None]:
    """RFC 9497 BlindEvaluate over a batch, with one batched proof in VOPRF and POPRF modes.

    Args:
        sk: the server's private scalar.
        blinded_elements: the client's blinded elements (untrusted; each is validated).
        mode: the protocol mode.
        proof_random: for test vectors only: the proof's random scalar.
        workers: ``None`` uses every core, ``1`` stays on the calling thread.
        info: POPRF only: the public input (defaults to empty).

    Returns:
        ``(evaluatedElements, proof)``; ``proof`` is ``None`` in OPRF mode.

    Raises:
        VerificationFailed: a blinded element is malformed, non-canonical or the identity.
        InvalidKey: ``sk`` is not a non-zero canonical scalar.
        InvalidInput: empty batch, bad ``workers``, or POPRF info that cannot be used.
    """
    mode = _mode(mode)
    sk = _check_key(sk)
    n = len(blinded_elements)
    if n == 0:
        raise InvalidInput("empty batch")
    if mode is not Mode.OPRF and n > MAX_PROOF_BATCH:
        raise InvalidInput(f"a proof covers at most {MAX_PROOF_BATCH} elements")
    r255.check_elements(blinded_elements)
    if mode is Mode.POPRF:
        t = _poprf_tweak(sk, b"" if info is None else info, mode)
        k = r255.scalar_invert(t)
    else:
        if info is not None:
            raise InvalidInput("info is only used in POPRF mode")
        k = sk

    def part(lo: int, hi: int) -> list[bytes]:
        return r255.scalar_mult_many(k, blinded_elements[lo:hi])

    evaluated = [e for chunk in map_chunks(part, n, workers) for e in chunk]
    if mode is Mode.OPRF:
        return evaluated, None
    if mode is Mode.VOPRF:
        pk = r255.scalar_mult_base(sk)
        proof = generate_proof(
            sk, _GENERATOR, pk, blinded_elements, evaluated, mode=mode,
            proof_random=proof_random, workers=workers,
        )  # fmt: skip
    else:
        tweaked = r255.scalar_mult_base(t)
        proof = generate_proof(
            t, _GENERATOR, tweaked, evaluated, blinded_elements, mode=mode,
            proof_random=proof_random, workers=workers,
        )  # fmt: skip
    return evaluated, proof


def _output(input: bytes, info: bytes | None, unblinded: bytes) -> bytes:
    framed_info = b"" if info is None else _i2osp2(len(info)) + info
    return hashlib.sha512(
        b"".join((_i2osp2(len(input)), input, framed_info, b"\x00\x20", unblinded, b"Finalize"))
    ).digest()


def evaluate(sk: bytes, input: bytes, mode: Mode, *, info: bytes | None = None) -> bytes:
    """RFC 9497 Evaluate: the PRF output for ``input`` computed with the private key directly.

    Used by the server to precompute the tokens of registered numbers.

    Raises:
        InvalidKey: ``sk`` is not a non-zero canonical scalar.
        InvalidInput: input or info too long, or POPRF info that cannot be used.
    """
    mode = _mode(mode)
    sk = _check_key(sk)
    input_element = hash_to_group(_check_bytes(input, "input"), mode)
    if hmac.compare_digest(input_element, r255.IDENTITY):
        raise InvalidInput("input hashes to the identity")  # pragma: no cover -- negligible
    if mode is Mode.POPRF:
        info = b"" if info is None else info
        k = r255.scalar_invert(_poprf_tweak(sk, info, mode))
    else:
        if info is not None:
            raise InvalidInput("info is only used in POPRF mode")
        k = sk
    return _output(input, info, r255.scalar_mult_unchecked(k, input_element))


def evaluate_many(
    sk: bytes,
    inputs: Sequence[bytes],
    mode: Mode,
    *,
    info: bytes | None = None,
    workers: int | None = None,
) -> list[bytes]:
    """:func:`evaluate` over a batch, on every core by default (server-side precomputation).

    Args:
        sk: the server's private scalar.
        inputs: the inputs (each at most 65535 bytes).
        mode: the protocol mode.
        info: POPRF only: the public input (defaults to empty).
        workers: ``None`` uses every core, ``1`` stays on the calling thread.

    Returns:
        The 64-byte PRF outputs, aligned with ``inputs``.

    Raises:
        InvalidKey: ``sk`` is not a non-zero canonical scalar.
        InvalidInput: an input or info is too long or not bytes, or POPRF info is unusable.
    """
    mode = _mode(mode)
    sk = _check_key(sk)
    if mode is Mode.POPRF:
        info = b"" if info is None else info
        k = r255.scalar_invert(_poprf_tweak(sk, info, mode))
    else:
        if info is not None:
            raise InvalidInput("info is only used in POPRF mode")
        k = sk

    def part(lo: int, hi: int) -> list[bytes]:
        chunk = inputs[lo:hi]
        try:
            unblinded = r255.scalar_mult_many(k, _hash_to_group_many(chunk, mode))
        except VerificationFailed:
            raise InvalidInput("an input hashes to the identity") from None  # pragma: no cover
        return list(map(_output, chunk, repeat(info), unblinded))

    return [t for chunk in map_chunks(part, len(inputs), workers) for t in chunk]


# --- client: finalize --------------------------------------------------------------------------


def finalize(
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    evaluated_elements: Sequence[bytes],
    mode: Mode,
    *,
    blinded_elements: Sequence[bytes] | None = None,
    pk: bytes | None = None,
    proof: bytes | None = None,
    info: bytes | None = None,
) -> list[bytes]:
    """RFC 9497 Finalize over a batch: verify the proof (VOPRF/POPRF), unblind, hash.

    Args:
        inputs: the private inputs, as given to :func:`blind`.
        blinds: the blind scalars :func:`blind` returned, aligned with ``inputs``.
        evaluated_elements: the server's evaluated elements (untrusted), aligned.
        mode: the protocol mode.
        blinded_elements: VOPRF/POPRF: the blinded elements that were sent.
        pk: VOPRF/POPRF: the server's pinned public key.
        proof: VOPRF/POPRF: the server's 64-byte batched proof.
        info: POPRF only: the public input (defaults to empty).

    Returns:
        The 64-byte PRF outputs, aligned with ``inputs``.

    Raises:
        VerificationFailed: an evaluated element or the proof fails to decode or verify.
        InvalidInput: misaligned batches, missing proof arguments, or a bad local blind.
        InvalidKey: ``pk`` is not a valid element.
    """
    mode = _mode(mode)
    n = len(inputs)
    if n == 0:
        raise InvalidInput("empty batch")
    if len(blinds) != n or len(evaluated_elements) != n:
        raise InvalidInput("inputs, blinds and evaluated elements must have the same length")
    for x in inputs:
        _check_bytes(x, "input")
    r255.check_elements(evaluated_elements)
    if mode is Mode.OPRF:
        if info is not None:
            raise InvalidInput("info is only used in POPRF mode")
    else:
        if blinded_elements is None or pk is None or proof is None:
            raise InvalidInput("VOPRF and POPRF need blinded_elements, pk and proof")
        if len(blinded_elements) != n:
            raise InvalidInput("blinded and evaluated elements must have the same length")
        pk = _check_public_key(pk)
        if mode is Mode.VOPRF:
            if info is not None:
                raise InvalidInput("info is only used in POPRF mode")
            verify_proof(_GENERATOR, pk, blinded_elements, evaluated_elements, proof, mode=mode)
        else:
            info = b"" if info is None else info
            m = r255.scalar_mult_base(hash_to_scalar(_framed_info(info), mode))
            tweaked = r255.add(m, pk)
            if hmac.compare_digest(tweaked, r255.IDENTITY):
                raise InvalidInput("this info cannot be used with this key")
            verify_proof(
                _GENERATOR, tweaked, evaluated_elements, blinded_elements, proof, mode=mode
            )
    try:
        inverses = r255.scalar_invert_many(blinds)
    except InvalidInput:
        raise InvalidInput("blinds must be canonical non-zero scalars") from None
    unblinded = r255.scalar_mult_each(inverses, evaluated_elements)
    return list(starmap(_output, zip(inputs, [info] * n, unblinded, strict=True)))
