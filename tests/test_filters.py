"""Filters: no false negatives, measured false-positive rate, formats, deltas, bad bytes."""

from __future__ import annotations

import math
import os
import struct
from hashlib import blake2b

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contactmatch import _gcs
from contactmatch.errors import InvalidInput, MalformedMessage
from contactmatch.filters import BloomFilter, GolombFilter, build_filter, load_filter

SALT = bytes(range(16))
TOKENS = st.lists(st.binary(min_size=1, max_size=70), max_size=60)
Filter = GolombFilter | BloomFilter


def _reseal(body: bytes) -> bytes:
    return body + blake2b(body, digest_size=16).digest()


def _make(kind: str, tokens: list[bytes], fpr: float) -> Filter:
    if kind == "gcs":
        return GolombFilter.build(tokens, fpr=fpr, salt=SALT)
    return BloomFilter.build(tokens, fpr=fpr)


@settings(max_examples=60, deadline=None)
@given(tokens=TOKENS, kind=st.sampled_from(["gcs", "bloom"]), log_fpr=st.integers(1, 40))
def test_no_false_negatives_ever(tokens: list[bytes], kind: str, log_fpr: int) -> None:
    filt = _make(kind, tokens, 2.0**-log_fpr)
    assert filt.contains_many(tokens).all()
    again = load_filter(filt.to_bytes())
    assert again.contains_many(tokens).all()


@pytest.mark.parametrize(("kind", "fpr"), [("gcs", 2.0**-6), ("gcs", 1e-3), ("bloom", 1e-2)])
def test_false_positive_rate_within_binomial_bounds(kind: str, fpr: float) -> None:
    rng = np.random.default_rng(7)
    members = [bytes(r) for r in rng.integers(0, 256, (5000, 32), dtype=np.uint8)]
    probes = [bytes(r) + b"!" for r in rng.integers(0, 256, (60000, 32), dtype=np.uint8)]
    filt = _make(kind, members, fpr)
    hits = int(filt.contains_many(probes).sum())
    # Binomial(q, p): 5 standard deviations either side. GCS's rate is exact (distinct
    # values / universe); a Bloom filter at capacity is at or below its design rate.
    q, p = len(probes), filt.fpr
    sigma = math.sqrt(q * p * (1 - p))
    assert hits <= q * p + 5 * sigma
    if kind == "gcs":
        assert hits >= q * p - 5 * sigma
        # Below the target only by entries whose hashes coincide (about fpr / 2 of them).
        assert fpr * (1 - fpr) <= p <= fpr


def test_gcs_size_close_to_lower_bound_at_small_fpr() -> None:
    toks = [os.urandom(32) for _ in range(20000)]
    filt = GolombFilter.build(toks, fpr=2.0**-32)
    bound = math.log2(1 / filt.fpr)
    assert filt.bits_per_entry <= 1.06 * bound
    # ...and the Bloom baseline is far from it (about 1.44x).
    bloom = BloomFilter.build(toks[:2000], fpr=2.0**-10)
    assert bloom.bits_per_entry >= 1.3 * 10


@settings(max_examples=80, deadline=None)
@given(k=st.integers(0, _gcs.MAX_K - 1), data=st.data())
def test_rice_streams_round_trip(k: int, data: st.DataObject) -> None:
    # Values below 2**(k+8) keep the unary part short whatever k is.
    top = min(2 ** (k + 8), 2**63) - 1
    values = data.draw(st.lists(st.integers(0, top), max_size=50))
    arr = np.sort(np.array(values, dtype=np.uint64))
    unary, cols, bits = _gcs.encode(arr, k)
    back = _gcs.decode(arr.shape[0], 2**63, k, unary_b=unary, cols_b=cols, bits_b=bits)
    assert back.tolist() == arr.tolist()


def test_choose_k_is_the_smallest_encoding() -> None:
    rng = np.random.default_rng(2)
    arr = np.sort(rng.integers(0, 2**40, 3000, dtype=np.uint64))
    best = _gcs.choose_k(arr)
    sizes = {k: sum(map(len, _gcs.encode(arr, k))) for k in range(20, 40)}
    assert sizes[best] == min(sizes.values())


@pytest.mark.parametrize("kind", ["gcs", "bloom"])
def test_serialisation_round_trip(kind: str) -> None:
    toks = [os.urandom(n) for n in range(1, 200)]
    data = build_filter(toks, fpr=2.0**-12, kind=kind, version=7, key_id="key-2026")  # type: ignore[arg-type]
    filt = load_filter(data)
    assert isinstance(filt, GolombFilter if kind == "gcs" else BloomFilter)
    assert filt.version == 7
    assert filt.key_id == "key-2026"
    assert len(filt) == len(toks)
    assert filt.to_bytes() == data
    assert filt.contains_many(toks).all()


@pytest.mark.parametrize("kind", ["gcs", "bloom"])
def test_empty_filter_round_trips(kind: str) -> None:
    data = build_filter([], kind=kind, fpr=0.01)  # type: ignore[arg-type]
    filt = load_filter(data)
    assert len(filt) == 0
    assert not filt.contains_many([b"x"]).any()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_malformed(data: bytes) -> None:
    for decode in (GolombFilter.from_bytes, BloomFilter.from_bytes, load_filter):
        with pytest.raises(MalformedMessage):
            decode(data)
    with pytest.raises(MalformedMessage):
        GolombFilter.build([b"a"], salt=SALT).apply_delta(data)


def _valid_blobs() -> list[bytes]:
    toks = [bytes([i]) * (i % 40 + 1) for i in range(60)]
    gcs = GolombFilter.build(toks, fpr=2.0**-13, salt=SALT, key_id="k")
    bloom = BloomFilter.build(toks, fpr=0.05, key_id="k")
    base_g = GolombFilter.from_bytes(gcs.to_bytes())
    gcs.add_many([b"more"])
    gcs.remove_many(toks[:3])
    return [gcs.to_bytes(), bloom.to_bytes(), gcs.delta(base_g.version)]


BLOBS = _valid_blobs()


@settings(max_examples=400, deadline=None)
@given(
    which=st.integers(0, len(BLOBS) - 1),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 10**6),
)
def test_corrupted_but_resealed_messages_never_crash(
    which: int, edits: list[tuple[int, int]], cut: int
) -> None:
    body = bytearray(BLOBS[which][:-16])
    for pos, val in edits:
        body[pos % len(body)] = val
    if cut % 3 == 0:
        del body[cut % len(body) :]
    data = _reseal(bytes(body))
    try:
        if which == 2:
            base = GolombFilter.build([bytes([i]) * (i % 40 + 1) for i in range(60)], salt=SALT)
            base.apply_delta(data)
        else:
            load_filter(data)
    except InvalidInput:
        # MalformedMessage, or (for deltas) the right shape but another start version.
        pass


def test_bloom_header_with_a_subnormal_rate_is_malformed() -> None:
    good = BloomFilter.build([b"a"]).to_bytes()
    head = struct.Struct("<4sHHQQdQIQ")
    fields = list(head.unpack_from(good))
    fields[5] = 5e-324
    with pytest.raises(MalformedMessage):
        BloomFilter.from_bytes(_reseal(head.pack(*fields) + good[head.size : -16]))


def test_gcs_header_fields_are_validated() -> None:
    good = GolombFilter.build([b"a", b"b"], salt=SALT).to_bytes()
    head = struct.Struct("<4sHBBQQQ16sQ")
    fields = list(head.unpack_from(good))
    for index, value in ((1, 2), (2, 64), (3, 1), (6, 0), (6, 1), (5, 3), (5, 10**12)):
        bad = list(fields)
        bad[index] = value
        data = _reseal(head.pack(*bad) + good[head.size : -16])
        with pytest.raises(MalformedMessage):
            GolombFilter.from_bytes(data)


def _history_run(kind: str, seed: int, steps: list[tuple[bool, list[int]]]) -> None:
    universe = [bytes([seed, i]) * 5 for i in range(40)]
    server = _make(kind, universe[:10], 2.0**-12)
    present = set(range(10))
    clients = {0: type(server).from_bytes(server.to_bytes())}
    for add, picks in steps:
        if add:
            new = sorted(set(picks) - present)
            server.add_many([universe[i] for i in new])
            present |= set(new)
        else:
            gone = sorted(set(picks) & present)
            server.remove_many([universe[i] for i in gone])
            present -= set(gone)
        clients[server.version] = type(server).from_bytes(server.to_bytes())
    for since, client in clients.items():
        client.apply_delta(server.delta(since))
        assert client.version == server.version
        assert client.checksum == server.checksum
        assert client.to_bytes() == server.to_bytes()
        hits = client.contains_many(universe)
        assert all(hits[i] for i in present)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["gcs", "bloom"]),
    seed=st.integers(0, 255),
    steps=st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 39), max_size=6)), max_size=8),
)
def test_delta_from_any_version_reaches_the_server_filter(
    kind: str, seed: int, steps: list[tuple[bool, list[int]]]
) -> None:
    _history_run(kind, seed, steps)


def test_gcs_delta_cancels_add_then_remove() -> None:
    server = GolombFilter.build([b"x"], salt=SALT)
    server.add_many([b"tmp"])
    server.remove_many([b"tmp"])
    delta = server.delta(0)
    assert len(delta) == struct.calcsize("<4sHBBQQ16sQQQ") + 16  # nothing to send
    client = GolombFilter.build([b"x"], salt=SALT)
    client.apply_delta(delta)
    assert client.version == 2


@pytest.mark.parametrize("kind", ["gcs", "bloom"])
def test_delta_misuse(kind: str) -> None:
    server = _make(kind, [b"a", b"b"], 0.01)
    client = type(server).from_bytes(server.to_bytes())
    server.add_many([b"c"])
    server.add_many([b"d"])
    with pytest.raises(InvalidInput):
        server.delta(5)
    with pytest.raises(InvalidInput):
        client.apply_delta(server.delta(1))  # starts at 1, client is at 0
    # A patch whose target checksum is wrong leaves the client untouched.
    delta = bytearray(server.delta(0)[:-16])
    delta[24] ^= 0xFF  # inside the target checksum
    before = client.to_bytes()
    with pytest.raises(MalformedMessage):
        client.apply_delta(_reseal(bytes(delta)))
    assert client.to_bytes() == before
    other = BloomFilter.build([b"a"]) if kind == "gcs" else GolombFilter.build([b"a"])
    with pytest.raises(MalformedMessage):
        other.apply_delta(server.delta(0))


def test_history_limit() -> None:
    server = GolombFilter.build([b"a"], salt=SALT)
    server.history_limit = 2
    for t in (b"b", b"c", b"d"):
        server.add_many([t])
    with pytest.raises(InvalidInput):
        server.delta(0)
    server.delta(1)


def test_loaded_bloom_is_read_only() -> None:
    client = BloomFilter.from_bytes(BloomFilter.build([b"a"]).to_bytes())
    with pytest.raises(InvalidInput):
        client.add_many([b"b"])
    with pytest.raises(InvalidInput):
        client.remove_many([b"a"])


def test_bad_parameters() -> None:
    for fpr in (0.0, 1.0, float("nan"), -1.0, 5e-324):
        with pytest.raises(InvalidInput):
            GolombFilter.build([b"a"], fpr=fpr)
        with pytest.raises(InvalidInput):
            BloomFilter.build([b"a"], fpr=fpr)
    with pytest.raises(InvalidInput):
        GolombFilter.build([b"a"], fpr=2.0**-62, capacity=100)
    with pytest.raises(InvalidInput):
        build_filter([b"a"], kind="xor")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        build_filter([b"a"], key_id="k" * 256)
    with pytest.raises(InvalidInput):
        GolombFilter.build([b""])
    with pytest.raises(InvalidInput):
        BloomFilter.build(["+98912"])  # type: ignore[list-item]


def test_universe_above_2_to_the_63() -> None:
    toks = [os.urandom(32) for _ in range(1000)]
    filt = GolombFilter.build(toks, fpr=2.0**-54, salt=SALT)
    assert filt.bound > 2**63
    again = GolombFilter.from_bytes(filt.to_bytes())
    assert again.contains_many(toks).all()
    assert again.to_bytes() == filt.to_bytes()
