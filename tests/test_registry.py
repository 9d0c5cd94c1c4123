"""RegistryTable against the plain references: a dict of user id -> token, TokenTable, and
GolombFilter.build, through random interleavings of upserts, removals, moves and compactions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from contactmatch._hashing import hash64, scale
from contactmatch.errors import ContactMatchError, InvalidInput
from contactmatch.filters import GolombFilter
from contactmatch.registry import RegistryTable, filter_salt
from contactmatch.schemes.table import TokenTable, bucket_of, fingerprint_of, open_sealed

KEY = "oprf-k1"
# Small pools, so that tokens move between users and ids come back after removal.
TOKENS = st.binary(min_size=1, max_size=40)
USER_IDS = st.text(alphabet="abcdefghij0123456789._-", min_size=1, max_size=24)
BITS = (0, 1, 3, 8, 32)


def _pairs(n: int, seed: int = 7) -> tuple[list[str], list[bytes]]:
    rng = np.random.default_rng(seed)
    tokens = [bytes(r) for r in rng.integers(0, 256, (n, 32), dtype=np.uint8)]
    return [f"user-{i}" for i in range(n)], tokens


def _as_sets(answer: list[list[tuple[bytes, bytes]]]) -> list[list[tuple[bytes, bytes]]]:
    return [sorted(b) for b in answer]


def _reference_filter(tokens: list[bytes], bound: int) -> np.ndarray:
    if not tokens:
        return np.zeros(0, dtype=np.uint64)
    return np.sort(scale(hash64(tokens, filter_salt(KEY)), bound))


class RegistryMachine(RuleBasedStateMachine):
    """Random batches against a dict; every query checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.ref: dict[str, bytes] = {}
        self.table = RegistryTable.empty(key_id=KEY)
        self.hashes = np.zeros(0, dtype=np.uint64)

    @initialize(
        users=st.dictionaries(USER_IDS, TOKENS, max_size=40),
        compact_min=st.integers(0, 30),
        compact_at=st.sampled_from([None, 0.0, 0.25, 1.0]),
    )
    def start(self, users: dict[str, bytes], compact_min: int, compact_at: float | None) -> None:
        # One holder per token, as the store guarantees.
        by_token = {t: u for u, t in users.items()}
        self.ref = {u: t for t, u in by_token.items()}
        self.table = RegistryTable.build(list(self.ref), list(self.ref.values()), key_id=KEY)
        self.table.compact_min, self.table.compact_at = compact_min, compact_at
        self.hashes = self.table.sorted_hashes()

    @rule(
        data=st.data(),
        new_users=st.lists(USER_IDS, max_size=6),
        new_tokens=st.lists(TOKENS, max_size=6),
    )
    def batch(self, data: st.DataObject, new_users: list[str], new_tokens: list[bytes]) -> None:
        known_users = sorted(self.ref)
        known_tokens = sorted(set(self.ref.values()))
        users = st.sampled_from(known_users + new_users) if known_users + new_users else None
        tokens = st.sampled_from(known_tokens + new_tokens) if known_tokens + new_tokens else None
        ups: dict[str, bytes] = {}
        if users is not None and tokens is not None:
            for _ in range(data.draw(st.integers(0, 6))):
                u, t = data.draw(users), data.draw(tokens)
                if u not in ups and t not in ups.values():
                    ups[u] = t
        removals = []
        if users is not None:
            removals = [
                u for u in data.draw(st.lists(users, max_size=4, unique=True)) if u not in ups
            ]
        delta = self.table.apply(list(ups.items()), removals)
        gone = set(removals) | set(ups)
        moved = set(ups.values())
        self.ref = {u: t for u, t in self.ref.items() if u not in gone and t not in moved}
        self.ref.update(ups)
        # The delta patches the previous hash multiset into the new one.
        patched = np.sort(np.concatenate([_drop(self.hashes, delta.removed), delta.added]))
        assert np.array_equal(patched, self.table.sorted_hashes())
        self.hashes = patched

    @rule()
    def compact(self) -> None:
        compacted = self.table.compact()
        assert compacted.overlay_size == 0
        compacted.compact_min, compacted.compact_at = 0, None
        self.table = compacted

    @invariant()
    def counts_agree(self) -> None:
        assert len(self.table) == self.table.user_count == len(self.ref)

    @invariant()
    def lookups_agree(self) -> None:
        registered = list(self.ref.values())
        strangers = [t + b"?" for t in registered if t + b"?" not in self.ref.values()]
        queries = registered + strangers
        got = self.table.lookup_candidates(queries)
        # Candidates must include every registered token; 64-bit collisions do not occur here.
        assert got.tolist() == [True] * len(registered) + [False] * len(strangers)
        users = [*self.ref, "nobody-here"]
        assert self.table.has_users(users).tolist() == [u in self.ref for u in users]

    @invariant()
    def buckets_agree(self) -> None:
        reference = TokenTable()
        reference.add(list(self.ref), list(self.ref.values()))
        fresh = RegistryTable.build(list(self.ref), list(self.ref.values()), key_id=KEY)
        for bits in BITS:
            prefixes = [*sorted({bucket_of(t, bits) for t in self.ref.values()}), 0]
            got = self.table.bucket(prefixes, bits)
            assert _as_sets(got.entries()) == _as_sets(reference.bucket(prefixes, bits))
            # Canonical order: the same answer, byte for byte, as a fresh build.
            again = fresh.bucket(prefixes, bits)
            assert got.sealed == again.sealed
            assert np.array_equal(got.fingerprints, again.fingerprints)
            assert np.array_equal(got.counts, again.counts)

    @invariant()
    def filters_agree(self) -> None:
        for bound in (1, 1000, 2**40, 2**64 - 1):
            want = _reference_filter(list(self.ref.values()), bound)
            assert np.array_equal(self.table.filter_values(bound), want)


def _drop(values: np.ndarray, drop: np.ndarray) -> np.ndarray:
    out = list(values.tolist())
    for v in drop.tolist():
        out.remove(v)
    return np.array(out, dtype=np.uint64)


RegistryMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("REGISTRY_EXAMPLES", "60")),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestRegistryMachine = RegistryMachine.TestCase


def _weak_hash64(tokens: list[bytes], salt: bytes) -> np.ndarray:
    """Four values in all: most tokens collide, as 64-bit hashes never do in a test."""
    return np.array([(t[0] % 4) << 60 for t in tokens], dtype=np.uint64)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(
        st.tuples(
            st.dictionaries(USER_IDS, TOKENS, max_size=6),
            st.lists(USER_IDS, max_size=3),
            st.booleans(),
        ),
        max_size=10,
    ),
)
def test_colliding_hashes_never_hide_a_registered_token(
    batches: list[tuple[dict[str, bytes], list[str], bool]],
) -> None:
    """Rows are told apart by (bucket key, fingerprint, h), never by h alone, and a removed
    row never hides a live one of the same h."""
    from contactmatch.registry import _derive
    from contactmatch.registry import table as table_mod

    strangers = [bytes([b]) + b"-stranger" for b in range(8)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(table_mod, "hash64", _weak_hash64)
        mp.setattr(_derive, "hash64", _weak_hash64)
        table = RegistryTable.empty(key_id=KEY)
        table.compact_at = None
        ref: dict[str, bytes] = {}
        for ups, rems, compact in batches:
            upserts = list({t: u for u, t in ups.items()}.items())
            upserts = [(u, t) for t, u in upserts]
            removals = [u for u in dict.fromkeys(rems) if u not in dict(upserts)]
            table.apply(upserts, removals)
            moved = {t for _, t in upserts}
            gone = set(removals) | {u for u, _ in upserts}
            ref = {u: t for u, t in ref.items() if u not in gone and t not in moved}
            ref.update(upserts)
            registered = list(ref.values())
            assert table.lookup_candidates(registered).all()
            held = set(_weak_hash64(registered, b"").tolist())
            want = [int(v) in held for v in _weak_hash64(strangers, b"")]
            assert table.lookup_candidates(strangers).tolist() == want
            assert table.sorted_hashes().tolist() == sorted(_weak_hash64(registered, b"").tolist())
            assert table.has_users(list(ref)).all()
            assert len(table) == len(ref)
            if compact:
                table = table.compact()


# --- fixed cases -------------------------------------------------------------------------------
def test_bucket_entries_open_to_their_tokens_only() -> None:
    uids, tokens = _pairs(300)
    table = RegistryTable.build(uids, tokens, key_id=KEY)
    bits = 4
    owner = dict(zip(tokens, uids, strict=True))
    for token in tokens[:40]:
        answer = table.bucket([bucket_of(token, bits)], bits)
        pairs = answer.entries()[0]
        mine = [s for fp, s in pairs if fp == fingerprint_of(token)]
        assert [open_sealed(token, s) for s in mine] == [owner[token]]
        others = [s for fp, s in pairs if fp != fingerprint_of(token)]
        assert all(open_sealed(token, s) is None for s in others)


def test_bucket_answer_shapes() -> None:
    uids, tokens = _pairs(500)
    table = RegistryTable.build(uids, tokens, key_id=KEY)
    answer = table.bucket([3, 3, 0], 2)
    assert answer.counts.tolist()[0] == answer.counts.tolist()[1]
    assert len(answer) == int(answer.counts.sum()) == len(answer.fingerprint_list())
    assert len(answer.sealed_list()) == len(answer)
    assert answer.offsets[-1] == len(answer.sealed)
    assert answer.fingerprints.shape == (len(answer), 8)
    everyone = table.bucket([0], 0)
    assert everyone.counts.tolist() == [500]
    empty = table.bucket([], 5)
    assert len(empty) == 0
    assert empty.entries() == []


@pytest.mark.parametrize("uniform", [True, False])
def test_items_encoding_is_the_wire_encoding(uniform: bool) -> None:
    """The whole-blob encoding equals what the wire writes from the per-entry lists."""
    from contactmatch.schemes.wire import _Writer

    uids, tokens = _pairs(400)
    if not uniform:
        uids = [u + "z" * (i % 3) for i, u in enumerate(uids)]
    table = RegistryTable.build(uids, tokens, key_id=KEY)
    table.apply([("late", b"late token")], [uids[0]])
    for prefixes, bits in (([1, 2, 2, 9], 4), ([0], 0), ([], 3)):
        answer = table.bucket(prefixes, bits)
        fps, sealed = answer.items_encoding()
        for got, items in ((fps, answer.fingerprint_list()), (sealed, answer.sealed_list())):
            w = _Writer()
            w.items(items)
            assert got == b"".join(w.parts)


@pytest.mark.parametrize(
    ("prefixes", "bits"), [([4], 2), ([-1], 3), ([0], 33), ([0], -1), (["x"], 3), ([1], 0)]
)
def test_bucket_refuses_bad_prefixes(prefixes: list[object], bits: int) -> None:
    table = RegistryTable.build(*_pairs(10), key_id=KEY)
    with pytest.raises(InvalidInput):
        table.bucket(prefixes, bits)  # type: ignore[arg-type]


def test_last_prefix_reaches_the_end() -> None:
    uids, tokens = _pairs(2000)
    table = RegistryTable.build(uids, tokens, key_id=KEY)
    for bits in (1, 7, 32):
        top = (1 << bits) - 1
        want = sum(bucket_of(t, bits) == top for t in tokens)
        assert table.bucket([top], bits).counts.tolist() == [want]


def test_filter_bytes_are_canonical_across_histories() -> None:
    """Two processes holding the same membership by different histories publish the same bytes."""
    uids, tokens = _pairs(3000)
    one = RegistryTable.build(uids, tokens, key_id=KEY)
    other = RegistryTable.build(uids[:1000], tokens[:1000], key_id=KEY)
    other.compact_min, other.compact_at = 0, 0.5
    _, extra_tokens = _pairs(200, seed=99)
    extra_users = [f"extra-{i}" for i in range(200)]
    other.apply(list(zip(extra_users, extra_tokens, strict=True)), [])
    for i in range(1000, 3000, 250):
        other.apply(list(zip(uids[i : i + 250], tokens[i : i + 250], strict=True)), [])
    other.apply([], extra_users)
    assert len(other) == len(one)
    reference = GolombFilter.build(tokens, fpr=2**-20, capacity=8192, salt=one.salt, key_id=KEY)
    for table in (one, other):
        values = table.filter_values(reference.bound)
        f = GolombFilter(bound=reference.bound, salt=table.salt, values=values, key_id=KEY)
        assert f.to_bytes() == reference.to_bytes()


def test_delta_cancels_a_re_registration() -> None:
    uids, tokens = _pairs(50)
    table = RegistryTable.build(uids, tokens, key_id=KEY)
    delta = table.apply([(uids[3], tokens[3])], [])
    assert not delta
    assert len(table) == 50
    moved = table.apply([(uids[4], tokens[5])], [])
    # User 4 changes to user 5's token: 4's old token leaves, 5 loses their row.
    assert moved.added.size == 0
    assert moved.removed.tolist() == table.hashes([tokens[4]]).tolist()
    assert len(table) == 49
    assert table.has_users([uids[4], uids[5]]).tolist() == [True, False]
    add, rem = moved.scaled(2**20)
    assert add.size == 0
    assert rem.tolist() == scale(table.hashes([tokens[4]]), 2**20).tolist()


@pytest.mark.parametrize(
    ("upserts", "removals"),
    [
        ([("a", b"t1"), ("a", b"t2")], []),
        ([("a", b"t1"), ("b", b"t1")], []),
        ([("a", b"t1")], ["a"]),
        ([("a", b"")], []),
        ([("", b"t")], []),
        ([("a" * 248, b"t")], []),
        ([("a", "t")], []),
        ([(b"a", b"t")], []),
    ],
)
def test_apply_refuses_malformed_batches(
    upserts: list[tuple[object, object]], removals: list[str]
) -> None:
    table = RegistryTable.build(*_pairs(20), key_id=KEY)
    before = table.sorted_hashes()
    with pytest.raises(InvalidInput):
        table.apply(upserts, removals)  # type: ignore[arg-type]
    assert np.array_equal(table.sorted_hashes(), before)
    assert table.overlay_size == 0


@pytest.mark.parametrize(
    ("uids", "tokens"),
    [(["a", "a"], [b"1", b"2"]), (["a", "b"], [b"1", b"1"]), (["a"], [b"1", b"2"]), ([1], [b"1"])],
)
def test_build_refuses_repeats_and_mismatches(uids: list[object], tokens: list[bytes]) -> None:
    with pytest.raises(InvalidInput):
        RegistryTable.build(uids, tokens, key_id=KEY)  # type: ignore[arg-type]


@pytest.mark.parametrize("key_id", ["", 3, "k" * 1025])
def test_key_ids_are_checked(key_id: object) -> None:
    with pytest.raises(ContactMatchError):
        RegistryTable.empty(key_id=key_id)  # type: ignore[arg-type]


def test_empty_table_answers_everything() -> None:
    table = RegistryTable.empty(key_id=KEY)
    assert len(table) == 0
    assert table.lookup_candidates([b"a"]).tolist() == [False]
    assert table.filter_values(2**32).size == 0
    assert table.bucket([0, 1], 1).counts.tolist() == [0, 0]
    assert not table.apply([], ["nobody"])
    table.apply([("a", b"tok")], [])
    assert table.lookup_candidates([b"tok"]).tolist() == [True]


def test_salts_differ_per_key_and_stay_put() -> None:
    assert filter_salt("a") == filter_salt("a") != filter_salt("b")
    assert len(filter_salt("a")) == 16
    one = RegistryTable.build(*_pairs(5), key_id="a")
    two = RegistryTable.build(*_pairs(5), key_id="a")
    assert one.salt == two.salt
    assert one.user_salt != two.user_salt  # drawn per build: ids cannot be aimed at it


def test_auto_compaction_keeps_answers() -> None:
    uids, tokens = _pairs(4000)
    table = RegistryTable.build(uids[:2000], tokens[:2000], key_id=KEY)
    table.compact_min, table.compact_at = 100, 0.1
    seen = []
    for i in range(2000, 4000, 150):
        table.apply(
            list(zip(uids[i : i + 150], tokens[i : i + 150], strict=True)),
            uids[i - 2000 : i - 1950],
        )
        seen.append(table.overlay_size)
    assert min(seen) == 0 < max(seen)  # it compacted at least once and also held changes
    live = dict(zip(uids, tokens, strict=True))
    for i in range(2000, 4000, 150):
        for u in uids[i - 2000 : i - 1950]:
            live.pop(u, None)
    fresh = RegistryTable.build(list(live), list(live.values()), key_id=KEY)
    assert np.array_equal(table.sorted_hashes(), fresh.sorted_hashes())
    answer, again = table.bucket(range(256), 8), fresh.bucket(range(256), 8)
    assert answer.sealed == again.sealed


def test_user_hash_collisions_are_redrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two distinct ids that share a user hash get a new salt at build, not a merged row."""
    from contactmatch.registry import _derive
    from contactmatch.registry import table as table_mod

    real = _derive.user_hashes
    calls = []

    def colliding(user_ids: list[str], user_salt: bytes) -> np.ndarray:
        calls.append(user_salt)
        out = real(user_ids, user_salt)
        if len(calls) == 1 and len(out) > 1:
            out = out.copy()
            out[1] = out[0]
        return out

    monkeypatch.setattr(_derive, "user_hashes", colliding)
    uids, tokens = _pairs(10)
    table = table_mod.RegistryTable.build(uids, tokens, key_id=KEY)
    assert len(calls) >= 2
    assert calls[0] != table.user_salt
    assert len(table) == 10


def test_readers_see_whole_states_while_a_writer_applies() -> None:
    """Queries run without a lock: each sees one state, before or after a batch, never half."""
    uids, tokens = _pairs(3000)
    table = RegistryTable.build(uids[:1000], tokens[:1000], key_id=KEY)
    table.compact_min, table.compact_at = 200, 0.2
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                # Users join in pairs of batches that keep the count even, and leave likewise.
                n = len(table)
                answer = table.bucket([0], 0)
                assert n % 100 == 0
                assert len(answer) % 100 == 0
                assert table.lookup_candidates(tokens[:1]).tolist() == [True]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for r in readers:
        r.start()
    for i in range(1000, 3000, 100):
        table.apply(list(zip(uids[i : i + 100], tokens[i : i + 100], strict=True)), [])
        table.apply([], uids[i : i + 100])
    stop.set()
    for r in readers:
        r.join()
    assert not errors
    assert len(table) == 1000


# --- memory ------------------------------------------------------------------------------------
_MEMORY_CHILD = textwrap.dedent(
    """
    import gc, json, os, sys
    import numpy as np

    def anon():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise SystemExit("no RssAnon")

    from contactmatch.registry import load
    from contactmatch.schemes.table import bits_for
    before = anon()
    table, seq = load(sys.argv[1], key_id="oprf-k1", store_id="memory-test")
    n = len(table)
    rng = np.random.default_rng(5)
    ups = [(f"user-{i}", bytes(rng.integers(0, 256, 32, dtype=np.uint8))) for i in range(500)]
    ups += [(f"new-{i}", bytes(rng.integers(0, 256, 32, dtype=np.uint8))) for i in range(300)]
    table.apply(ups, [f"user-{i}" for i in range(1000, 1200)])
    bits = bits_for(n, 64)
    table.bucket(rng.integers(0, 1 << bits, 1000).tolist(), bits)
    table.lookup_candidates([u[1] for u in ups])
    gc.collect()
    after = anon()
    # What is left once malloc gives back the free heap: the table's own anonymous memory.
    # The rest is the working memory of the bucket query, kept by glibc for reuse.
    import ctypes
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)
    trimmed = anon()
    print(json.dumps({
        "n": n,
        "seq": seq,
        "anon_bytes_per_user": (after - before) / n,
        "anon_bytes_per_user_trimmed": (trimmed - before) / n,
    }))
    """
)


@pytest.mark.slow
def test_anonymous_memory_per_user_after_load_and_changes(tmp_path: Path) -> None:
    """A loaded 10**6 snapshot plus 1,000 changes: report (and bound) anonymous RSS per user."""
    from contactmatch.registry import save

    n = 1_000_000
    uids, tokens = _pairs(n, seed=5)
    save(
        RegistryTable.build(uids, tokens, key_id=KEY),
        tmp_path / "r.snap",
        seq=1,
        store_id="memory-test",
    )
    del uids, tokens
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(tmp_path / "r.snap")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    got = json.loads(out.stdout)
    print(
        f"\nregistry: {got['n']:,} users loaded + 1,000 changes + one 1,000-prefix bucket "
        f"query: anonymous RSS {got['anon_bytes_per_user']:.2f} B/user "
        f"({got['anon_bytes_per_user_trimmed']:.2f} B/user after malloc_trim)"
    )
    assert got["seq"] == 1
    assert got["anon_bytes_per_user"] <= 48
