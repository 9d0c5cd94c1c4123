"""What each scheme lets each party learn, stated in code so docs and reports cannot drift.

A scheme is a token function × a membership method; its leakage is composed from what the
token function reveals (can a token be computed without the server? does the server see the
input?) and what the membership method sends (whole tokens, k-bit prefixes, or only hits).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Leakage", "MethodTraits", "TokenTraits", "compose"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenTraits:
    """The properties of a token function that decide what leaks."""

    #: Anyone can compute a token from a number (plain, sha256): offline enumeration possible.
    public: bool
    #: The server sees the client's numbers while computing tokens (hmac).
    server_sees_inputs: bool
    #: A stolen database (without key files) can be turned back into numbers.
    thief_reverses: str
    #: Each token costs one server evaluation (hmac, oprf): enumeration is rate-limited.
    keyed: bool
    #: Clients can verify that the server used the same key for everyone (voprf).
    verifiable: bool = False
    #: The token is the number itself (plain).
    clear: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodTraits:
    """What a membership method sends, which decides what it leaks (one flag is set)."""

    #: The client sends a token for every contact (lookup): the server sees the whole book.
    sends_every_token: bool = False
    #: The client sends a k-bit prefix per contact and matches whole buckets (bucket).
    sends_prefixes: bool = False
    #: The server publishes a filter; the client asks only about its hits (filter).
    publishes_filter: bool = False
    #: The client retrieves its hits' entries by PIR, in padded batches (pir).
    retrieves_privately: bool = False
    #: The filter alone decides; no second round, no user ids (localfilter).
    decides_locally: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Leakage:
    """Plain-language statement of a scheme's leakage (used in docs/schemes.md and audits)."""

    server_learns: str
    client_learns: str
    thief_learns: str
    enumeration_cost: str


_PIR_SERVER = (
    "how many PIR retrievals the client makes, padded to whole batches of 64 (not which "
    "entries, nor how many of them matched)"
)


def compose(token: TokenTraits, method: MethodTraits) -> Leakage:
    """Leakage of ``token`` combined with membership ``method`` (lookup, bucket, filter)."""
    if token.server_sees_inputs:
        server = "every contact number in the clear (it computes the keyed hash itself)"
    elif token.public:
        if method.sends_every_token and token.clear:
            server = "every contact number in the clear"
        elif method.sends_every_token:
            server = (
                "every contact's token; the tokens are unkeyed, so the server recovers every "
                "number of the phone book by hashing the numbering plan"
            )
        elif method.sends_prefixes:
            server = (
                "a k-bit prefix per contact; against the numbering plan that narrows each "
                "contact to 1 in 2^k candidates (the k-anonymity set)"
            )
        elif method.decides_locally:
            server = "nothing: the client sends no request"
        elif method.retrieves_privately:
            server = _PIR_SERVER
        else:
            server = "only the contacts that are registered (the filter hits it is asked about)"
    else:
        base = "how many new numbers the client evaluates (blinded: not which)"
        if method.sends_every_token:
            server = (
                base + "; then every contact's OPRF token, so which registered users are "
                "in the book, and by evaluating the numbering plan under its own key, "
                "in principle the unregistered contacts too"
            )
        elif method.sends_prefixes:
            server = base + "; a k-bit prefix of each contact's token"
        elif method.decides_locally:
            server = base + "; nothing else (there is no second round)"
        elif method.retrieves_privately:
            server = base + "; " + _PIR_SERVER
        else:
            server = base + "; which registered users are in the book (the hits it is asked about)"
    if token.server_sees_inputs and method.retrieves_privately:
        server += " (PIR then hides only which entries it retrieves)"
    if token.verifiable:
        server += "; it cannot single a client out with a key of its own (VOPRF proof)"

    if method.sends_every_token:
        client = "which of its contacts are registered, with their user ids; nothing else"
    elif method.sends_prefixes:
        client = (
            "its contacts' matches, plus the fingerprints of every registered user sharing a "
            "bucket with a contact"
            + (
                " (with public tokens, offline hashing of the bucket's numbering range reveals "
                "who they are)"
                if token.public
                else " (OPRF fingerprints: useless without server evaluations)"
            )
        )
    elif method.decides_locally:
        client = (
            "which of its contacts are registered (no user ids: the number is the id), with a "
            "false report at most 2^-20 per 10,000-contact sync, plus the whole published filter"
        ) + (
            ": with public tokens anyone can test every number of the numbering plan "
            "offline and list the registered population"
            if token.public
            else ": each membership test needs one rate-limited OPRF evaluation"
        )
    else:
        extra = (
            " and the sealed entries of each column it retrieves (unreadable without their tokens)"
            if method.retrieves_privately
            else ""
        )
        client = (
            "its contacts' matches, plus the whole published filter"
            + extra
            + (
                ": with public tokens anyone can test every number of the numbering plan "
                "offline and list the registered population"
                if token.public
                else ": each membership test needs one rate-limited OPRF evaluation"
            )
        )

    thief = token.thief_reverses
    if token.keyed:
        cost = (
            "one rate-limited server evaluation per candidate number; quotas bound the "
            "fraction of the registry a scraper can sweep per day"
        )
    elif method.sends_every_token:
        cost = "one server lookup per candidate; rate limits are the only barrier"
    else:
        cost = (
            "free and offline: hash the numbering plan (about 10^9 numbers per country) "
            "and test locally"
        )
    return Leakage(
        server_learns=server, client_learns=client, thief_learns=thief, enumeration_cost=cost
    )
