"""RFC 9497 (ristretto255-SHA512) and RFC 9380 (expand_message_xmd SHA-512) published vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contactmatch.hazmat import oprf
from contactmatch.hazmat.oprf import Mode
from contactmatch.hazmat.xmd import expand_message_xmd

VECTORS = Path(__file__).resolve().parent / "vectors"
_OPRF = json.loads((VECTORS / "rfc9497_ristretto255_sha512.json").read_text())
_XMD = json.loads((VECTORS / "rfc9380_expand_message_xmd_sha512.json").read_text())

SUITES = _OPRF["suites"]
CASES = [
    pytest.param(suite, vector, id=f"{Mode(suite['mode']).name}-{i}-batch{vector['Batch']}")
    for suite in SUITES
    for i, vector in enumerate(suite["vectors"])
]


def _list(vector: dict[str, Any], field: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in vector[field].split(",")]


def test_every_mode_has_vectors() -> None:
    assert {Mode(s["mode"]) for s in SUITES} == set(Mode)
    assert all(s["identifier"] == oprf.SUITE_ID.decode() for s in SUITES)


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: Mode(s["mode"]).name)
def test_context_and_dst(suite: dict[str, Any]) -> None:
    mode = Mode(suite["mode"])
    assert b"HashToGroup-" + oprf.context_string(mode) == bytes.fromhex(suite["groupDST"])


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: Mode(s["mode"]).name)
def test_derive_key_pair(suite: dict[str, Any]) -> None:
    mode = Mode(suite["mode"])
    sk, pk = oprf.derive_key_pair(
        bytes.fromhex(suite["seed"]), bytes.fromhex(suite["keyInfo"]), mode
    )
    assert sk.hex() == suite["skSm"]
    if "pkSm" in suite:
        assert pk.hex() == suite["pkSm"]


@pytest.mark.parametrize(("suite", "vector"), CASES)
@pytest.mark.parametrize("workers", [1, None], ids=["w1", "wall"])
def test_protocol_vector(
    suite: dict[str, Any], vector: dict[str, Any], workers: int | None
) -> None:
    mode = Mode(suite["mode"])
    sk = bytes.fromhex(suite["skSm"])
    pk = bytes.fromhex(suite["pkSm"]) if "pkSm" in suite else None
    info = bytes.fromhex(vector["Info"]) if "Info" in vector else None
    inputs, blinds = _list(vector, "Input"), _list(vector, "Blind")
    assert len(inputs) == vector["Batch"]

    blinded = []
    for x, b in zip(inputs, blinds, strict=True):
        got_blind, element = oprf.blind(x, mode, blind=b)
        assert got_blind == b
        blinded.append(element)
    assert blinded == _list(vector, "BlindedElement")
    # The batched path the safe layer uses must agree with the RFC's per-input Blind.
    assert oprf._blind_many(inputs, mode, blinds=blinds) == (blinds, blinded)

    proof_random = bytes.fromhex(vector["Proof"]["r"]) if "Proof" in vector else None
    evaluated, proof = oprf.blind_evaluate(
        sk, blinded, mode, proof_random=proof_random, workers=workers, info=info
    )
    assert evaluated == _list(vector, "EvaluationElement")
    if mode is Mode.OPRF:
        assert proof is None
    else:
        assert proof is not None
        assert proof.hex() == vector["Proof"]["proof"]

    outputs = oprf.finalize(
        inputs, blinds, evaluated, mode, blinded_elements=blinded, pk=pk, proof=proof, info=info
    )
    assert outputs == _list(vector, "Output")
    assert [oprf.evaluate(sk, x, mode, info=info) for x in inputs] == outputs
    assert oprf.evaluate_many(sk, inputs, mode, info=info, workers=workers) == outputs


@pytest.mark.parametrize(
    "vector", _XMD["vectors"], ids=lambda v: f"{v['msg'] or 'empty'}-{v['len_in_bytes']}"
)
def test_expand_message_xmd(vector: dict[str, Any]) -> None:
    out = expand_message_xmd(vector["msg"].encode(), _XMD["dst"].encode(), vector["len_in_bytes"])
    assert out.hex() == vector["uniform_bytes"]
