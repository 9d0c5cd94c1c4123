"""Numbers at rest: per-user keys wrapped by the data key, blobs bound to user and token."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from contactmatch.atrest import DataKey, SealedNumber
from contactmatch.errors import InvalidKey, InvalidNumber, VerificationFailed

NUMBER = "+989121234567"
TOK = bytes(range(32))
OTHER_TOK = bytes(range(1, 33))


def test_roundtrip_and_fresh_keys() -> None:
    k = DataKey.generate("dk1")
    a, b = k.seal_number(NUMBER, "alice", TOK), k.seal_number(NUMBER, "alice", TOK)
    assert a.number_ct != b.number_ct  # a fresh user key and nonce each time
    assert a.wrapped_key != b.wrapped_key
    assert k.open_number(a.number_ct, a.wrapped_key, "alice", TOK) == NUMBER
    assert k.open_number(*b, "alice", TOK) == NUMBER
    assert NUMBER.encode() not in a.number_ct + a.wrapped_key


def test_blob_layout_matches_an_independent_aesgcm() -> None:
    secret, user_key = bytes(range(32)), bytes(range(50, 82))
    n1, n2 = bytes(range(100, 112)), bytes(range(200, 212))
    k = DataKey({"dk1": secret}, "dk1")
    sealed = k._seal_with(NUMBER, "alice", TOK, user_key=user_key, number_nonce=n1, wrap_nonce=n2)
    number_aad = b"contactmatch/number/v2\x00\x02" + b"\x00\x05alice" + b"\x00\x20" + TOK
    assert sealed.number_ct == b"\x02" + n1 + AESGCM(user_key).encrypt(
        n1, NUMBER.encode(), number_aad
    )
    header = b"\x02\x03dk1"
    wrap_aad = b"contactmatch/user-key/v2\x00" + header + b"\x00\x05alice"
    assert sealed.wrapped_key == header + n2 + AESGCM(secret).encrypt(n2, user_key, wrap_aad)
    assert k.open_number(*sealed, "alice", TOK) == NUMBER


def test_user_id_is_bound() -> None:
    k = DataKey.generate()
    s = k.seal_number(NUMBER, "alice", TOK)
    with pytest.raises(VerificationFailed):
        k.open_number(*s, "mallory", TOK)


def test_token_is_bound() -> None:
    # A ciphertext replayed into the same user's row after the token changed is refused.
    k = DataKey.generate()
    s = k.seal_number(NUMBER, "alice", TOK)
    with pytest.raises(VerificationFailed):
        k.open_number(*s, "alice", OTHER_TOK)


def test_an_older_ciphertext_does_not_open_under_the_current_key() -> None:
    # Each registration draws a new user key: an old ciphertext replayed next to the current
    # wrapped key (or the reverse) is refused, even for the same user and token.
    k = DataKey.generate()
    old = k.seal_number("+989120000000", "alice", TOK)
    new = k.seal_number(NUMBER, "alice", TOK)
    with pytest.raises(VerificationFailed):
        k.open_number(old.number_ct, new.wrapped_key, "alice", TOK)
    with pytest.raises(VerificationFailed):
        k.open_number(new.number_ct, old.wrapped_key, "alice", TOK)


def test_blobs_do_not_move_between_users() -> None:
    k = DataKey.generate()
    a = k.seal_number(NUMBER, "alice", TOK)
    b = k.seal_number("+989120000000", "bob", OTHER_TOK)
    for ct, wk, uid, tok in [
        (a.number_ct, b.wrapped_key, "bob", OTHER_TOK),
        (b.number_ct, a.wrapped_key, "alice", TOK),
        (a.number_ct, a.wrapped_key, "bob", OTHER_TOK),
    ]:
        with pytest.raises(VerificationFailed):
            k.open_number(ct, wk, uid, tok)


def test_without_the_wrapped_key_nothing_opens() -> None:
    # Crypto-shredding: the data key alone cannot open a number whose wrapped key is gone.
    k = DataKey.generate("dk1")
    s = k.seal_number(NUMBER, "alice", TOK)
    stand_ins = [b"", b"\x02", s.wrapped_key[:-1], k.seal_number(NUMBER, "alice", TOK).wrapped_key]
    for wk in stand_ins:
        with pytest.raises(VerificationFailed):
            k.open_number(s.number_ct, wk, "alice", TOK)


def test_every_byte_is_authenticated() -> None:
    k = DataKey.generate("dk1")
    ct, wk = k.seal_number(NUMBER, "alice", TOK)
    for i in range(len(ct)):
        bad = bytearray(ct)
        bad[i] ^= 0x01
        with pytest.raises(VerificationFailed):
            k.open_number(bytes(bad), wk, "alice", TOK)
    for i in range(len(wk)):
        bad = bytearray(wk)
        bad[i] ^= 0x01
        with pytest.raises(VerificationFailed):
            k.open_number(ct, bytes(bad), "alice", TOK)
    for cut in (0, 1, 5, len(ct) - 1):
        with pytest.raises(VerificationFailed):
            k.open_number(ct[:cut], wk, "alice", TOK)
    for cut in (0, 1, 5, len(wk) - 1):
        with pytest.raises(VerificationFailed):
            k.open_number(ct, wk[:cut], "alice", TOK)
    with pytest.raises(VerificationFailed):
        k.open_number(ct, wk, "alice", b"")
    with pytest.raises(VerificationFailed):
        k.open_number(ct, wk, "", TOK)


def test_version_1_blobs_are_refused_with_a_clear_message() -> None:
    k = DataKey({"dk1": bytes(32)}, "dk1")
    ct, wk = k.seal_number(NUMBER, "alice", TOK)
    v1_ct = b"\x01" + ct[1:]
    v1_wk = b"\x01" + wk[1:]
    for c, w in [(ct, v1_wk), (v1_ct, wk)]:
        with pytest.raises(VerificationFailed, match="version 1"):
            k.open_number(c, w, "alice", TOK)
    # any other version is just the opaque failure
    with pytest.raises(VerificationFailed) as info:
        k.open_number(b"\x07" + ct[1:], wk, "alice", TOK)
    assert str(info.value) == "verification failed"


def test_other_key_cannot_open() -> None:
    s = DataKey.generate("dk1").seal_number(NUMBER, "alice", TOK)
    with pytest.raises(VerificationFailed):
        DataKey.generate("dk1").open_number(*s, "alice", TOK)
    with pytest.raises(VerificationFailed):
        DataKey.generate("dk2").open_number(*s, "alice", TOK)


def test_rotation_keeps_old_wrapped_keys_readable() -> None:
    k1 = DataKey.generate("dk1")
    old = k1.seal_number(NUMBER, "alice", TOK)
    k2 = k1.rotated("dk2")
    new = k2.seal_number(NUMBER, "alice", TOK)
    assert (k2.primary_id, k2.key_ids) == ("dk2", ["dk1", "dk2"])
    assert k2.open_number(*old, "alice", TOK) == NUMBER
    assert k2.needs_rewrap(old.wrapped_key)
    assert not k2.needs_rewrap(new.wrapped_key)
    assert k2.needs_rewrap(b"")
    assert k2.needs_rewrap(b"\x01" + new.wrapped_key[1:])
    k3 = k2.retired("dk1")
    assert k3.open_number(*new, "alice", TOK) == NUMBER
    with pytest.raises(VerificationFailed):
        k3.open_number(*old, "alice", TOK)
    with pytest.raises(InvalidKey):
        k2.retired("dk2")
    with pytest.raises(InvalidKey):
        k2.rotated("dk1")


@pytest.mark.parametrize("bad", ["989121234567", "+0123456", "+98 912 123", "", "+1234"])
def test_only_e164_is_sealed_and_errors_mask_it(bad: str) -> None:
    with pytest.raises(InvalidNumber) as info:
        DataKey.generate().seal_number(bad, "alice", TOK)
    if len(bad) > 8:
        assert bad not in str(info.value)


@pytest.mark.parametrize(("uid", "tok"), [("", TOK), ("alice", b""), ("alice", "t" * 32)])
def test_seal_needs_a_user_id_and_a_token(uid: str, tok: bytes) -> None:
    with pytest.raises(InvalidKey):
        DataKey.generate().seal_number(NUMBER, uid, tok)


def test_seal_hook_checks_its_randomness() -> None:
    k = DataKey.generate()
    with pytest.raises(InvalidKey):
        k._seal_with(
            NUMBER, "a", TOK, user_key=bytes(31), number_nonce=bytes(12), wrap_nonce=bytes(12)
        )
    with pytest.raises(InvalidKey):
        k._seal_with(
            NUMBER, "a", TOK, user_key=bytes(32), number_nonce=bytes(12), wrap_nonce=bytes(11)
        )


def test_save_load_0600(tmp_path: Path) -> None:
    k = DataKey.generate("dk1").rotated("dk2")
    path = tmp_path / "data.key"
    k.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = DataKey.load(path)
    assert loaded.key_ids == ["dk1", "dk2"]
    assert loaded.open_number(*k.seal_number(NUMBER, "bob", TOK), "bob", TOK) == NUMBER
    with pytest.raises(InvalidKey):
        k.save(path)  # never overwrite a key
    assert [p.name for p in tmp_path.iterdir()] == ["data.key"]


def test_load_refuses_group_readable(tmp_path: Path) -> None:
    path = tmp_path / "data.key"
    DataKey.generate().save(path)
    os.chmod(path, 0o640)
    with pytest.raises(InvalidKey, match="group or others"):
        DataKey.load(path)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"format": "something-else", "version": 1}),
        json.dumps({"format": "contactmatch-datakey", "version": 2}),
        json.dumps({"format": "contactmatch-datakey", "version": 1, "keys": {}, "primary": "x"}),
        json.dumps(
            {"format": "contactmatch-datakey", "version": 1, "keys": {"a": "!!"}, "primary": "a"}
        ),
        json.dumps(
            {"format": "contactmatch-datakey", "version": 1, "keys": {"a": "AAAA"}, "primary": "a"}
        ),
        json.dumps([1, 2]),
    ],
)
def test_load_rejects_malformed_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(InvalidKey):
        DataKey.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidKey):
        DataKey.load(tmp_path / "nope.key")


def test_repr_hides_key_material() -> None:
    secret = bytes(range(32))
    k = DataKey({"dk1": secret}, "dk1")
    assert secret.hex() not in repr(k)
    assert repr(secret) not in repr(k)
    assert "dk1" in repr(k)
    s = k.seal_number(NUMBER, "alice", TOK)
    assert repr(s.number_ct) not in repr(s)
    assert repr(s.wrapped_key) not in repr(s)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_key_material_refuses_pickling(protocol: int) -> None:
    k = DataKey.generate("dk1").rotated("dk2")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(k, protocol=protocol)
    for inner in k._keys.values():  # the per-id holders too, should one be reached directly
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(inner, protocol=protocol)


def test_key_material_refuses_copying() -> None:
    k = DataKey.generate("dk1")
    with pytest.raises(TypeError):
        copy.copy(k)
    with pytest.raises(TypeError):
        copy.deepcopy(k)


def test_sealed_number_unpacks_and_names_its_parts() -> None:
    s = DataKey.generate().seal_number(NUMBER, "alice", TOK)
    ct, wk = s
    assert isinstance(s, SealedNumber)
    assert (ct, wk) == (s.number_ct, s.wrapped_key)


def test_bad_key_material() -> None:
    with pytest.raises(InvalidKey):
        DataKey({"dk1": b"short"}, "dk1")
    with pytest.raises(InvalidKey):
        DataKey({"dk1": bytes(32)}, "dk2")
    with pytest.raises(InvalidKey):
        DataKey({"bad id!": bytes(32)}, "bad id!")
