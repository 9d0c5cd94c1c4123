"""Numbers at rest: a fresh key per registration, wrapped by a data key kept apart from the store.

Each registration draws a random 32-byte *user key*. The E.164 number is encrypted under it
(AES-256-GCM); the user key itself is stored *wrapped* (AES-256-GCM under the data key, which
lives in a 0600 key file like the OPRF key). The store keeps the two in different places: the
number ciphertext in the user's row, the wrapped key in a narrow table (or key) of its own that
is deleted with the account. That is crypto-shredding: once the wrapped key is gone, any copy
of the number ciphertext left in dead tuples, WAL segments or backups is undecryptable, even
by someone holding the data key. Keeping the wrapped keys narrow makes their own residue cheap
to remove (``contactmatch.maintenance.vacuum``).

Associated data binds each blob to where it belongs:

* the number ciphertext to the user id, the token the row holds and the blob version, so a
  ciphertext replayed into another user's row, or into the same row after the token changed,
  is refused; an older ciphertext of the same user was made under an older user key and fails
  against the current one;
* the wrapped key to the user id and its header (version and data key id).

Blob layouts (version 2; version 1 blobs, which had no per-user key, are refused)::

    number_ct   = 0x02 | nonce (12) | AES-256-GCM(user key, number) + tag (16)
    wrapped_key = 0x02 | len(key id) (1) | key id (ASCII) | nonce (12) | AES-256-GCM(data key,
                  user key) + tag (16)

The key id in the wrapped key lets a key file hold several data keys: new wrappings use the
primary, older ones still open until every row is re-sealed (``rotate`` does that) and the old
key is retired.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from contactmatch._secretfile import read_secret_file, write_secret_file
from contactmatch.errors import InvalidKey, InvalidNumber, VerificationFailed

__all__ = ["BLOB_VERSION", "DataKey", "SealedNumber"]

BLOB_VERSION = 2
FILE_FORMAT = "contactmatch-datakey"
FILE_VERSION = 1
NONCE_LEN = 12
TAG_LEN = 16
KEY_LEN = 32
_NUMBER_LABEL = b"contactmatch/number/v2\x00"
_WRAP_LABEL = b"contactmatch/user-key/v2\x00"
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_VERSION = bytes([BLOB_VERSION])


def _refuse_pickle(what: str) -> NoReturn:
    # Pickles end up in caches, queues and crash dumps; key material goes through save() only.
    raise TypeError(f"{what} cannot be pickled; use DataKey.save() and DataKey.load()")


@dataclass(frozen=True, slots=True)
class _Key:
    key_id: str
    # Never in a repr: a debugger or a traceback's locals must not print key material.
    secret: bytes = field(repr=False)

    def __reduce__(self) -> NoReturn:
        _refuse_pickle("a data key")


class SealedNumber(NamedTuple):
    """What :meth:`DataKey.seal_number` returns: the two blobs a store keeps apart."""

    #: The number under the user key; goes into the user's row.
    number_ct: bytes
    #: The user key under the data key; goes into the store's key table, deleted with the user.
    wrapped_key: bytes

    def __repr__(self) -> str:
        # Ciphertexts stay out of logs like tokens do.
        return f"SealedNumber(number_ct=<{len(self.number_ct)} bytes>, wrapped_key=<...>)"


class DataKey:
    """A set of AES-256-GCM data keys, one primary, that wrap per-user keys for numbers at rest.

    Refuses to be pickled or copied: a key leaves the process only through :meth:`save`.
    """

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

    def __reduce__(self) -> NoReturn:
        _refuse_pickle("DataKey")

    @property
    def primary_id(self) -> str:
        """Key id new wrappings are made under."""
        return self._primary

    @property
    def key_ids(self) -> list[str]:
        """Every key id this set can unwrap under."""
        return sorted(self._keys)

    @classmethod
    def generate(cls, key_id: str | None = None) -> DataKey:
        """A fresh random key (ids default to ``dk-`` and 8 random hex digits)."""
        kid = key_id or f"dk-{secrets.token_hex(4)}"
        return cls({kid: secrets.token_bytes(KEY_LEN)}, kid)

    def rotated(self, key_id: str | None = None) -> DataKey:
        """A copy with a new primary key; older keys stay for unwrapping."""
        kid = key_id or f"dk-{secrets.token_hex(4)}"
        if kid in self._keys:
            raise InvalidKey("that data key id already exists")
        keys = {k.key_id: k.secret for k in self._keys.values()}
        keys[kid] = secrets.token_bytes(KEY_LEN)
        return DataKey(keys, kid)

    def retired(self, key_id: str) -> DataKey:
        """A copy without ``key_id`` (after every wrapped key under it was re-sealed)."""
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

    # sealing ------------------------------------------------------------------------------

    def seal_number(self, number: str, user_id: str, token: bytes) -> SealedNumber:
        """Encrypt an E.164 number for the row ``(user_id, token)`` under a fresh user key.

        Every call draws a new user key and new nonces, so re-registering (or rotating)
        leaves the previous ciphertext unreadable once the previous wrapped key is gone.

        Returns:
            The number ciphertext and the wrapped user key; store both in one transaction.

        Raises:
            InvalidNumber: ``number`` is not E.164 (``+`` and 7-15 digits).
            InvalidKey: ``user_id`` or ``token`` is empty or of the wrong type.
        """
        return self._seal_with(
            number,
            user_id,
            token,
            user_key=secrets.token_bytes(KEY_LEN),
            number_nonce=secrets.token_bytes(NONCE_LEN),
            wrap_nonce=secrets.token_bytes(NONCE_LEN),
        )

    def _seal_with(
        self,
        number: str,
        user_id: str,
        token: bytes,
        *,
        user_key: bytes,
        number_nonce: bytes,
        wrap_nonce: bytes,
    ) -> SealedNumber:
        """Test hook: seal with given randomness (vectors only; never reuse a key or nonce)."""
        if not isinstance(number, str) or not _E164.fullmatch(number):
            raise InvalidNumber("not_e164", number if isinstance(number, str) else None)
        if len(user_key) != KEY_LEN or {len(number_nonce), len(wrap_nonce)} != {NONCE_LEN}:
            raise InvalidKey("a user key must be 32 bytes and a nonce 12")
        number_aad = _number_aad(user_id, token)
        header = _wrap_header(self._primary)
        key = self._keys[self._primary]
        ct = AESGCM(user_key).encrypt(number_nonce, number.encode("ascii"), number_aad)
        wrapped = AESGCM(key.secret).encrypt(wrap_nonce, user_key, _wrap_aad(header, user_id))
        return SealedNumber(
            number_ct=_VERSION + number_nonce + ct, wrapped_key=header + wrap_nonce + wrapped
        )

    def open_number(self, number_ct: bytes, wrapped_key: bytes, user_id: str, token: bytes) -> str:
        """Decrypt the number of the row ``(user_id, token)`` sealed by :meth:`seal_number`.

        Raises:
            VerificationFailed: the wrapped key or the ciphertext belongs to another user,
                another token or another registration, the data key id is unknown, a byte
                was changed, or a blob is malformed or of another version (opaque).
        """
        try:
            user_key = self._unwrap(wrapped_key, user_id)
            if len(number_ct) < 1 + NONCE_LEN + TAG_LEN:
                raise VerificationFailed
            if number_ct[0] != BLOB_VERSION:
                raise VerificationFailed(_version_message(number_ct[0]))
            nonce, body = number_ct[1 : 1 + NONCE_LEN], number_ct[1 + NONCE_LEN :]
            pt = AESGCM(user_key).decrypt(nonce, body, _number_aad(user_id, token))
            return pt.decode("ascii")
        except (IndexError, KeyError, UnicodeDecodeError, InvalidTag, TypeError, InvalidKey):
            raise VerificationFailed from None

    def _unwrap(self, wrapped_key: bytes, user_id: str) -> bytes:
        ver, n = wrapped_key[0], wrapped_key[1]
        if ver != BLOB_VERSION:
            raise VerificationFailed(_version_message(ver))
        header, body = wrapped_key[: 2 + n], wrapped_key[2 + n :]
        key = self._keys[header[2:].decode("ascii")]
        if len(body) != NONCE_LEN + KEY_LEN + TAG_LEN:
            raise VerificationFailed
        return AESGCM(key.secret).decrypt(
            body[:NONCE_LEN], body[NONCE_LEN:], _wrap_aad(header, user_id)
        )

    def needs_rewrap(self, wrapped_key: bytes) -> bool:
        """Whether ``wrapped_key`` was made under a data key other than the primary."""
        try:
            if wrapped_key[0] != BLOB_VERSION:
                return True
            n = wrapped_key[1]
            return wrapped_key[2 : 2 + n].decode("ascii") != self._primary
        except (IndexError, UnicodeDecodeError, TypeError):
            return True


def _version_message(version: int) -> str:
    if version == 1:
        return "at-rest blob version 1 (before per-user keys) is not supported; re-register"
    return "verification failed"


def _wrap_header(key_id: str) -> bytes:
    kid = key_id.encode("ascii")
    return bytes([BLOB_VERSION, len(kid)]) + kid


def _field(value: bytes) -> bytes:
    # Length-prefixed, so no two (user id, token) pairs concatenate to the same bytes.
    return len(value).to_bytes(2, "big") + value


def _wrap_aad(header: bytes, user_id: str) -> bytes:
    # The header is authenticated too, so a wrapped key cannot be relabelled to another key id.
    return _WRAP_LABEL + header + _field(_user_id_bytes(user_id))


def _number_aad(user_id: str, token: bytes) -> bytes:
    if not isinstance(token, bytes) or not token:
        raise InvalidKey("token (associated data) must be non-empty bytes")
    return _NUMBER_LABEL + _VERSION + _field(_user_id_bytes(user_id)) + _field(token)


def _user_id_bytes(user_id: str) -> bytes:
    if not isinstance(user_id, str) or not user_id:
        raise InvalidKey("user id (associated data) must be a non-empty str")
    return user_id.encode("utf-8")
