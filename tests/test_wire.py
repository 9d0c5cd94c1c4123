"""Wire messages: exact round trips in both encodings; anything malformed is one typed error."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contactmatch import MalformedMessage
from contactmatch.schemes import wire
from contactmatch.schemes.wire import (
    BucketRequest,
    BucketResponse,
    EvalRequest,
    EvalResponse,
    LookupRequest,
    LookupResponse,
    Message,
    decode,
    decode_json,
)

_text = st.text(alphabet="abcdefghijklmnop+0123456789", max_size=30)
_item = st.binary(min_size=1, max_size=80)
_uniform = st.integers(1, 64).flatmap(
    lambda w: st.lists(st.binary(min_size=w, max_size=w), max_size=20)
)
_items = st.one_of(st.lists(_item, max_size=20), _uniform)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(st.sampled_from(range(6)))
    if kind == 0:
        return EvalRequest(scheme=draw(_text), elements=draw(_items))
    if kind == 1:
        return EvalResponse(
            key_id=draw(_text), elements=draw(_items), proof=draw(st.binary(max_size=64))
        )
    if kind == 2:
        return LookupRequest(scheme=draw(_text), key_id=draw(_text), tokens=draw(_items))
    if kind == 3:
        ids = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=10))
        pos = draw(st.lists(st.integers(0, 2**20 - 1), min_size=len(ids), max_size=len(ids)))
        return LookupResponse(key_id=draw(_text), positions=pos, user_ids=ids)
    bits = draw(st.integers(0, 32))
    prefixes = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=10))
    if kind == 4:
        return BucketRequest(scheme=draw(_text), key_id=draw(_text), bits=bits, prefixes=prefixes)
    counts = [draw(st.integers(0, 3)) for _ in prefixes]
    n = sum(counts)
    return BucketResponse(
        key_id=draw(_text),
        bits=bits,
        prefixes=prefixes,
        counts=counts,
        fingerprints=[draw(st.binary(min_size=8, max_size=8)) for _ in range(n)],
        sealed=[draw(_item) for _ in range(n)],
    )


@given(messages())
def test_binary_round_trip(msg: Message) -> None:
    assert decode(msg.encode()) == msg


@given(messages())
def test_json_round_trip(msg: Message) -> None:
    assert decode_json(msg.to_json()) == msg


@given(messages(), st.data())
def test_truncation_and_trailing_bytes_are_rejected(msg: Message, data: st.DataObject) -> None:
    raw = msg.encode()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(MalformedMessage):
        decode(raw[:cut])
    with pytest.raises(MalformedMessage):
        decode(raw + b"\x00")


@given(st.binary(max_size=300))
def test_random_bytes_never_crash(junk: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        decode(junk)


@given(st.binary(max_size=200))
def test_random_bodies_after_a_valid_header_never_crash(body: bytes) -> None:
    for t in range(8):
        with contextlib.suppress(MalformedMessage):
            decode(b"CMW\x01" + bytes([t]) + body)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists, max_leaves=8))
def test_random_json_never_crashes(value: object) -> None:
    for doc in (value, {"v": 1, "type": "lookup_request", "scheme": value, "key_id": "k",
                        "tokens": value}):  # fmt: skip
        with contextlib.suppress(MalformedMessage):
            decode_json(json.dumps(doc))


def test_expect_restricts_type() -> None:
    raw = LookupRequest(scheme="s", key_id="k", tokens=[b"x"]).encode()
    with pytest.raises(MalformedMessage, match="expected"):
        decode(raw, EvalRequest)
    with pytest.raises(MalformedMessage, match="version"):
        decode(b"CMW\x02" + raw[4:])


def test_declared_sizes_bound_allocation() -> None:
    # A header claiming a million 65535-byte items in a tiny message is refused up front.
    body = b"\x01s" + b"\x00\x0f\x42\x40" + b"\xff\xff"
    with pytest.raises(MalformedMessage, match="truncated"):
        decode(b"CMW\x01\x01" + body)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: LookupResponse(key_id="k", positions=[1], user_ids=[]),
        lambda: BucketRequest(scheme="s", key_id="k", bits=2, prefixes=[4]),
        lambda: BucketRequest(scheme="s", key_id="k", bits=40, prefixes=[]),
        lambda: BucketResponse(
            key_id="k", bits=1, prefixes=[0], counts=[2], fingerprints=[b"x" * 8], sealed=[b"s"]
        ),
        lambda: LookupRequest(scheme="s", key_id="k", tokens=[b""]),
        lambda: LookupRequest(scheme="s" * 300, key_id="k", tokens=[b"x"]),
    ],
)
def test_invalid_fields_refuse_to_encode(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MalformedMessage):
        bad().encode()


def test_limits_are_sane() -> None:
    assert wire.MAX_ITEMS >= 100_000
    assert wire.WIRE_VERSION == 1


def test_json_versions_beyond_a_byte() -> None:
    from contactmatch.schemes.wire import ServiceResponse

    msg = ServiceResponse(inner=b"x", filter_version=70_000, fingerprints=[], sealed=[])
    assert decode_json(msg.to_json()) == msg
    bad = json.loads(msg.to_json())
    bad["filter_version"] = 1 << 32
    with pytest.raises(MalformedMessage):
        decode_json(json.dumps(bad))
