"""Phone numbers to E.164: the one module that imports phonenumbers.

:func:`normalize` and :func:`normalize_many` return exactly what the reference returns:
``phonenumbers.parse(raw, region)`` → ``is_valid_number`` → (``number_type`` is MOBILE or
FIXED_LINE_OR_MOBILE, when ``mobile_only``) → ``format_number(..., E164)``. Rejects carry a
stable reason code (:data:`REASONS`). The bulk path first tries a precompiled replay of
phonenumbers' rules for the common shapes (:mod:`contactmatch._phone_fast`) and asks the
reference whenever that replay cannot decide; docs/phone.md explains why it stays exact.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import phonenumbers
from phonenumbers import (
    NumberParseException,
    PhoneMetadata,
    PhoneNumberDesc,
    PhoneNumberFormat,
    PhoneNumberType,
    ValidationResult,
)

from contactmatch._phone_fast import Desc, FastNormalizer, RegionRules
from contactmatch.errors import InvalidInput, InvalidNumber

__all__ = ["REASONS", "NormalizedBatch", "normalize", "normalize_many"]

REASONS: Final = MappingProxyType(
    {
        "empty": "the input is empty or only whitespace",
        "not_a_number": "no phone number could be read from the input",
        "missing_region": "a national number was given without a default region",
        "invalid_country_code": "the country calling code does not exist",
        "too_short": "too few digits (or a local number missing its area code)",
        "too_long": "too many digits",
        "invalid_length": "a length this country's numbers never have",
        "invalid_for_region": "a possible length, but no number range of the country matches",
        "not_mobile": "a valid number that is not a mobile number (mobile_only)",
    }
)
"""Every reason code an :class:`~contactmatch.errors.InvalidNumber` can carry, described."""

_MOBILE_TYPES: Final = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})

_PARSE_REASON: Final = {
    NumberParseException.INVALID_COUNTRY_CODE: "invalid_country_code",
    NumberParseException.NOT_A_NUMBER: "not_a_number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too_short",
    NumberParseException.TOO_SHORT_NSN: "too_short",
    NumberParseException.TOO_LONG: "too_long",
}

# The fast path (_phone_fast._LENGTH_REASON) maps the same results to the same codes.
_LENGTH_REASON: Final = {
    ValidationResult.IS_POSSIBLE: "invalid_for_region",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "too_short",
    ValidationResult.INVALID_COUNTRY_CODE: "invalid_country_code",
    ValidationResult.TOO_SHORT: "too_short",
    ValidationResult.INVALID_LENGTH: "invalid_length",
    ValidationResult.TOO_LONG: "too_long",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class NormalizedBatch:
    """Result of :func:`normalize_many`, aligned with its input.

    ``numbers[i]`` is the E.164 form of input ``i`` or None; ``rejected`` lists
    ``(i, reason_code)`` for every None, in input order.
    """

    numbers: list[str | None]
    rejected: list[tuple[int, str]]


def _parse_reason(exc: NumberParseException) -> str:
    # phonenumbers raises INVALID_COUNTRY_CODE both for "no region to read a national number
    # with" and for "+<unknown code>"; only the message tells them apart (a test pins it).
    if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE and "default region" in str(exc):
        return "missing_region"
    return _PARSE_REASON.get(exc.error_type, "not_a_number")


def _reference(raw: str, region: str | None, mobile_only: bool) -> str:
    """The plain phonenumbers route: E.164 (starts with "+") or a reason code."""
    if not raw.strip():
        return "empty"
    try:
        number = phonenumbers.parse(raw, region)
    except NumberParseException as exc:
        return _parse_reason(exc)
    if not phonenumbers.is_valid_number(number):
        return _LENGTH_REASON[phonenumbers.is_possible_number_with_reason(number)]
    if mobile_only and phonenumbers.number_type(number) not in _MOBILE_TYPES:
        return "not_mobile"
    return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))


def _desc(desc: PhoneNumberDesc | None) -> Desc | None:
    if desc is None or not desc.national_number_pattern:
        return None  # phonenumbers: a missing desc or an empty pattern never matches
    lengths = frozenset(desc.possible_length) if desc.possible_length else None
    return lengths, re.compile(desc.national_number_pattern)


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


@functools.cache
def _rules_for(region: str) -> RegionRules | None:
    md = PhoneMetadata.metadata_for_region(region, None)
    if (
        md is None
        or md.country_code is None
        or md.general_desc is None
        or not md.general_desc.possible_length
    ):
        return None  # the fast path needs what _test_number_length reads; else the reference
    general = md.general_desc
    exclusions = (
        md.premium_rate,
        md.toll_free,
        md.shared_cost,
        md.voip,
        md.personal_number,
        md.pager,
        md.uan,
        md.voicemail,
    )
    return RegionRules(
        region=region,
        country_code=int(md.country_code),
        cc_str=str(md.country_code),
        idd=_compile(md.international_prefix),
        national_prefix=_compile(md.national_prefix_for_parsing),
        transform=md.national_prefix_transform_rule or None,
        general_pattern=_compile(general.national_number_pattern),
        general=_desc(general),
        possible_lengths=tuple(general.possible_length),
        local_lengths=frozenset(general.possible_length_local_only or ()),
        exclusions=tuple(d for d in map(_desc, exclusions) if d is not None),
        fixed=_desc(md.fixed_line),
        mobile=_desc(md.mobile),
        same_mobile_and_fixed=bool(md.same_mobile_and_fixed_line_pattern),
        leading_digits=_compile(md.leading_digits),
    )


_FAST: Final = FastNormalizer(
    _rules_for,
    {int(cc): tuple(regions) for cc, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()},
)


def _check_region(region: str | None) -> None:
    # phonenumbers silently treats an unknown (or lower-case) region as none at all, which
    # would turn a caller's typo into "missing_region" for every national number.
    if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
        # Shown only when it looks like a code ('ir', 'XX'): the HTTP API passes the client's
        # "region" field here, and a long one may be anything, a phone number included.
        looks_like_code = isinstance(region, str) and len(region) <= 3 and region.isalpha()
        shown = f" {region!r}" if looks_like_code and region.isascii() else ""
        raise InvalidInput(
            f"unknown region code{shown}: expected an upper-case ISO 3166-1 alpha-2 code "
            "that phonenumbers supports (e.g. 'IR'), or None for international numbers only"
        )


def _default_rules(region: str | None) -> tuple[bool, RegionRules | None]:
    """Validate ``region``; return whether the fast path may run, and the region's rules."""
    _check_region(region)
    if region is None:
        return True, None
    rules = _rules_for(region)
    # Without fast rules for the default region everything goes to the reference.
    return rules is not None, rules


def normalize(raw: str, region: str | None = None, *, mobile_only: bool = True) -> str:
    """Normalise one phone number to E.164, exactly as phonenumbers would.

    Args:
        raw: the number as written: national format of ``region``, ``+CC...``, ``00CC...``
            (the region's international prefix), ``tel:`` URIs, any separators, Persian,
            Arabic-Indic or full-width digits.
        region: default region (upper-case ISO 3166-1 alpha-2) for national formats, or None.
        mobile_only: reject valid numbers that are not MOBILE or FIXED_LINE_OR_MOBILE.

    Returns:
        The E.164 string, e.g. ``+989123456789``.

    Raises:
        InvalidNumber: the number is rejected; ``.reason`` is one of :data:`REASONS` and the
            message shows the input masked only.
        InvalidInput: ``region`` is not a region phonenumbers supports.
        TypeError: ``raw`` is not a str.
    """
    if not isinstance(raw, str):
        raise TypeError(f"raw must be a str, not {type(raw).__name__}")
    use_fast, default = _default_rules(region)
    out = _FAST(raw, default, mobile_only) if use_fast else None
    if out is None:
        out = _reference(raw, region, mobile_only)
    if out[0] != "+":
        raise InvalidNumber(out, raw)
    return out


def normalize_many(
    raws: Iterable[str], region: str | None = None, *, mobile_only: bool = True
) -> NormalizedBatch:
    """Normalise many phone numbers at once (phone books, registry imports).

    Same results as calling :func:`normalize` on each, several times faster: the common
    shapes are decided by precompiled phonenumbers rules, the rest by phonenumbers itself.

    Args:
        raws: the numbers as written (see :func:`normalize` for the accepted forms).
        region: default region for national formats, or None.
        mobile_only: reject valid numbers that are not MOBILE or FIXED_LINE_OR_MOBILE.

    Returns:
        A :class:`NormalizedBatch` aligned with ``raws``.

    Raises:
        InvalidInput: ``region`` is not a region phonenumbers supports.
        TypeError: an item of ``raws`` is not a str.
    """
    use_fast, default = _default_rules(region)
    fast = _FAST
    numbers: list[str | None] = []
    rejected: list[tuple[int, str]] = []
    append = numbers.append  # the loop runs millions of times on registry imports
    for i, raw in enumerate(raws):
        if not isinstance(raw, str):
            raise TypeError(f"item {i} of raws is a {type(raw).__name__}, not a str")
        out = fast(raw, default, mobile_only) if use_fast else None
        if out is None:
            out = _reference(raw, region, mobile_only)
        if out[0] == "+":
            append(out)
        else:
            append(None)
            rejected.append((i, out))
    return NormalizedBatch(numbers=numbers, rejected=rejected)
