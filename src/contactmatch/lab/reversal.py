"""Hash reversal: what a thief does with unsalted SHA-256 tokens, run for real.

Many messengers ship ``sha256(number)`` as their "private" token. A numbering plan is small
(about 10^9 mobile numbers per country), so a thief holding such tokens (a leaked database,
or any client of ``sha256+filter``) hashes the whole plan and reads the numbers back.
:func:`reverse_sha256` does exactly that and times it; keyed tokens (HMAC, OPRF) yield nothing.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from contactmatch.errors import InvalidInput
from contactmatch.lab._sim import lab_key
from contactmatch.lab.plan import load_plan
from contactmatch.schemes.tokens import make_server_tokens

__all__ = ["ReversalReport", "reversal_trials", "reverse_sha256"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReversalReport:
    """Outcome of brute-forcing unsalted SHA-256 tokens over a numbering range."""

    tokens: int
    candidates: int
    seconds: float
    #: token -> the E.164 number behind it (the attack's loot; never print it unmasked).
    found: dict[bytes, str]

    def __repr__(self) -> str:
        return (
            f"ReversalReport(tokens={self.tokens}, candidates={self.candidates}, "
            f"found=<{len(self.found)}>, hashes_per_s={self.hashes_per_s:,.0f})"
        )

    @property
    def hashes_per_s(self) -> float:
        return self.candidates / self.seconds if self.seconds > 0 else math.inf

    def seconds_for(self, plan_size: int | None = None) -> float:
        """Extrapolated time for one core to hash a plan of ``plan_size`` numbers (default:
        the whole mobile range of the plan file, 10^9 for Iran)."""
        size = load_plan().mobile_numbers if plan_size is None else plan_size
        return size / self.hashes_per_s

    def as_dict(self) -> dict[str, Any]:
        """Counts and rates as JSON-ready values; the found numbers are left out on purpose."""
        rate = self.hashes_per_s
        return {
            "tokens": self.tokens,
            "found": len(self.found),
            "candidates": self.candidates,
            "seconds": self.seconds,
            "hashes_per_s": None if math.isinf(rate) else rate,
            "national_plan": load_plan().mobile_numbers,
            "national_plan_seconds": None if math.isinf(rate) else self.seconds_for(),
        }


def _suffix_block(start: int, stop: int, digits: int) -> list[bytes]:
    """The ``digits``-digit ASCII suffixes ``start`` .. ``stop - 1``, built once per block and
    reused for every prefix."""
    return [b"%0*d" % (digits, i) for i in range(start, stop)]


def reverse_sha256(
    tokens: Sequence[bytes],
    prefixes: Sequence[str],
    *,
    digits: int | None = None,
    block: int = 200_000,
    progress: Callable[[int], None] | None = None,
) -> ReversalReport:
    """Recover the numbers behind unsalted SHA-256 tokens by hashing a numbering range.

    Every number ``prefix + d`` for each prefix and each ``digits``-digit ``d`` is hashed and
    tested against the token set: what a thief does with a leaked ``sha256`` database (or any
    client with a ``sha256+filter``). Keyed tokens (HMAC, OPRF) yield nothing, because
    without the key the candidates' tokens cannot be computed.

    Args:
        tokens: the stolen tokens.
        prefixes: E.164 prefixes (``+`` and digits) of the range, e.g. ``["+98912"]``.
        digits: digits after each prefix (10^digits candidates per prefix); default: the
            subscriber digits of the plan file (7 for Iran).
        block: candidates per batch (bounds memory; ``progress`` is called per batch).
        progress: called with the number of candidates hashed after each batch.

    Returns:
        A :class:`ReversalReport` with the found numbers and the hash rate.

    Raises:
        InvalidInput: a prefix is not ``+`` and digits, or the numbers would not be E.164.
    """
    if digits is None:
        digits = load_plan().subscriber_digits
    if not 1 <= digits <= 12:
        raise InvalidInput("digits must be between 1 and 12")
    raw_prefixes: list[bytes] = []
    for text in prefixes:
        digits_part = text[1:]
        ok = text.startswith("+") and digits_part.isascii() and digits_part.isdigit()
        if not ok or digits_part.startswith("0"):
            raise InvalidInput("prefixes must be '+' followed by digits (a country code)")
        if not 7 <= len(digits_part) + digits <= 15:
            raise InvalidInput("prefix and digits must make 7 to 15 digit E.164 numbers")
        raw_prefixes.append(text.encode("ascii"))
    targets = frozenset(tokens)
    found: dict[bytes, str] = {}
    sha = hashlib.sha256
    space = 10**digits
    hashed = 0
    t0 = time.perf_counter()
    for start in range(0, space, block):
        suffixes = _suffix_block(start, min(space, start + block), digits)
        for p in raw_prefixes:
            # The tight loop: one hash and one set probe per candidate, hits kept aside.
            hits = [s for s in suffixes if sha(p + s).digest() in targets]
            for s in hits:
                found[sha(p + s).digest()] = (p + s).decode("ascii")
            hashed += len(suffixes)
            if progress is not None:
                progress(len(suffixes))
    return ReversalReport(
        tokens=len(targets), candidates=hashed, seconds=time.perf_counter() - t0, found=found
    )


def reversal_trials(
    prefix: str,
    digits: int,
    *,
    seed: int = 0,
    victims: int = 100,
    token_functions: Sequence[str] = ("sha256", "hmac", "oprf"),
    progress: Callable[[str, int], None] | None = None,
) -> list[tuple[str, ReversalReport]]:
    """Steal ``victims`` random numbers' tokens under each token function and reverse them.

    The contrast is the point: every ``sha256`` token comes back, keyed ones (under a key
    derived from ``seed``) none.

    Args:
        prefix: E.164 prefix of the range the victims and the candidates come from.
        digits: digits after the prefix.
        seed: seeds the victims and the key.
        victims: numbers whose tokens are stolen.
        token_functions: token function names to attack, in order.
        progress: called with the token function's name and the candidates just hashed.

    Returns:
        ``(token function, report)`` pairs in the order of ``token_functions``.

    Raises:
        InvalidInput: the range is not E.164 (see :func:`reverse_sha256`).
    """
    rng = random.Random(seed)  # noqa: S311 - synthetic victims, not a secret
    numbers = [f"{prefix}{rng.randrange(10**digits):0{digits}d}" for _ in range(victims)]
    out: list[tuple[str, ReversalReport]] = []
    for name in token_functions:
        key = None if name == "sha256" else lab_key("oprf+lookup", seed)
        tokens = make_server_tokens(name, key).tokens(numbers)
        step = None if progress is None else _named(progress, name)
        out.append((name, reverse_sha256(tokens, [prefix], digits=digits, progress=step)))
    return out


def _named(progress: Callable[[str, int], None], name: str) -> Callable[[int], None]:
    def step(n: int) -> None:
        progress(name, n)

    return step
