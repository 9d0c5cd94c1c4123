"""Bulk key rotation over every adapter: re-derived tokens, re-encrypted numbers, resumability."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path

import pytest

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidInput, VerificationFailed
from contactmatch.rotation import rotate, rotate_url
from contactmatch.stores import BaseStore, Discoverability, UserRecord

N = 230


def tok(key: bytes, number: str) -> bytes:
    return hmac.new(key, number.encode(), hashlib.sha256).digest()


def number(i: int) -> str:
    return f"+98912{i:07d}"


def record(dk: DataKey, i: int, key: bytes = b"old", now: float = 1.0) -> UserRecord:
    uid, t = f"user{i:05d}", tok(key, number(i))
    ct, wk = dk.seal_number(number(i), uid, t)
    return UserRecord(
        user_id=uid,
        token=t,
        key_id="k1",
        number_ct=ct,
        wrapped_key=wk,
        discoverability=Discoverability.EVERYONE,
        created_at=now,
        updated_at=now,
    )


def register(store: BaseStore, dk: DataKey, ids: range, key: bytes = b"old") -> None:
    store.put_users([record(dk, i, key) for i in ids])


class Counting:
    """token_fn under the new key that counts numbers and can fail after some calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.numbers = 0
        self.fail_after = fail_after

    def __call__(self, numbers: Sequence[str]) -> list[bytes]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        self.numbers += len(numbers)
        return [tok(b"new", n) for n in numbers]


def check_rotated(store: BaseStore, dk: DataKey) -> None:
    recs = store.scan_users(None, 10_000)
    assert len(recs) == N
    for r in recs:
        i = int(r.user_id[4:])
        assert (r.token, r.key_id) == (tok(b"new", number(i)), "k2")
        assert not dk.needs_rewrap(r.wrapped_key)
        # re-sealed for the new token: the old token no longer opens it
        assert dk.open_number(r.number_ct, r.wrapped_key, r.user_id, r.token) == number(i)
        with pytest.raises(VerificationFailed):
            dk.open_number(r.number_ct, r.wrapped_key, r.user_id, tok(b"old", number(i)))


def test_rotate_rekeys_everyone(store: BaseStore) -> None:
    dk1 = DataKey.generate("dk1")
    register(store, dk1, range(N))
    store.put_users([])  # no-op batch
    store.replace_contacts("user00001", [tok(b"old", "+15555550100")], "k1")
    dk2 = dk1.rotated("dk2")
    fn = Counting()
    report = rotate(store, dk2, fn, "k2", batch_size=50)
    assert (report.rekeyed, report.skipped, report.passes) == (N, 0, 2)
    assert report.contacts_purged == 1
    assert fn.numbers == N
    check_rotated(store, dk2)
    assert store.lookup_tokens([tok(b"old", number(3))]) == [None]
    assert store.get_checkpoint("rotate:k2") is None
    # a second run finds nothing to do
    again = rotate(store, dk2, Counting(), "k2", batch_size=50)
    assert (again.rekeyed, again.passes) == (0, 1)


def test_rotate_resumes_after_a_crash(store: BaseStore) -> None:
    dk = DataKey.generate("dk1")
    register(store, dk, range(N))
    crashing = Counting(fail_after=2)
    with pytest.raises(RuntimeError):
        rotate(store, dk, crashing, "k2", batch_size=40)
    assert store.get_checkpoint("rotate:k2") == "user00079"  # two batches of 40 done
    resumed = Counting()
    report = rotate(store, dk, resumed, "k2", batch_size=40)
    assert report.rekeyed == N - 80
    assert resumed.numbers == N - 80  # nothing before the checkpoint was redone
    check_rotated(store, dk)


def test_rotate_catches_users_who_changed_meanwhile(store: BaseStore) -> None:
    dk = DataKey.generate("dk1")
    register(store, dk, range(N))
    fn = Counting()

    def meddling(numbers: Sequence[str]) -> list[bytes]:
        if fn.calls == 0:
            # user00000 re-registers under the old key while their batch is in flight
            store.put_users([record(dk, 0, b"old-again", now=2.0)])
        return fn(numbers)

    report = rotate(store, dk, meddling, "k2", batch_size=100)
    assert report.skipped == 1
    assert report.passes == 3
    check_rotated(store, dk)


def test_rotate_checks_token_fn_and_data_key(store: BaseStore) -> None:
    dk = DataKey.generate("dk1")
    register(store, dk, range(3))
    with pytest.raises(InvalidInput):
        rotate(store, dk, lambda ns: [b"x" * 32], "k2")
    with pytest.raises(VerificationFailed):
        rotate(store, DataKey.generate("dk1"), Counting(), "k2")


def test_rotate_url_reports_progress(tmp_path: Path) -> None:
    dk = DataKey.generate("dk1")
    key_path = tmp_path / "data.key"
    dk.save(key_path)
    url = f"sqlite:///{tmp_path}/r.db"
    from contactmatch.stores import open_store

    with open_store(url) as s:
        register(s, dk, range(N))
    calls: list[tuple[int, int]] = []
    report = rotate_url(
        url, key_path, Counting(), "k2", batch_size=64, progress=lambda d, t: calls.append((d, t))
    )
    assert report.rekeyed == N
    assert calls[0] == (64, N)
    assert calls[len(calls) // report.passes - 1] == (N, N)  # the first pass saw every user
    with open_store(url) as s:
        check_rotated(s, dk)


def test_data_key_rotation_alone_rewraps_every_user(store: BaseStore) -> None:
    # Same OPRF key (tokens unchanged), new data key: every user gets a fresh user key
    # wrapped by the new primary, after which the old data key can be retired.
    dk1 = DataKey.generate("dk1")
    register(store, dk1, range(40))
    before = {r.user_id: r for r in store.scan_users(None, 100)}
    dk2 = dk1.rotated("dk2")

    def same_tokens(numbers: Sequence[str]) -> list[bytes]:
        return [tok(b"old", n) for n in numbers]

    report = rotate(store, dk2, same_tokens, "k1", batch_size=16)
    assert report.rekeyed == 40
    only_dk2 = dk2.retired("dk1")
    for r in store.scan_users(None, 100):
        old = before[r.user_id]
        assert r.token == old.token
        assert r.wrapped_key != old.wrapped_key
        assert r.number_ct != old.number_ct
        assert only_dk2.open_number(r.number_ct, r.wrapped_key, r.user_id, r.token) == number(
            int(r.user_id[4:])
        )
        assert store.lookup_tokens([r.token]) == [r]
    assert rotate(store, dk2, same_tokens, "k1").rekeyed == 0
