"""ServerKey, key files, key ids and KeyRing rotation (``contactmatch keygen``: test_cli)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import stat
from pathlib import Path

import pytest

from contactmatch.errors import InvalidInput, InvalidKey, UnknownKeyId
from contactmatch.hazmat import ristretto as r255
from contactmatch.hazmat.oprf import Mode
from contactmatch.keys import KEY_FILE_VERSION, KeyRing, ServerKey, key_id_for

VECTORS = Path(__file__).resolve().parent / "vectors" / "rfc9497_ristretto255_sha512.json"


def _mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_gives_distinct_valid_keys() -> None:
    a, b = ServerKey.generate(), ServerKey.generate()
    assert a != b
    assert a.mode is Mode.OPRF  # the default, as for `contactmatch keygen`
    assert r255.is_valid_element(a.public_key)
    assert a.public_key == r255.scalar_mult_base(a.private_bytes())


@pytest.mark.parametrize("suite", json.loads(VECTORS.read_text())["suites"], ids=str)
def test_derive_matches_rfc_vectors(suite: dict[str, object]) -> None:
    mode = Mode(suite["mode"])
    key = ServerKey.derive(
        bytes.fromhex(str(suite["seed"])), bytes.fromhex(str(suite["keyInfo"])), mode
    )
    assert key.private_bytes().hex() == suite["skSm"]
    assert key == ServerKey(bytes.fromhex(str(suite["skSm"])), mode)


def test_key_id_is_short_stable_and_mode_bound() -> None:
    key = ServerKey.generate(Mode.VOPRF)
    assert len(key.key_id) == 16
    int(key.key_id, 16)
    assert key.key_id == key_id_for(key.public_key, Mode.VOPRF)
    same_scalar_other_mode = ServerKey(key.private_bytes(), Mode.OPRF)
    assert same_scalar_other_mode.key_id != key.key_id
    assert same_scalar_other_mode != key


def test_key_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    key = ServerKey.generate()
    secret = key.private_bytes().hex()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("key %s %r", key, key)
    for shown in (repr(key), str(key), f"{key}", caplog.text, repr(KeyRing(key))):
        assert secret not in shown
        assert key.key_id in shown
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_save_load_round_trip_with_0600(tmp_path: Path) -> None:
    key = ServerKey.generate()
    path = tmp_path / "server.key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the file's mode
    try:
        key.save(path)
    finally:
        os.umask(old_umask)
    assert _mode_of(path) == 0o600
    assert ServerKey.load(path) == key
    doc = json.loads(path.read_text())
    assert doc["version"] == KEY_FILE_VERSION
    assert doc["key_id"] == key.key_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]  # no temp files left


def test_save_refuses_to_clobber_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    first, second = ServerKey.generate(), ServerKey.generate()
    first.save(path)
    with pytest.raises(FileExistsError):
        second.save(path)
    assert ServerKey.load(path) == first
    second.save(path, overwrite=True)
    assert ServerKey.load(path) == second
    assert _mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o666])
def test_load_refuses_open_permissions(tmp_path: Path, mode: int) -> None:
    key = ServerKey.generate()
    path = tmp_path / "server.key"
    key.save(path)
    path.chmod(mode)
    with pytest.raises(InvalidKey, match="chmod 600") as info:
        ServerKey.load(path)
    assert key.private_bytes().hex() not in str(info.value)
    path.chmod(0o400)  # stricter than 0600 is fine
    assert ServerKey.load(path) == key


def test_load_refuses_symlinks_and_non_files(tmp_path: Path) -> None:
    key = ServerKey.generate()
    real = tmp_path / "real.key"
    key.save(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(InvalidKey):
        ServerKey.load(link)
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(InvalidKey):
        ServerKey.load(tmp_path / "dir")
    with pytest.raises(FileNotFoundError):
        ServerKey.load(tmp_path / "missing.key")


def _write(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _doc(key: ServerKey, **changes: object) -> bytes:
    doc = {
        "format": "contactmatch-oprf-key",
        "version": 1,
        "suite": "ristretto255-SHA512",
        "mode": key.mode.name.lower(),
        "key_id": key.key_id,
        "public_key": key.public_key.hex(),
        "private_key": key.private_bytes().hex(),
    }
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_hand_written_valid_document_loads(tmp_path: Path) -> None:
    key = ServerKey.generate(Mode.OPRF)
    assert ServerKey.load(_write(tmp_path / "k", _doc(key))) == key


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 2},
        {"version": None},
        {"format": "something-else"},
        {"suite": "P256-SHA256"},
        {"mode": "xoprf"},
        {"key_id": "0000000000000000"},
        {"public_key": r255.scalar_mult_base(r255.random_scalar()).hex()},
        {"private_key": "00" * 32},
        {"private_key": "ff" * 32},
        {"private_key": "zz" * 32},
        {"private_key": "ab" * 31},
        {"private_key": None},
        {"private_key": 5},
    ],
    ids=lambda c: "-".join(f"{k}={v}"[:24] for k, v in c.items()),
)
def test_load_rejects_bad_documents(tmp_path: Path, changes: dict[str, object]) -> None:
    key = ServerKey.generate()
    with pytest.raises(InvalidKey) as info:
        ServerKey.load(_write(tmp_path / "k", _doc(key, **changes)))
    assert key.private_bytes().hex() not in str(info.value)


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[]", b"\xff\xfe", b"{" * 10, b"x" * 70_000], ids=str
)
def test_load_rejects_garbage(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(InvalidKey) as info:
        ServerKey.load(_write(tmp_path / "k", data))
    assert info.value.__cause__ is None  # the decoder's error would carry the file's text


def test_keyring_rotation_and_retirement() -> None:
    a, b, c = (ServerKey.generate() for _ in range(3))
    ring = KeyRing(a)
    assert ring.get() is a
    assert ring.get(a.key_id) is a
    assert ring.rotate(b) == a.key_id
    assert ring.current is b
    assert ring.key_ids == (b.key_id, a.key_id)
    assert ring.public_keys() == {b.key_id: b.public_key, a.key_id: a.public_key}
    assert ring.rotate(c) == b.key_id
    assert len(ring) == 3
    assert [k.key_id for k in ring] == [c.key_id, b.key_id, a.key_id]
    ring.retire(a.key_id)
    assert a.key_id not in ring
    with pytest.raises(UnknownKeyId):
        ring.get(a.key_id)
    with pytest.raises(UnknownKeyId):
        ring.retire(a.key_id)
    with pytest.raises(InvalidInput):
        ring.retire(c.key_id)
    with pytest.raises(UnknownKeyId):
        ring.get("not-an-id")


def test_keyring_refuses_mixed_modes() -> None:
    voprf, oprf = ServerKey.generate(Mode.VOPRF), ServerKey.generate(Mode.OPRF)
    with pytest.raises(InvalidKey):
        KeyRing(voprf, [oprf])
    with pytest.raises(InvalidKey):
        KeyRing(voprf).rotate(oprf)


def test_keyring_previous_keys_are_served() -> None:
    current, previous = ServerKey.generate(), ServerKey.generate()
    ring = KeyRing(current, [previous])
    assert ring.key_ids == (current.key_id, previous.key_id)
    assert ring.get(previous.key_id) is previous


def test_a_key_file_with_a_non_string_mode_is_invalid(tmp_path: Path) -> None:
    import json as _json

    path = tmp_path / "k.key"
    ServerKey.generate().save(path)
    doc = _json.loads(path.read_text())
    doc["mode"] = ["oprf"]
    path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(_json.dumps(doc))
    with pytest.raises(InvalidKey):
        ServerKey.load(path)


# derive_secret replaced three hand-written HKDF derivations (schemes/factory.py's HMAC token
# key, service.py's seen-set key, server/auth.py's HTTP token secret). These values were
# computed by that 0.2 code for the key below; a change here invalidates every registered hmac
# token, every stored seen-set entry and every issued HTTP token.
_PINNED_KEY = ServerKey(bytes([7]) + bytes(31), Mode.OPRF)
PINNED_SECRETS = {
    "contactmatch/hmac-token/v1": (
        "379888045197043ba66c0285df39019516a29c5d852bf34f26d93f3ee4a4cee0"
    ),
    "contactmatch/seen-set/v1": (
        "63b035742c577e01e42c1c372b58ceccc24d7016714df5a6a9c30ed28bd748f9"
    ),
    "contactmatch/http-token/v1": (
        "02e6adccd239e598c838ee8e898b0e59ae8bf484fb3e2b1621599bebe560e059"
    ),
}


def _rfc5869(ikm: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 with no salt and 32 bytes out, written from RFC 5869 (not the library)."""
    import hashlib
    import hmac

    prk = hmac.digest(bytes(32), ikm, hashlib.sha256)
    return hmac.digest(prk, info + b"\x01", hashlib.sha256)


@pytest.mark.parametrize("label", sorted(PINNED_SECRETS))
def test_derive_secret_is_pinned(label: str) -> None:
    secret = _PINNED_KEY.derive_secret(label)
    assert secret.hex() == PINNED_SECRETS[label]
    assert secret == _rfc5869(_PINNED_KEY.private_bytes(), label.encode())


def test_every_derivation_goes_through_derive_secret() -> None:
    from contactmatch.schemes.tokens import HMAC_KEY_LABEL, hmac_key_from
    from contactmatch.server.auth import derive_token_secret
    from contactmatch.service._core import SEEN_SET_LABEL

    key = _PINNED_KEY
    assert hmac_key_from(key).hex() == PINNED_SECRETS[HMAC_KEY_LABEL]
    assert derive_token_secret(key).hex() == PINNED_SECRETS["contactmatch/http-token/v1"]
    assert derive_token_secret(key, b"contactmatch/admin/v1") == key.derive_secret(
        "contactmatch/admin/v1"
    )
    assert key.derive_secret(SEEN_SET_LABEL).hex() == PINNED_SECRETS[SEEN_SET_LABEL]


def test_derive_secret_separates_labels_and_keys() -> None:
    other = ServerKey.generate(Mode.OPRF)
    secrets = {_PINNED_KEY.derive_secret(label) for label in PINNED_SECRETS}
    assert len(secrets) == len(PINNED_SECRETS)
    assert other.derive_secret("contactmatch/seen-set/v1") not in secrets
    for bad in ("", b"contactmatch/seen-set/v1"):
        with pytest.raises(InvalidInput):
            _PINNED_KEY.derive_secret(bad)  # type: ignore[arg-type]
