"""Scheme = token function × membership method, found by name through a registry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from contactmatch._json import load_json
from contactmatch.errors import MalformedMessage, UnknownScheme
from contactmatch.schemes.leakage import Leakage, compose
from contactmatch.schemes.tokens import TOKEN_TRAITS

__all__ = [
    "METHODS",
    "TOKEN_FUNCTIONS",
    "MatchResult",
    "Scheme",
    "ServerInfo",
    "get_scheme",
    "leakage_table",
    "scheme_names",
]

TOKEN_FUNCTIONS = ("plain", "sha256", "hmac", "oprf", "voprf")
METHODS = ("lookup", "bucket", "filter")


@dataclass(frozen=True, slots=True)
class Scheme:
    """One (token function, membership method) pair, e.g. ``oprf+filter``."""

    token: str
    method: str

    @property
    def name(self) -> str:
        return f"{self.token}+{self.method}"

    @property
    def leakage(self) -> Leakage:
        """What the server, the client and a database thief learn; what enumeration costs."""
        return compose(TOKEN_TRAITS[self.token], self.method)

    @property
    def interactive(self) -> bool:
        """Whether tokens need a server round (keyed token functions)."""
        return TOKEN_TRAITS[self.token].keyed


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


_REGISTRY: dict[str, Scheme] = {f"{t}+{m}": Scheme(t, m) for t in TOKEN_FUNCTIONS for m in METHODS}


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
