"""Authentication of HTTP requests: a hook mapping a bearer token to a user id.

contactmatch does not own accounts: a messenger already authenticates its users (SMS
verification, sessions) and hands the HTTP app an :data:`Authenticator`. For demos and tests,
:class:`SignedTokens` issues stateless HMAC-SHA256 tokens whose secret can be derived from the
server key (:meth:`SignedTokens.from_server_key`), so no extra key file is needed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable
from typing import NoReturn

from contactmatch.errors import AuthenticationFailed, InvalidInput, InvalidKey
from contactmatch.keys import ServerKey
from contactmatch.service import NumberVerifier

__all__ = [
    "Authenticator",
    "NumberVerifier",
    "SignedTokens",
    "StaticToken",
    "derive_token_secret",
]

#: Maps a bearer token to the user id it authenticates; raises AuthenticationFailed otherwise.
Authenticator = Callable[[str], str]

_TOKEN_LABEL = b"contactmatch/http-token/v1"
_MIN_SECRET = 16
# User ids are short opaque strings; a longer "id" in a token is an attack, not a user.
_MAX_USER_ID = 255
_MAX_TOKEN = 512
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
# Canonical decimal seconds: no sign, leading zero, space or "_" (all of which int() takes).
_EXPIRY = re.compile(r"0|[1-9][0-9]{0,15}")
_MAX_EXPIRY = 10**16


def derive_token_secret(key: ServerKey, label: bytes | str = _TOKEN_LABEL) -> bytes:
    """A 32-byte token-signing secret derived from the server key (``ServerKey.derive_secret``).

    Args:
        key: the OPRF server key.
        label: the purpose (UTF-8 text, or its bytes), so distinct purposes (user tokens,
            admin tokens) get distinct secrets.

    Returns:
        The secret for :class:`SignedTokens`.

    Raises:
        InvalidInput: the label is empty or not UTF-8.
    """
    try:
        text = label.decode("utf-8") if isinstance(label, bytes) else label
    except UnicodeDecodeError:
        raise InvalidInput("a derivation label must be UTF-8 text") from None
    return key.derive_secret(text)


def _b64e(raw: bytes) -> str:
    """Unpadded base64url: the one spelling of ``raw`` that :func:`_b64d` accepts."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    """Decode unpadded base64url strictly: only the exact output of :func:`_b64e` decodes.

    The lenient decoder takes padding, skips characters outside the alphabet and ignores the
    unused low bits of the last character, so several strings meant the same bytes and one
    token had many spellings that all authenticated. Re-encoding and comparing leaves one.

    Raises:
        AuthenticationFailed: ``text`` is not the canonical encoding of any bytes.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise AuthenticationFailed("invalid token")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64e(raw) != text:  # the unused bits of the last character were not zero
        raise AuthenticationFailed("invalid token")
    return raw


class SignedTokens:
    """Stateless bearer tokens ``user.expiry.signature`` signed with HMAC-SHA256.

    ``user`` is the user id in unpadded base64url (so ids may hold dots or any character),
    ``expiry`` the Unix time in whole seconds after which the token is refused, ``signature``
    the base64url HMAC over the first two parts. An instance is an :data:`Authenticator`.

    Args:
        secret: the signing key, at least 16 bytes (see :func:`derive_token_secret`).
        ttl: lifetime of issued tokens in seconds.

    Raises:
        InvalidKey: the secret is too short.
        InvalidInput: the ttl is not positive.
    """

    def __init__(
        self,
        secret: bytes,
        ttl: float = 3600.0,
        *,
        _clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET:
            raise InvalidKey(f"a token secret must be at least {_MIN_SECRET} bytes")
        if not ttl > 0:
            raise InvalidInput("token ttl must be positive")
        self._secret = secret
        self.ttl = float(ttl)
        self._clock = _clock

    @classmethod
    def from_server_key(
        cls, key: ServerKey, ttl: float = 3600.0, *, label: bytes = _TOKEN_LABEL
    ) -> SignedTokens:
        """Tokens whose secret is derived from ``key``: the demo needs no extra key file."""
        return cls(derive_token_secret(key, label), ttl)

    def __repr__(self) -> str:
        return f"<SignedTokens ttl={self.ttl:g}s>"

    def __reduce__(self) -> NoReturn:
        # Like ServerKey: pickles end up in caches, queues and crash dumps, and this one would
        # carry the signing secret (copy.copy and copy.deepcopy go through here too).
        raise TypeError("SignedTokens holds a signing secret and cannot be pickled or copied")

    def _sign(self, payload: bytes) -> bytes:
        return hmac.digest(self._secret, _TOKEN_LABEL + b"\x00" + payload, hashlib.sha256)

    def issue(self, user_id: str, ttl: float | None = None) -> str:
        """Issue a token for ``user_id``.

        Args:
            user_id: the user the token authenticates.
            ttl: lifetime in seconds; the instance's ``ttl`` when omitted.

        Raises:
            InvalidInput: the user id is empty or longer than 255 bytes, or the expiry is
                not a time :meth:`verify` accepts.
        """
        try:
            raw = user_id.encode("utf-8") if isinstance(user_id, str) else b""
        except UnicodeEncodeError:  # a lone surrogate
            raw = b""
        if not 0 < len(raw) <= _MAX_USER_ID:
            raise InvalidInput("a user id must be 1..255 bytes of UTF-8")
        deadline = self._clock() + (self.ttl if ttl is None else float(ttl))
        if not (math.isfinite(deadline) and deadline < _MAX_EXPIRY):
            raise InvalidInput("token ttl is out of range")
        # A negative ttl issues an already expired token (tests); 0 is the earliest expiry.
        expiry = max(0, int(deadline))
        payload = f"{_b64e(raw)}.{expiry}".encode("ascii")
        return f"{payload.decode('ascii')}.{_b64e(self._sign(payload))}"

    def verify(self, token: str) -> str:
        """Return the user id a token authenticates.

        Raises:
            AuthenticationFailed: the token is malformed, forged or expired (the message says
                only "expired" for a genuine but stale token, so a client knows to renew).
        """
        if (
            not isinstance(token, str)
            or len(token) > _MAX_TOKEN
            or not token.isascii()
            or token.count(".") != 2
        ):
            raise AuthenticationFailed("invalid token")
        user_part, expiry_part, sig_part = token.split(".")
        # Every part must be spelled exactly as issue() spells it, so a token has one form:
        # the signature part is the attack surface (its spellings are not signed), the other
        # two are signed and checked anyway.
        if not _EXPIRY.fullmatch(expiry_part):
            raise AuthenticationFailed("invalid token")
        sig = _b64d(sig_part)
        expected = self._sign(f"{user_part}.{expiry_part}".encode("ascii"))
        if not hmac.compare_digest(sig, expected):
            raise AuthenticationFailed("invalid token")
        # The signature is good, so these parts are ours: decoding cannot fail on them
        # unless the secret leaked; stay opaque anyway.
        try:
            user_id = _b64d(user_part).decode("utf-8")
        except UnicodeDecodeError:
            raise AuthenticationFailed("invalid token") from None
        expiry = int(expiry_part)
        if self._clock() >= expiry:
            raise AuthenticationFailed("token expired")
        return user_id

    __call__ = verify


class StaticToken:
    """One operator token read from a file: the authenticator of ``/v1/stats`` and
    ``/metrics`` for ``serve --admin-token-file`` / ``--metrics-token-file``.

    An instance is an :data:`Authenticator`; every caller holding the token is ``operator``.
    The comparison is constant-time (``hmac.compare_digest`` over the token's SHA-256), so
    the time an answer takes says nothing about how much of a guess was right.

    Args:
        token: the secret, at least 16 characters (e.g. ``openssl rand -hex 32``).
        operator: the id the token authenticates (handlers see it as the caller).

    Raises:
        InvalidKey: the token is too short.
    """

    __slots__ = ("_digest", "operator")

    def __init__(self, token: str, *, operator: str = "operator") -> None:
        token = token.strip()
        if len(token) < _MIN_SECRET:
            raise InvalidKey(f"an operator token needs at least {_MIN_SECRET} characters")
        self._digest = hashlib.sha256(token.encode("utf-8")).digest()
        self.operator = operator

    @classmethod
    def from_file(cls, path: str, *, operator: str = "operator") -> StaticToken:
        """Read the token from ``path`` (mode 0600, not a symlink; surrounding space ignored).

        Raises:
            InvalidKey: the file is missing, unsafe, not UTF-8 text or holds too short a token.
        """
        from contactmatch._secretfile import read_secret_file

        try:
            raw = read_secret_file(path)
        except FileNotFoundError:
            raise InvalidKey(f"no token file {path!r}") from None
        except OSError as exc:
            raise InvalidKey(f"cannot read token file {path!r} ({exc.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidKey(f"token file {path!r} is not UTF-8 text") from None
        return cls(text, operator=operator)

    def __repr__(self) -> str:
        return f"<StaticToken operator={self.operator!r}>"

    def __call__(self, token: str) -> str:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        if not hmac.compare_digest(digest, self._digest):
            raise AuthenticationFailed("invalid token")
        return self.operator
