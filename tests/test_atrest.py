"""Numbers at rest: AES-GCM blobs bound to the user, key files, data-key rotation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidKey, InvalidNumber, VerificationFailed

NUMBER = "+989121234567"


def test_roundtrip_and_random_nonces() -> None:
    k = DataKey.generate("dk1")
    a, b = k.encrypt(NUMBER, "alice"), k.encrypt(NUMBER, "alice")
    assert a != b  # a fresh nonce each time
    assert k.decrypt(a, "alice") == NUMBER
    assert k.decrypt(b, "alice") == NUMBER
    assert NUMBER.encode() not in a


def test_blob_layout_matches_an_independent_aesgcm() -> None:
    secret, nonce = bytes(range(32)), bytes(range(100, 112))
    k = DataKey({"dk1": secret}, "dk1")
    blob = k._encrypt_with_nonce(NUMBER, "alice", nonce)
    header = b"\x01\x03dk1"
    aad = b"contactmatch/number/v1\x00" + header + b"\x00alice"
    assert blob == header + nonce + AESGCM(secret).encrypt(nonce, NUMBER.encode(), aad)


def test_user_id_is_bound() -> None:
    k = DataKey.generate()
    blob = k.encrypt(NUMBER, "alice")
    with pytest.raises(VerificationFailed):
        k.decrypt(blob, "mallory")


def test_every_byte_is_authenticated() -> None:
    k = DataKey.generate("dk1")
    blob = k.encrypt(NUMBER, "alice")
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(VerificationFailed):
            k.decrypt(bytes(bad), "alice")
    for cut in (0, 1, 5, len(blob) - 1):
        with pytest.raises(VerificationFailed):
            k.decrypt(blob[:cut], "alice")


def test_other_key_cannot_decrypt() -> None:
    blob = DataKey.generate("dk1").encrypt(NUMBER, "alice")
    with pytest.raises(VerificationFailed):
        DataKey.generate("dk1").decrypt(blob, "alice")
    with pytest.raises(VerificationFailed):
        DataKey.generate("dk2").decrypt(blob, "alice")


def test_rotation_keeps_old_blobs_readable() -> None:
    k1 = DataKey.generate("dk1")
    old = k1.encrypt(NUMBER, "alice")
    k2 = k1.rotated("dk2")
    new = k2.encrypt(NUMBER, "alice")
    assert (k2.primary_id, k2.key_ids) == ("dk2", ["dk1", "dk2"])
    assert k2.decrypt(old, "alice") == NUMBER
    assert k2.needs_reencrypt(old)
    assert not k2.needs_reencrypt(new)
    k3 = k2.retired("dk1")
    assert k3.decrypt(new, "alice") == NUMBER
    with pytest.raises(VerificationFailed):
        k3.decrypt(old, "alice")
    with pytest.raises(InvalidKey):
        k2.retired("dk2")
    with pytest.raises(InvalidKey):
        k2.rotated("dk1")


@pytest.mark.parametrize("bad", ["989121234567", "+0123456", "+98 912 123", "", "+1234"])
def test_only_e164_is_encrypted_and_errors_mask_it(bad: str) -> None:
    with pytest.raises(InvalidNumber) as info:
        DataKey.generate().encrypt(bad, "alice")
    if len(bad) > 8:
        assert bad not in str(info.value)


def test_save_load_0600(tmp_path: Path) -> None:
    k = DataKey.generate("dk1").rotated("dk2")
    path = tmp_path / "data.key"
    k.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = DataKey.load(path)
    assert loaded.key_ids == ["dk1", "dk2"]
    assert loaded.decrypt(k.encrypt(NUMBER, "bob"), "bob") == NUMBER
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


def test_bad_key_material() -> None:
    with pytest.raises(InvalidKey):
        DataKey({"dk1": b"short"}, "dk1")
    with pytest.raises(InvalidKey):
        DataKey({"dk1": bytes(32)}, "dk2")
    with pytest.raises(InvalidKey):
        DataKey({"bad id!": bytes(32)}, "bad id!")
