"""The registry of scheme names: token function × membership method, found by name.

This is the one module that knows what each name means. Everything else asks a
:class:`Scheme` (``scheme.interactive``, ``scheme.publishes_filter``, ...) or the objects
the names stand for (:mod:`contactmatch.schemes.tokens`, :mod:`contactmatch.schemes.methods`)
instead of comparing strings, so a new token function or method is added here, once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from contactmatch._json import load_json
from contactmatch.errors import MalformedMessage, UnknownScheme
from contactmatch.schemes.leakage import Leakage, MethodTraits, TokenTraits, compose

__all__ = [
    "METHODS",
    "METHOD_TRAITS",
    "TOKEN_FUNCTIONS",
    "TOKEN_TRAITS",
    "MatchResult",
    "MethodName",
    "Scheme",
    "ServerInfo",
    "TokenName",
    "get_scheme",
    "leakage_table",
    "scheme_names",
]

#: Names of the token functions, weakest first.
TokenName = Literal["plain", "sha256", "hmac", "oprf", "voprf"]
#: Names of the membership methods.
MethodName = Literal["lookup", "bucket", "filter", "localfilter", "pir"]

TOKEN_FUNCTIONS: Final[tuple[TokenName, ...]] = get_args(TokenName)
METHODS: Final[tuple[MethodName, ...]] = get_args(MethodName)

#: What each token function reveals (see :mod:`contactmatch.schemes.leakage`).
TOKEN_TRAITS: Final[dict[TokenName, TokenTraits]] = {
    "plain": TokenTraits(
        public=True,
        server_sees_inputs=False,
        keyed=False,
        clear=True,
        thief_reverses="every registered number, in the clear",
    ),
    "sha256": TokenTraits(
        public=True,
        server_sees_inputs=False,
        keyed=False,
        thief_reverses=(
            "every registered number: an unsalted hash of a ~10^9-number plan is reversed by "
            "brute force in minutes (see `contactmatch audit`)"
        ),
    ),
    "hmac": TokenTraits(
        public=False,
        server_sees_inputs=True,
        keyed=True,
        thief_reverses="nothing without the HMAC key file; everything with it",
    ),
    "oprf": TokenTraits(
        public=False,
        server_sees_inputs=False,
        keyed=True,
        thief_reverses="nothing without the OPRF key file; everything with it",
    ),
    "voprf": TokenTraits(
        public=False,
        server_sees_inputs=False,
        keyed=True,
        verifiable=True,
        thief_reverses="nothing without the OPRF key file; everything with it",
    ),
}

#: What each membership method sends (see :mod:`contactmatch.schemes.leakage`).
METHOD_TRAITS: Final[dict[MethodName, MethodTraits]] = {
    "lookup": MethodTraits(sends_every_token=True),
    "bucket": MethodTraits(sends_prefixes=True),
    "filter": MethodTraits(publishes_filter=True),
    "localfilter": MethodTraits(publishes_filter=True, decides_locally=True),
    "pir": MethodTraits(publishes_filter=True, retrieves_privately=True),
}


@dataclass(frozen=True, slots=True)
class Scheme:
    """One (token function, membership method) pair, e.g. ``oprf+filter``.

    Get one with :func:`get_scheme`; its properties answer what callers would otherwise
    decide by comparing names.
    """

    token: TokenName
    method: MethodName

    @property
    def name(self) -> str:
        return f"{self.token}+{self.method}"

    @property
    def leakage(self) -> Leakage:
        """What the server, the client and a database thief learn; what enumeration costs."""
        return compose(TOKEN_TRAITS[self.token], METHOD_TRAITS[self.method])

    @property
    def interactive(self) -> bool:
        """Whether tokens need a server round (keyed token functions)."""
        return TOKEN_TRAITS[self.token].keyed

    @property
    def oblivious(self) -> bool:
        """Whether the server keys tokens without seeing the numbers (OPRF, VOPRF): the
        only token functions whose tokens a client may hand the server (contact uploads)."""
        traits = TOKEN_TRAITS[self.token]
        return traits.keyed and not traits.server_sees_inputs

    @property
    def verifiable(self) -> bool:
        """Whether clients can check that everyone is served under one key (VOPRF)."""
        return TOKEN_TRAITS[self.token].verifiable

    @property
    def sends_every_token(self) -> bool:
        """Whether clients send a token per contact and the server matches (``lookup``)."""
        return METHOD_TRAITS[self.method].sends_every_token

    @property
    def publishes_filter(self) -> bool:
        """Whether clients download a filter and ask only about its hits (``filter``)."""
        return METHOD_TRAITS[self.method].publishes_filter

    @property
    def retrieves_privately(self) -> bool:
        """Whether clients retrieve their filter hits' entries by PIR (``pir``)."""
        return METHOD_TRAITS[self.method].retrieves_privately

    @property
    def decides_locally(self) -> bool:
        """Whether the published filter alone decides, with no match round (``localfilter``)."""
        return METHOD_TRAITS[self.method].decides_locally

    @property
    def uses_buckets(self) -> bool:
        """Whether clients send k-bit prefixes and match whole buckets (``bucket``)."""
        return METHOD_TRAITS[self.method].sends_prefixes


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerInfo:
    """What a server publishes about a scheme: never secret, fetched before discovery."""

    scheme: str
    key_id: str
    bits: int = 0
    public_key: bytes = b""
    filter_version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "scheme": self.scheme,
                "key_id": self.key_id,
                "bits": self.bits,
                "public_key": self.public_key.hex(),
                "filter_version": self.filter_version,
                "extra": self.extra,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> ServerInfo:
        try:
            # The strict loader: a hostile server's deep or huge JSON is a clean error here.
            d = load_json(data, error=MalformedMessage)
            info = cls(
                scheme=str(d["scheme"]),
                key_id=str(d["key_id"]),
                bits=int(d["bits"]),
                public_key=bytes.fromhex(d["public_key"]),
                filter_version=int(d["filter_version"]),
                extra=dict(d.get("extra", {})),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedMessage("server info does not decode") from exc
        if not 0 <= info.bits <= 32:
            raise MalformedMessage("server info: bits out of range")
        get_scheme(info.scheme)
        return info


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchResult:
    """The outcome of one discovery, on the client.

    ``matches`` maps each registered contact (E.164) to its user id; ``unregistered`` lists the
    contacts to invite. Both are computed on the client; ``unregistered`` is never sent.
    """

    matches: dict[str, str]
    unregistered: list[str]
    key_id: str = ""

    def __repr__(self) -> str:
        return (
            f"MatchResult(<{len(self.matches)} matches>, <{len(self.unregistered)} unregistered>)"
        )


_REGISTRY: Final[dict[str, Scheme]] = {
    f"{t}+{m}": Scheme(t, m) for t in TOKEN_FUNCTIONS for m in METHODS
}


def scheme_names() -> list[str]:
    """Every registered scheme name, token functions in order of strength."""
    return list(_REGISTRY)


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name`` (e.g. ``"oprf+filter"``).

    Raises:
        UnknownScheme: no such pair.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownScheme(
            f"unknown scheme {str(name)[:40]!r}; known: {', '.join(_REGISTRY)}"
        ) from None


def leakage_table() -> str:
    """The what-leaks table of every scheme as Markdown (docs/schemes.md embeds it verbatim)."""
    rows = [
        "| scheme | the server learns | the client learns | a database thief learns "
        "| enumerating the numbering plan costs |",
        "|---|---|---|---|---|",
    ]
    for name in scheme_names():
        leak = _REGISTRY[name].leakage
        rows.append(
            f"| `{name}` | {leak.server_learns} | {leak.client_learns} | {leak.thief_learns} "
            f"| {leak.enumeration_cost} |"
        )
    return "\n".join(rows) + "\n"
