"""TokenIndex against a plain dict reference, persistence, token sources and bad input."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from hashlib import blake2b
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contactmatch._hashing import hash64, pack_tokens, prefix64
from contactmatch.errors import InvalidInput, MalformedMessage
from contactmatch.index import MemoryTokens, TokenFile, TokenIndex, TokenSource
from contactmatch.index._directory import Directory

SALT = bytes(range(16))


def _universe(seed: int, mode: str) -> list[bytes]:
    """Tokens of many lengths, some sharing their first 8 bytes (prefix-mode collisions)."""
    rng = np.random.default_rng(seed)
    lengths = [7, 11, 31, 63, 64] if mode == "prefix" else [0, 6, 7, 11, 31, 63, 64]
    out: list[bytes] = []
    for i in range(24):
        length = int(rng.choice(lengths))
        out.append(bytes(rng.integers(0, 256, length, dtype=np.uint8)) + bytes([i]))
    stem = bytes(rng.integers(0, 256, 8, dtype=np.uint8))
    out += [stem + bytes([i]) * (i + 1) for i in range(6)]
    return out


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "compact", "move"]),
        st.lists(st.integers(0, 29), max_size=8),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=OPS,
    seed=st.integers(0, 3),
    mode=st.sampled_from(["hash", "prefix"]),
    merge_minimum=st.integers(0, 6),
)
def test_index_agrees_with_dict_reference(
    ops: list[tuple[str, list[int]]], seed: int, mode: str, merge_minimum: int
) -> None:
    universe = _universe(seed, mode)
    index = TokenIndex(salt=SALT, fingerprint=mode, merge_minimum=merge_minimum)  # type: ignore[arg-type]
    ref: dict[bytes, int] = {}
    for step, (op, picks) in enumerate(ops):
        toks = [universe[i] for i in picks]
        if op in ("add", "move"):
            # Rows stay unique per token: a move gives the token a fresh row of its own.
            gen = step + 1 if op == "move" else 0
            rows = [i + 100 * gen for i in picks]
            index.add_many(toks, rows)
            ref.update(zip(toks, rows, strict=True))
        elif op == "remove":
            was = index.remove_many(toks)
            expect = [t in ref for t in toks]
            assert was.tolist() == expect
            for t in toks:
                ref.pop(t, None)
        else:
            index.compact()
            assert index.pending == 0
        got = index.lookup_many(universe)
        assert got.tolist() == [ref.get(t, -1) for t in universe]
        assert index.contains_many(universe).tolist() == [t in ref for t in universe]
        assert len(index) == len(ref)


def test_build_keeps_last_row_of_a_repeated_token() -> None:
    toks = [b"a" * 32, b"b" * 32, b"a" * 32]
    index = TokenIndex.build(toks, [5, 6, 7], salt=SALT)
    assert index.lookup_many([b"a" * 32, b"b" * 32, b"c" * 32]).tolist() == [7, 6, -1]
    assert len(index) == 2


@pytest.mark.parametrize("n", [2, 3, 1000, 1024, 1025, 5000])
def test_at_most_twelve_bytes_per_user_after_build(n: int) -> None:
    # 8 bytes of entry (32-bit key remainder + 32-bit row id) plus a directory of fewer
    # offsets than entries: never more than 12 bytes per user, whatever n is.
    toks = [os.urandom(32) for _ in range(n)]
    index = TokenIndex.build(toks, salt=SALT)
    assert 8 * n < index.nbytes <= 12 * n


def test_fingerprint_collision_is_never_a_match() -> None:
    # Prefix mode: these share the first 8 bytes, so they share a fingerprint.
    registered = b"\x01" * 8 + b"registered-token-tail"
    other = b"\x01" * 8 + b"someone-else-entirely"
    index = TokenIndex.build([registered], salt=SALT, fingerprint="prefix")
    assert index.fingerprints([registered])[0] == index.fingerprints([other])[0]
    assert index.contains_many([registered, other]).tolist() == [True, False]


def test_hash_fingerprint_is_salted_and_not_the_prefix() -> None:
    tok = [bytes(range(32))]
    a = TokenIndex(salt=SALT).fingerprints(tok)
    b = TokenIndex(salt=bytes(16)).fingerprints(tok)
    assert a[0] != b[0]
    assert a[0] != prefix64(tok)[0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=20))
def test_hash_of_a_token_does_not_depend_on_its_batch(tokens: list[bytes]) -> None:
    together = hash64(tokens, SALT)
    alone = np.concatenate([hash64([t], SALT) for t in tokens])
    assert together.tolist() == alone.tolist()


def test_hash_distinguishes_trailing_zero_bytes() -> None:
    h = hash64([b"\x05", b"\x05\x00", b"\x05" + bytes(8)], SALT)
    assert len(set(h.tolist())) == 3


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path: Path, mmap: bool) -> None:
    toks = [os.urandom(int(n)) for n in np.random.default_rng(1).integers(1, 70, 500)]
    source = MemoryTokens()
    source.put_many(np.arange(500, dtype=np.uint32), toks)
    index = TokenIndex.build(toks, salt=SALT, source=source)
    index.remove_many(toks[:10])
    index.add_many([b"new-token"], [9999])
    source.put_many(np.array([9999], dtype=np.uint32), [b"new-token"])
    path = tmp_path / "ix.bin"
    index.save(path)
    loaded = TokenIndex.load(path, source=source, mmap=mmap, verify=True)
    probe = [*toks, b"new-token", b"never"]
    assert loaded.lookup_many(probe).tolist() == index.lookup_many(probe).tolist()
    assert loaded.salt == index.salt
    assert len(loaded) == len(index)
    # A loaded (read-only mapped) index still takes updates in its delta.
    loaded.remove_many(toks[10:20])
    loaded.compact()
    assert not loaded.contains_many(toks[10:20]).any()
    assert loaded.contains_many(toks[20:]).all()


def test_load_rejects_corrupt_files(tmp_path: Path) -> None:
    toks = [os.urandom(32) for _ in range(50)]
    path = tmp_path / "ix.bin"
    TokenIndex.build(toks, salt=SALT).save(path)
    raw = path.read_bytes()
    source = MemoryTokens()
    for bad in (raw[:30], raw[:-1], raw[:10] + b"\xff" + raw[11:], b"XXXX" + raw[4:]):
        path.write_bytes(bad)
        with pytest.raises(MalformedMessage):
            TokenIndex.load(path, source=source)
    data = bytearray(raw)
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    TokenIndex.load(path, source=source)  # lazy by default: the data is not read...
    with pytest.raises(MalformedMessage):
        TokenIndex.load(path, source=source, verify=True)  # ...unless asked


def test_token_file_source(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    matrix = rng.integers(0, 256, (300, 64), dtype=np.uint8)
    path = tmp_path / "tokens.bin"
    TokenFile.write(path, matrix)
    source = TokenFile.open(path)
    assert isinstance(source, TokenSource)
    assert len(source) == 300
    toks = [bytes(r) for r in matrix]
    index = TokenIndex.build(toks, salt=SALT, fingerprint="prefix", source=source)
    forged = toks[7][:8] + bytes(56)  # same fingerprint, different token
    short = toks[8][:32]
    got = index.lookup_many([toks[7], forged, short, toks[299]])
    assert got.tolist() == [7, -1, -1, 299]
    assert source.confirm([toks[1]], np.array([400], dtype=np.uint32)).tolist() == [False]


def test_token_file_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        TokenFile.write(tmp_path / "t", [b"ab", b"abc"])
    path = tmp_path / "t2"
    TokenFile.write(path, [b"ab", b"cd"])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(MalformedMessage):
        TokenFile.open(path)
    path.write_bytes(b"nope")
    with pytest.raises(MalformedMessage):
        TokenFile.open(path)


@pytest.mark.parametrize(
    ("tokens", "rows"),
    [
        ([b""], [0]),
        (["+989121234567"], [0]),
        ([b"abc"], [-1]),
        ([b"abc"], [2**32]),
        ([b"abc", b"def"], [1]),
        ([b"abc"], [1.5]),
    ],
)
def test_add_rejects_bad_input(tokens: list[bytes], rows: list[int]) -> None:
    index = TokenIndex(salt=SALT)
    with pytest.raises(InvalidInput):
        index.add_many(tokens, rows)
    assert len(index) == 0


def test_bad_parameters() -> None:
    with pytest.raises(InvalidInput):
        TokenIndex(salt=b"short")
    with pytest.raises(InvalidInput):
        TokenIndex(fingerprint="nope")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        TokenIndex.build([b"short"], fingerprint="prefix")
    with pytest.raises(InvalidInput):
        TokenIndex(salt=SALT).contains_many([b""])


def test_merge_threshold_compacts_automatically() -> None:
    toks = [os.urandom(32) for _ in range(200)]
    index = TokenIndex.build(toks[:100], salt=SALT)
    index.merge_minimum = 10
    index.add_many(toks[100:105], range(100, 105))
    assert index.pending == 5
    index.add_many(toks[105:120], range(105, 120))
    assert index.pending == 0
    assert index.contains_many(toks[:120]).all()
    assert not index.contains_many(toks[120:]).any()


class _PlainSource:
    """A TokenSource with only ``confirm`` (no packed path), like a store's."""

    def __init__(self) -> None:
        self.tokens: dict[int, bytes] = {}

    def confirm(
        self, tokens: Sequence[bytes], row_ids: npt.NDArray[np.uint32]
    ) -> npt.NDArray[np.bool_]:
        return np.array(
            [self.tokens.get(r) == t for t, r in zip(tokens, row_ids.tolist(), strict=True)],
            dtype=np.bool_,
        )


def _crowded(seed: int, n: int) -> list[bytes]:
    """Prefix-mode tokens built to collide: long buckets, equal keys, equal fingerprints.

    In prefix mode the fingerprint is the first 8 bytes read little-endian, so byte 7 holds
    the top bits (the bucket) and byte 0 the bits a directory key drops.
    """
    rng = np.random.default_rng(seed)
    out: set[bytes] = set()
    while len(out) < n:
        head = bytearray(rng.integers(0, 256, 8, dtype=np.uint8).tobytes())
        kind = int(rng.integers(0, 4))
        if kind == 0:
            head[5:8] = b"\x00\x00\x00"  # one long bucket (and long key runs)
        elif kind == 1:
            head[1:8] = b"\x11" * 7  # same key, fingerprints differ in the dropped bits
        elif kind == 2:
            head[:] = b"\x22" * 8  # same fingerprint, tokens differ after it
        tail = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        out.add(bytes(head) + tail)
    return sorted(out)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    plain=st.booleans(),
    ops=st.lists(
        st.tuples(st.sampled_from(["add", "remove", "compact"]), st.integers(0, 2**16)),
        max_size=8,
    ),
)
def test_crowded_index_agrees_with_dict_reference(
    seed: int, plain: bool, ops: list[tuple[str, int]]
) -> None:
    universe = _crowded(seed, 300)
    rng = np.random.default_rng(seed)
    first = [universe[i] for i in rng.choice(300, 150, replace=False).tolist()]
    ref = {t: 1000 + i for i, t in enumerate(first)}
    plain_source = _PlainSource() if plain else None
    if plain_source is not None:
        plain_source.tokens.update({r: t for t, r in ref.items()})
    index = TokenIndex.build(
        first, list(ref.values()), salt=SALT, fingerprint="prefix", source=plain_source
    )
    index.merge_minimum = 40
    for step, (op, pick_seed) in enumerate(ops):
        picks = np.random.default_rng(pick_seed).choice(300, 60, replace=False).tolist()
        toks = [universe[i] for i in picks]
        if op == "add":
            rows = [5000 * (step + 1) + i for i in picks]
            if plain_source is not None:
                plain_source.tokens.update(zip(rows, toks, strict=True))
            index.add_many(toks, rows)
            ref.update(zip(toks, rows, strict=True))
        elif op == "remove":
            assert index.remove_many(toks).tolist() == [t in ref for t in toks]
            for t in toks:
                ref.pop(t, None)
        else:
            index.compact()
        assert index.lookup_many(universe).tolist() == [ref.get(t, -1) for t in universe]
    index.compact()
    assert index.lookup_many(universe).tolist() == [ref.get(t, -1) for t in universe]
    assert len(index) == len(ref)


def test_long_bucket_and_equal_keys_are_all_seen() -> None:
    universe = _crowded(7, 2000)
    index = TokenIndex.build(universe, salt=SALT, fingerprint="prefix")
    counts = np.diff(index._base.offsets)
    assert int(counts.max()) > 100  # the crowded bucket really is long
    assert index.lookup_many(universe).tolist() == list(range(2000))
    assert not index.contains_many([t + b"x" for t in universe]).any()


def test_keys_narrow_as_the_index_grows_and_shrinks() -> None:
    toks = [os.urandom(32) for _ in range(3000)]
    index = TokenIndex.build(toks[:2], salt=SALT)
    index.merge_minimum = 0
    # Two entries: no directory bits, 32 key bits; bits dropped now are not regained later.
    assert index._base.key_bits == 32
    index.add_many(toks[2:], range(2, 3000))
    index.compact()
    assert index._base.key_bits == 32
    assert index._base.dir_bits == 11
    assert index.lookup_many(toks).tolist() == list(range(3000))
    index.remove_many(toks[10:])
    index.compact()
    assert index._base.dir_bits == 3
    assert index.lookup_many(toks).tolist() == list(range(10)) + [-1] * 2990


def test_empty_index_lookups_and_round_trip(tmp_path: Path) -> None:
    index = TokenIndex(salt=SALT)
    assert index.lookup_many([b"a", b"b"]).tolist() == [-1, -1]
    assert index.contains_many([]).tolist() == []
    path = tmp_path / "empty.bin"
    index.save(path)
    loaded = TokenIndex.load(path, source=MemoryTokens(), verify=True)
    assert len(loaded) == 0
    assert loaded.lookup_many([b"a"]).tolist() == [-1]


@pytest.mark.parametrize("mode", ["hash", "prefix"])
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_keeps_layout_and_answers(tmp_path: Path, mode: str, mmap: bool) -> None:
    universe = _crowded(3, 800)
    source = MemoryTokens()
    source.put_many(np.arange(800, dtype=np.uint32), universe)
    index = TokenIndex.build(universe[:600], salt=SALT, fingerprint=mode, source=source)  # type: ignore[arg-type]
    index.add_many(universe[600:700], range(600, 700))
    index.remove_many(universe[:50])
    path = tmp_path / "ix.bin"
    index.save(path)
    loaded = TokenIndex.load(path, source=source, mmap=mmap, verify=True)
    assert loaded.mode == mode
    assert loaded._base.key_bits == index._base.key_bits
    assert loaded._base.dir_bits == index._base.dir_bits
    assert loaded.lookup_many(universe).tolist() == index.lookup_many(universe).tolist()
    loaded.add_many(universe[700:], range(700, 800))
    loaded.compact()
    assert loaded.lookup_many(universe).tolist() == [-1] * 50 + list(range(50, 800))


def _save_format_1(
    index_fps: npt.NDArray[np.uint64], rows: npt.NDArray[np.uint32], path: Path
) -> None:
    """Write a format-1 file (sorted fingerprints, then row ids) as the previous release did."""
    head = struct.pack("<4sHBxQ16s16s", b"CMIX", 1, 1, index_fps.shape[0], SALT, bytes(16))
    head += blake2b(head, digest_size=64 - len(head)).digest()
    path.write_bytes(head + index_fps.astype("<u8").tobytes() + rows.astype("<u4").tobytes())


def test_loads_format_1_files(tmp_path: Path) -> None:
    toks = [os.urandom(32) for _ in range(300)]
    fps = prefix64(toks)
    order = np.argsort(fps)
    path = tmp_path / "v1.bin"
    _save_format_1(fps[order], np.arange(300, dtype=np.uint32)[order], path)
    source = MemoryTokens()
    source.put_many(np.arange(300, dtype=np.uint32), toks)
    loaded = TokenIndex.load(path, source=source)
    assert loaded.mode == "prefix"
    assert loaded.lookup_many(toks).tolist() == list(range(300))
    # Strictly descending fingerprints: unsorted whatever the tokens were.
    _save_format_1(np.arange(300, 0, -1, dtype=np.uint64), np.arange(300, dtype=np.uint32), path)
    with pytest.raises(MalformedMessage, match="not sorted"):
        TokenIndex.load(path, source=source)


def test_load_rejects_a_directory_that_does_not_match(tmp_path: Path) -> None:
    toks = [os.urandom(32) for _ in range(100)]
    path = tmp_path / "ix.bin"
    TokenIndex.build(toks, salt=SALT).save(path)
    raw = bytearray(path.read_bytes())
    raw[64:68] = (5).to_bytes(4, "little")  # offsets[0] must be 0
    path.write_bytes(bytes(raw))
    with pytest.raises(MalformedMessage):
        TokenIndex.load(path, source=MemoryTokens())


def test_memory_tokens_dense_and_dict_modes() -> None:
    source = MemoryTokens()
    source.put_many(np.array([3, 1, 3], dtype=np.uint32), [b"old", b"one", b"three"])
    assert len(source) == 2
    assert source.confirm(
        [b"three", b"old", b"one", b"one"], np.array([3, 3, 1, 9], dtype=np.uint32)
    ).tolist() == [True, False, True, False]
    source.put_many(np.array([1], dtype=np.uint32), [b"a-much-longer-token-than-before"])
    assert source.confirm(
        [b"one", b"a-much-longer-token-than-before"], np.array([1, 1], dtype=np.uint32)
    ).tolist() == [False, True]
    source.drop_many(np.array([3, 3, 77], dtype=np.uint32))
    assert len(source) == 1
    assert source.confirm([b"three"], np.array([3], dtype=np.uint32)).tolist() == [False]
    # A far-away row id would make the matrix huge: the source falls back to a dict.
    source.put_many(np.array([2**32 - 1], dtype=np.uint32), [b"far"])
    assert source._dict is not None
    assert len(source) == 2
    ids = np.array([1, 2**32 - 1, 5], dtype=np.uint32)
    probe = [b"a-much-longer-token-than-before", b"far", b"far"]
    assert source.confirm(probe, ids).tolist() == [True, True, False]
    mat, lens = pack_tokens(probe)
    assert source.confirm_packed(mat, lens, ids).tolist() == [True, True, False]
    source.drop_many(np.array([1], dtype=np.uint32))
    assert len(source) == 1


def test_token_file_mixed_widths_and_odd_width(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for width in (32, 13):
        matrix = rng.integers(0, 256, (50, width), dtype=np.uint8)
        path = tmp_path / f"t{width}"
        TokenFile.write(path, matrix)
        source = TokenFile.open(path)
        toks = [bytes(r) for r in matrix]
        probe = [toks[0], toks[1][:-1], toks[2] + b"\x00", toks[3], toks[4]]
        rows = np.array([0, 1, 2, 3, 60], dtype=np.uint32)
        assert source.confirm(probe, rows).tolist() == [True, False, False, True, False]
        assert source.confirm(toks[:3], np.array([0, 1, 2], dtype=np.uint32)).all()
        assert source.confirm([b"x" * 3], np.array([0], dtype=np.uint32)).tolist() == [False]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=12))
def test_pack_tokens_matches_a_plain_reference(tokens: list[bytes]) -> None:
    mat, lens = pack_tokens(tokens)
    width = -(-max(map(len, tokens)) // 8) * 8
    assert mat.shape == (len(tokens), width)
    assert lens.tolist() == [len(t) for t in tokens]
    assert [bytes(r) for r in mat] == [t.ljust(width, b"\0") for t in tokens]


@pytest.mark.parametrize("seed", range(6))
def test_in_place_merge_equals_a_fresh_layout(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    # Few distinct high bits: crowded buckets and equal keys on both sides of the merge.
    fps = np.sort(rng.integers(0, 2**12, n).astype(np.uint64) << np.uint64(52))
    fps |= rng.integers(0, 4, n).astype(np.uint64) << np.uint64(20)
    fps.sort()
    base = Directory.from_sorted(fps, rng.permutation(n).astype(np.uint32), 64)
    tomb = np.sort(rng.choice(n, 200, replace=False)).astype(np.int64)
    dfp = (rng.integers(0, 2**12, 150).astype(np.uint64) << np.uint64(52)) | (
        rng.integers(0, 4, 150).astype(np.uint64) << np.uint64(20)
    )
    dfp.sort()
    drows = np.arange(10_000, 10_150, dtype=np.uint32)
    dkeys = dfp >> np.uint64(64 - base.key_bits)
    fast = base.merged(tomb, dkeys, drows)
    assert fast is not None
    alive = np.ones(n, dtype=np.bool_)
    alive[tomb] = False
    keys, rows = base.keys()[alive], base.rows[alive]
    slot = np.searchsorted(keys, dkeys)
    fresh = Directory.from_sorted(
        np.insert(keys, slot, dkeys), np.insert(rows, slot, drows), base.key_bits
    )
    assert fast.offsets.tolist() == fresh.offsets.tolist()
    assert sorted(zip(fast.keys().tolist(), fast.rows.tolist(), strict=True)) == sorted(
        zip(fresh.keys().tolist(), fresh.rows.tolist(), strict=True)
    )
    assert fast.keys().tolist() == fresh.keys().tolist()
    # A merge that changes the directory's size is left to a fresh layout.
    assert base.merged(tomb[:0], np.zeros(0, np.uint64), drows[:0]) is not None
    assert base.merged(np.arange(2000, dtype=np.int64), dkeys[:0], drows[:0]) is None
