"""Numbers at rest: AES-256-GCM under a data key kept apart from the database.

A store holds a user's token and ``DataKey.encrypt(number, user_id)``; the data key lives in a
0600 key file (like the OPRF key), so a stolen database alone reveals no number, while key
rotation can still decrypt numbers to re-derive tokens. The user id is associated data: a
ciphertext moved to another user's row fails to decrypt.

Blob layout (version 1)::

    0x01 | len(key id) (1 byte) | key id (ASCII) | nonce (12 bytes) | ciphertext + tag (16)

The key id lets a key file hold several keys: new blobs use the primary, old blobs still
decrypt until every row is re-encrypted (``rotate`` does that) and the old key is retired.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from contactmatch._secretfile import read_secret_file, write_secret_file
from contactmatch.errors import InvalidKey, InvalidNumber, VerificationFailed

__all__ = ["BLOB_VERSION", "DataKey"]

BLOB_VERSION = 1
FILE_FORMAT = "contactmatch-datakey"
FILE_VERSION = 1
NONCE_LEN = 12
KEY_LEN = 32
_AAD_LABEL = b"contactmatch/number/v1\x00"
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


@dataclass(frozen=True, slots=True)
class _Key:
    key_id: str
    # Never in a repr: a debugger or a traceback's locals must not print key material.
    secret: bytes = field(repr=False)


class DataKey:
    """A set of AES-256-GCM keys, one primary, for encrypting E.164 numbers at rest."""

    __slots__ = ("_keys", "_primary")

    def __init__(self, keys: dict[str, bytes], primary: str) -> None:
        """Wrap key material; prefer :meth:`generate` and :meth:`load`.

        Raises:
            InvalidKey: a key is not 32 bytes, a key id is malformed, or no primary.
        """
        if primary not in keys:
            raise InvalidKey("the primary data key is not in the key set")
        for kid, secret in keys.items():
            if not _KEY_ID.fullmatch(kid):
                raise InvalidKey("malformed data key id")
            if not isinstance(secret, bytes) or len(secret) != KEY_LEN:
                raise InvalidKey("a data key must be 32 bytes")
        self._keys = {kid: _Key(kid, secret) for kid, secret in keys.items()}
        self._primary = primary

    def __repr__(self) -> str:
        return f"DataKey(primary={self._primary!r}, key_ids={sorted(self._keys)!r})"

    @property
    def primary_id(self) -> str:
        """Key id new ciphertexts are made under."""
        return self._primary

    @property
    def key_ids(self) -> list[str]:
        """Every key id this set can decrypt under."""
        return sorted(self._keys)

    @classmethod
    def generate(cls, key_id: str | None = None) -> DataKey:
        """A fresh random key (ids default to ``dk-`` and 8 random hex digits)."""
        kid = key_id or f"dk-{secrets.token_hex(4)}"
        return cls({kid: secrets.token_bytes(KEY_LEN)}, kid)

    def rotated(self, key_id: str | None = None) -> DataKey:
        """A copy with a new primary key; older keys stay for decryption."""
        kid = key_id or f"dk-{secrets.token_hex(4)}"
        if kid in self._keys:
            raise InvalidKey("that data key id already exists")
        keys = {k.key_id: k.secret for k in self._keys.values()}
        keys[kid] = secrets.token_bytes(KEY_LEN)
        return DataKey(keys, kid)

    def retired(self, key_id: str) -> DataKey:
        """A copy without ``key_id`` (after every blob under it was re-encrypted)."""
        if key_id == self._primary:
            raise InvalidKey("cannot retire the primary data key")
        keys = {k.key_id: k.secret for k in self._keys.values() if k.key_id != key_id}
        return DataKey(keys, self._primary)

    # files --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file with mode 0600, atomically (temp file then rename).

        Raises:
            InvalidKey: the file already exists (never overwrite a key by accident).
        """
        doc = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "primary": self._primary,
            "keys": {
                k.key_id: base64.b64encode(k.secret).decode("ascii") for k in self._keys.values()
            },
        }
        try:
            write_secret_file(path, json.dumps(doc).encode())
        except FileExistsError:
            raise InvalidKey(
                f"refusing to overwrite existing key file {Path(path).name!r}"
            ) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DataKey:
        """Read a key file written by :meth:`save`.

        Raises:
            InvalidKey: missing, readable by group/others, wrong format or version.
        """
        p = Path(path)
        try:
            raw = read_secret_file(p)
        except OSError as exc:
            raise InvalidKey(f"cannot read data key file {p.name!r}") from exc
        try:
            doc: Any = json.loads(raw)
        except ValueError:
            raise InvalidKey("malformed data key file") from None
        if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
            raise InvalidKey("not a contactmatch data key file")
        if doc.get("version") != FILE_VERSION:
            raise InvalidKey(f"unsupported data key file version {doc.get('version')!r}")
        try:
            keys = {
                str(k): base64.b64decode(v, validate=True) for k, v in dict(doc["keys"]).items()
            }
            primary = str(doc["primary"])
        except (ValueError, KeyError, TypeError, AttributeError):
            # The cause is dropped: a decoding error could quote key material.
            raise InvalidKey("malformed data key file") from None
        return cls(keys, primary)

    # encryption ---------------------------------------------------------------------------

    def encrypt(self, number: str, user_id: str) -> bytes:
        """Encrypt an E.164 number for ``user_id`` under the primary key (random nonce).

        Raises:
            InvalidNumber: ``number`` is not E.164 (``+`` and 7-15 digits).
        """
        return self._encrypt_with_nonce(number, user_id, secrets.token_bytes(NONCE_LEN))

    def _encrypt_with_nonce(self, number: str, user_id: str, nonce: bytes) -> bytes:
        """Test hook: encrypt with a given nonce (vectors only; never reuse a nonce)."""
        if not isinstance(number, str) or not _E164.fullmatch(number):
            raise InvalidNumber("not_e164", number if isinstance(number, str) else None)
        if len(nonce) != NONCE_LEN:
            raise InvalidKey("nonce must be 12 bytes")
        key = self._keys[self._primary]
        header = _header(key.key_id)
        ct = AESGCM(key.secret).encrypt(nonce, number.encode("ascii"), _aad(header, user_id))
        return header + nonce + ct

    def decrypt(self, blob: bytes, user_id: str) -> str:
        """Decrypt a blob made by :meth:`encrypt` for the same ``user_id``.

        Raises:
            VerificationFailed: wrong user, unknown key id, tampered or malformed (opaque).
        """
        try:
            ver, n = blob[0], blob[1]
            kid = blob[2 : 2 + n].decode("ascii")
            header, body = blob[: 2 + n], blob[2 + n :]
            key = self._keys[kid]
            if ver != BLOB_VERSION or len(body) < NONCE_LEN + 16:
                raise VerificationFailed
            pt = AESGCM(key.secret).decrypt(
                body[:NONCE_LEN], body[NONCE_LEN:], _aad(header, user_id)
            )
            return pt.decode("ascii")
        except (IndexError, KeyError, UnicodeDecodeError, InvalidTag, TypeError):
            raise VerificationFailed from None

    def needs_reencrypt(self, blob: bytes) -> bool:
        """Whether ``blob`` was made under a key other than the primary."""
        try:
            n = blob[1]
            return blob[2 : 2 + n].decode("ascii") != self._primary
        except (IndexError, UnicodeDecodeError):
            return True


def _header(key_id: str) -> bytes:
    kid = key_id.encode("ascii")
    return bytes([BLOB_VERSION, len(kid)]) + kid


def _aad(header: bytes, user_id: str) -> bytes:
    # The header is authenticated too, so a blob cannot be relabelled to another key id.
    if not isinstance(user_id, str) or not user_id:
        raise InvalidKey("user id (associated data) must be a non-empty str")
    return _AAD_LABEL + header + b"\x00" + user_id.encode("utf-8")
