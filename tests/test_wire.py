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
            decode(b"CMW\x02" + bytes([t]) + body)


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
        decode(b"CMW\x09" + raw[4:])  # an unknown wire version


def test_declared_sizes_bound_allocation() -> None:
    # A header claiming a million 65535-byte items in a tiny message is refused up front.
    body = b"\x01s" + b"\x00\x0f\x42\x40" + b"\xff\xff"
    with pytest.raises(MalformedMessage, match="truncated"):
        decode(b"CMW\x02\x01" + body)


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
    assert wire.WIRE_VERSION == 2


def test_json_versions_beyond_a_byte() -> None:
    from contactmatch.schemes.wire import ServiceResponse

    msg = ServiceResponse(inner=b"x", filter_version=70_000, fingerprints=[], sealed=[])
    assert decode_json(msg.to_json()) == msg
    # A filter version is a content digest below 2**53, well past a u32 (registry.publisher).
    digest = ServiceResponse(inner=b"x", filter_version=(1 << 53) - 1, fingerprints=[], sealed=[])
    assert decode_json(digest.to_json()) == digest
    bad = json.loads(msg.to_json())
    bad["filter_version"] = 1 << 53
    with pytest.raises(MalformedMessage):
        decode_json(json.dumps(bad))


# -- hostile JSON (issue 9, item 10): every body is a MalformedMessage, never another error ---

# Lone surrogates too, and often: hypothesis draws them rarely on its own.
_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=60) | st.text(
    st.sampled_from("\ud800\udc00\udfffa"), min_size=1, max_size=4
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: json.dumps writes them, JSON has none
    | _ANY_TEXT
)
_VALUES = st.recursive(
    _SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_ANY_TEXT, kids, max_size=4)
)
# Pieces that stress the loader's triggers when glued together in any order.
_PIECES = st.sampled_from(
    ["[", "]", "{", "}", '"', "\\", '\\"', "\\\\", "\\ud800", "\\udc00", "\\ud83d\\ude00",
     "1" * 25, "-", "0", "1e999", "NaN", "-Infinity", ",", ":", " ", "true", "null", '"v"',
     "1", '"type"', '"eval_request"', "\u00e9", "\ud800",
     '{"v":1,"type":"eval_request","scheme":"', '","elements":[]}',
     '{"v":1,"type":"bucket_request","scheme":"s","key_id":"k","prefixes":[],"bits":']
)  # fmt: skip


def _only_malformed(text: str | bytes) -> None:
    # Any other exception (RecursionError, ValueError, UnicodeEncodeError...) fails the test.
    with contextlib.suppress(MalformedMessage):
        decode_json(text)


def _shapes(value: object) -> list[object]:
    """``value`` alone and in every field of a request, so field checks see it too."""
    base: dict[str, object] = {"v": 1, "type": "bucket_request", "scheme": "s", "key_id": "k",
                               "bits": 4, "prefixes": []}  # fmt: skip
    return [value, *({**base, name: value} for name in base)]


@given(st.binary(max_size=300))
def test_decode_json_random_bytes_are_malformed_or_valid(junk: bytes) -> None:
    _only_malformed(junk)


@given(st.lists(_PIECES, max_size=60), st.booleans())
def test_decode_json_token_soup_is_malformed_or_valid(pieces: list[str], as_bytes: bool) -> None:
    text = "".join(pieces)
    _only_malformed(text.encode("utf-8", "surrogatepass") if as_bytes else text)


@given(_SCALARS | _VALUES, st.booleans())  # scalars on their own too: _VALUES nests mostly
def test_decode_json_any_json_value_is_malformed_or_valid(value: object, ascii_: bool) -> None:
    for doc in _shapes(value):
        text = json.dumps(doc, ensure_ascii=ascii_)  # ensure_ascii: surrogates as \u escapes
        _only_malformed(text)
        _only_malformed(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    "body",
    [
        "[" * 1000 + "]" * 1000,
        '{"a":' * 1000 + "1" + "}" * 1000,
        "[" * 100_000,
        '{"v":1,"type":"eval_request","scheme":"\\ud800","elements":[]}',
        '{"v":1,"type":"eval_request","scheme":"\\udfff\\ud800","elements":[]}',
        '{"v":1,"type":"eval_request","scheme":"s","elements":["\\ud800"]}',
        '{"\\ud800":1,"v":1}',
        b'{"v":1,"type":"eval_request","scheme":"\xed\xa0\x80","elements":[]}',  # UTF-8 surrogate
        '{"v":' + "1" * 5000 + "}",
        '{"v":1,"type":"bucket_request","scheme":"s","key_id":"k","bits":4,"prefixes":['
        + "7" * 5000
        + "]}",
        '{"v":1,"type":"bucket_request","scheme":"s","key_id":"k","bits":NaN,"prefixes":[]}',
        '{"v":1,"type":"bucket_request","scheme":"s","key_id":"k","bits":1e999,"prefixes":[]}',
        '{"v":1.0,"type":"eval_request","scheme":"s","elements":[]}',
        '{"v":true,"type":"eval_request","scheme":"s","elements":[]}',
        '{"v":1,"v":1,"type":"eval_request","scheme":"s","elements":[]}',
        '{"v":1,"type":["eval_request"],"scheme":"s","elements":[]}',
    ],
    ids=lambda b: f"{str(b)[:24]}..{len(b)}",
)
def test_hostile_json_is_one_typed_error(body: str | bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_json(body)


def test_strict_json_keeps_every_valid_message() -> None:
    # Brackets, quotes and backslashes inside strings do not count as nesting or escapes.
    msg = EvalRequest(scheme='[[{{"\\\\"]]' * 20, elements=[b"x"])
    assert decode_json(msg.to_json()) == msg
    assert decode_json(msg.to_json().encode()) == msg
