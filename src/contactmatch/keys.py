"""The server's OPRF keys: generate, derive, save/load (0600, versioned), key ids and rotation.

A :class:`ServerKey` never shows its private scalar in ``repr``, ``str``, logs or pickles. Its
*key id* (a short hash of the mode and public key) travels with every evaluation so that clients
notice a rotation and tell tokens made under different keys apart. A :class:`KeyRing` serves the
current key and, for a grace period, previous ones until the operator retires them.

Key file format (version 1), a small JSON object written with mode 0600::

    {"format": "contactmatch-oprf-key", "version": 1, "suite": "ristretto255-SHA512",
     "mode": "voprf", "key_id": "...", "public_key": "<hex>", "private_key": "<hex>"}

Loading refuses (``InvalidKey``) a file that group or others can read or write, like OpenSSH
does with private keys: a key that others could read must be treated as leaked, not used.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from contactmatch._secretfile import read_secret_file, write_secret_file
from contactmatch.errors import InvalidInput, InvalidKey, UnknownKeyId
from contactmatch.hazmat import oprf as _oprf
from contactmatch.hazmat import ristretto as _r255
from contactmatch.hazmat.oprf import Mode

__all__ = ["KEY_FILE_VERSION", "KeyRing", "ServerKey", "key_id_for"]

KEY_FILE_FORMAT = "contactmatch-oprf-key"
KEY_FILE_VERSION = 1
_MAX_KEY_FILE = 64 * 1024
_KEY_ID_DOMAIN = b"contactmatch/key-id/v1\x00"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a symlink planted at the key path is refused


def key_id_for(public_key: bytes, mode: Mode) -> str:
    """The key id of a public key: 16 hex digits of SHA-256 over a domain tag, mode and key.

    The mode is included because the same scalar means different PRFs in different modes.
    """
    digest = hashlib.sha256(_KEY_ID_DOMAIN + bytes((Mode(mode),)) + public_key).hexdigest()
    return digest[:16]


class ServerKey:
    """One RFC 9497 ristretto255-SHA512 server key pair, bound to a protocol mode."""

    __slots__ = ("_key_id", "_mode", "_pk", "_sk")

    def __init__(self, private_key: bytes, mode: Mode = Mode.VOPRF) -> None:
        """Wrap a serialized private scalar.

        Args:
            private_key: 32-byte canonical non-zero ristretto255 scalar.
            mode: the protocol mode the key serves (OPRF, VOPRF or POPRF).

        Raises:
            InvalidKey: the scalar is malformed, non-canonical or zero, or the mode is unknown.
        """
        try:
            self._mode = Mode(mode)
        except ValueError:
            raise InvalidKey("unknown OPRF mode") from None
        if not _r255.is_canonical_scalar(private_key):
            raise InvalidKey("the private key is not a canonical 32-byte ristretto255 scalar")
        if hmac.compare_digest(private_key, bytes(32)):
            raise InvalidKey("the private key is zero")
        self._sk = private_key
        self._pk = _r255.scalar_mult_base(private_key)
        self._key_id = key_id_for(self._pk, self._mode)

    @classmethod
    def generate(cls, mode: Mode = Mode.OPRF) -> ServerKey:
        """A fresh key from libsodium's CSPRNG.

        OPRF by default, like ``contactmatch keygen``: the default schemes (``oprf+filter``,
        ``oprf+bucket``) are OPRF ones, and a key must serve its schemes' mode.
        """
        return cls(_r255.random_scalar(), mode)

    @classmethod
    def derive(cls, seed: bytes, info: bytes, mode: Mode = Mode.VOPRF) -> ServerKey:
        """RFC 9497 DeriveKeyPair from a 32-byte secret seed and a public info string.

        Raises:
            InvalidInput: the seed is not 32 bytes or info is too long.
        """
        sk, _ = _oprf.derive_key_pair(seed, info, mode)
        return cls(sk, mode)

    @property
    def mode(self) -> Mode:
        """The protocol mode this key serves."""
        return self._mode

    @property
    def public_key(self) -> bytes:
        """The serialized public element ``pkS = skS * G`` (publish it; VOPRF clients pin it)."""
        return self._pk

    @property
    def key_id(self) -> str:
        """Short public identifier of this key (16 hex digits)."""
        return self._key_id

    def private_bytes(self) -> bytes:
        """The serialized private scalar: hazardous, for :mod:`contactmatch.hazmat` callers."""
        return self._sk

    def derive_secret(self, label: str) -> bytes:
        """A 32-byte secret for one purpose, derived from this key (HKDF-SHA256).

        One key file then serves every secret a server needs (HMAC tokens, seen-set
        fingerprints, HTTP token signing) without any of them revealing the key or each
        other: the label is HKDF's ``info``, so distinct labels give independent secrets.
        The derivation is fixed (no salt, info = the label's UTF-8 bytes): changing it would
        invalidate every token and fingerprint already derived, so tests pin its outputs.

        Args:
            label: the purpose, versioned, e.g. ``"contactmatch/seen-set/v1"``.

        Raises:
            InvalidInput: the label is empty or not a str.
        """
        if not isinstance(label, str) or not label:
            raise InvalidInput("a derivation label must be a non-empty str")
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode("utf-8")
        ).derive(self._sk)

    def __repr__(self) -> str:
        return f"<ServerKey key_id={self._key_id} mode={self._mode.name}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerKey):
            return NotImplemented
        return self._mode == other._mode and hmac.compare_digest(self._sk, other._sk)

    def __hash__(self) -> int:
        return hash(self._key_id)

    def __reduce__(self) -> NoReturn:
        # Pickles end up in caches, queues and crash dumps; a key must go through save().
        raise TypeError("ServerKey cannot be pickled; use save() and load()")

    # --- files ---------------------------------------------------------------------------------

    def _document(self) -> bytes:
        doc = {
            "format": KEY_FILE_FORMAT,
            "version": KEY_FILE_VERSION,
            "suite": _oprf.SUITE_ID.decode(),
            "mode": self._mode.name.lower(),
            "key_id": self._key_id,
            "public_key": self._pk.hex(),
            "private_key": self._sk.hex(),
        }
        return (json.dumps(doc, indent=1) + "\n").encode()

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key to ``path`` with mode 0600, atomically.

        The file is created under a temporary name with ``O_CREAT | O_EXCL`` and mode 0600 (never
        briefly world-readable), synced, then moved into place: ``os.replace`` when
        ``overwrite``, else a hard link, which fails if ``path`` exists, so an existing key is
        never clobbered by a race.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is false.
            OSError: the directory is not writable.
        """
        write_secret_file(path, self._document(), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ServerKey:
        """Read a key file written by :meth:`save`.

        Raises:
            InvalidKey: the file is readable or writable by group/others, a symbolic link, not a
                regular file, too large, not a version-1 key file, or inconsistent.
            FileNotFoundError: no such file.
        """
        raw = read_secret_file(path)
        return cls._from_document(raw, str(Path(path)))

    @classmethod
    def _from_document(cls, raw: bytes, where: str) -> ServerKey:
        try:
            doc: Any = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            # from None: the decoder's exception holds the document, i.e. the key.
            raise InvalidKey(f"{where} is not a contactmatch key file") from None
        if not isinstance(doc, dict) or doc.get("format") != KEY_FILE_FORMAT:
            raise InvalidKey(f"{where} is not a contactmatch key file")
        if doc.get("version") != KEY_FILE_VERSION:
            raise InvalidKey(f"{where}: unsupported key file version")
        if doc.get("suite") != _oprf.SUITE_ID.decode():
            raise InvalidKey(f"{where}: unsupported ciphersuite")
        modes = {m.name.lower(): m for m in Mode}
        raw_mode = doc.get("mode")
        mode = modes.get(raw_mode) if isinstance(raw_mode, str) else None
        if mode is None:
            raise InvalidKey(f"{where}: unknown mode")
        try:
            sk = bytes.fromhex(doc["private_key"])
            pk = bytes.fromhex(doc["public_key"])
        except (KeyError, TypeError, ValueError):
            raise InvalidKey(f"{where}: malformed key material") from None
        key = cls(sk, mode)
        if not hmac.compare_digest(key.public_key, pk) or doc.get("key_id") != key.key_id:
            raise InvalidKey(f"{where}: public key or key id does not match the private key")
        return key


class KeyRing:
    """The keys a server serves: one current key plus previous keys kept for a grace period.

    Rotation: ``ring.rotate(ServerKey.generate())`` makes the new key current; the old one still
    evaluates requests that name it, so clients holding tokens under it keep working while they
    refresh. After the grace period (at least the clients' token-cache lifetime),
    ``ring.retire(old_id)`` stops serving it; requests naming it then raise ``UnknownKeyId``.
    Mutations replace the internal mapping in one assignment, so concurrent readers always see
    a consistent ring.
    """

    __slots__ = ("_current", "_keys")

    def __init__(self, current: ServerKey, previous: Iterable[ServerKey] = ()) -> None:
        """Serve ``current`` plus any ``previous`` keys.

        Raises:
            InvalidKey: the keys do not all share one mode.
        """
        keys = {current.key_id: current}
        for key in previous:
            if key.mode != current.mode:
                raise InvalidKey("all keys of a ring must serve the same mode")
            keys.setdefault(key.key_id, key)
        self._current = current
        self._keys = keys

    @property
    def current(self) -> ServerKey:
        """The key new evaluations use."""
        return self._current

    @property
    def mode(self) -> Mode:
        """The protocol mode of every key in the ring."""
        return self._current.mode

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of every served key, current first."""
        return tuple(self._keys)  # kept in order: current, then newest previous first

    def get(self, key_id: str | None = None) -> ServerKey:
        """The served key with this id (the current key for ``None``).

        Raises:
            UnknownKeyId: no served key has this id (never served, or retired).
        """
        if key_id is None:
            return self._current
        try:
            return self._keys[key_id]
        except (KeyError, TypeError):
            raise UnknownKeyId("this key id is not served (rotated out or unknown)") from None

    def public_keys(self) -> dict[str, bytes]:
        """``{key_id: public_key}`` of every served key: what the server publishes."""
        return {kid: key.public_key for kid, key in self._keys.items()}

    def rotate(self, new: ServerKey) -> str:
        """Make ``new`` the current key; the previous current key stays served.

        Returns:
            The id of the key that stopped being current (retire it after the grace period).

        Raises:
            InvalidKey: ``new`` serves another mode.
        """
        if new.mode != self.mode:
            raise InvalidKey("all keys of a ring must serve the same mode")
        old = self._current.key_id
        self._keys = {new.key_id: new, **{k: v for k, v in self._keys.items() if k != new.key_id}}
        self._current = new
        return old

    def retire(self, key_id: str) -> None:
        """Stop serving a previous key.

        Raises:
            UnknownKeyId: the id is not served.
            InvalidInput: it is the current key (rotate first).
        """
        self.get(key_id)
        if key_id == self._current.key_id:
            raise InvalidInput("cannot retire the current key; rotate to a new key first")
        self._keys = {k: v for k, v in self._keys.items() if k != key_id}

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[ServerKey]:
        return iter(tuple(self._keys.values()))

    def __repr__(self) -> str:
        return f"<KeyRing mode={self.mode.name} current={self._current.key_id} served={len(self)}>"
