"""Fast path of :func:`contactmatch.phone.normalize_many`: phonenumbers' own rules, precompiled.

``phonenumbers.parse`` → ``is_valid_number`` → ``number_type`` costs ~50 µs a number, mostly in
generality: extension and RFC 3966 handling, alpha numbers, regex look-ups by pattern string,
``PhoneNumber`` objects. This module replays only the steps that the common shapes go through
(optional ``+``/``tel:``, digits in four scripts, plain separators), against the same metadata
compiled once per region, and answers ``None`` ("undecided") for everything else so the caller
asks the reference. Each function names the phonenumbers (8.13 to 9.x) function it mirrors; the
property and per-region tests hold the two together.

It deliberately imports nothing from phonenumbers: :mod:`contactmatch.phone` hands it plain
:class:`RegionRules` built from ``PhoneMetadata``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Desc", "FastNormalizer", "RegionRules"]

# A PhoneNumberDesc reduced to what matching needs: the allowed lengths (None: any, as when
# phonenumbers finds the list empty) and the compiled national_number_pattern.
Desc = tuple[frozenset[int] | None, re.Pattern[str]]

# Results of _classify, coarser than PhoneNumberType: all that normalisation needs to know.
_UNKNOWN, _OTHER, _FIXED, _MOBILE = 0, 1, 2, 3  # _MOBILE covers FIXED_LINE_OR_MOBILE too

# Results of _test_number_length (phonenumbers.ValidationResult, minus INVALID_COUNTRY_CODE).
_POSSIBLE, _LOCAL_ONLY, _TOO_SHORT, _TOO_LONG, _INVALID_LENGTH = range(5)
_LENGTH_REASON = {
    _POSSIBLE: "invalid_for_region",  # a possible length, but no pattern of the region matches
    _LOCAL_ONLY: "too_short",  # a subscriber number without its area code
    _TOO_SHORT: "too_short",
    _TOO_LONG: "too_long",
    _INVALID_LENGTH: "invalid_length",
}

_MIN_DIGITS = 5  # shorter inputs meet parse's short-number special cases: leave them to it
_MAX_INPUT = 250  # phonenumbers._MAX_INPUT_STRING_LENGTH
_MAX_NSN = 17  # phonenumbers._MAX_LENGTH_FOR_NSN


def _build_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    # The digit scripts phone books actually use; any other Unicode digit stays untranslated,
    # fails _SHAPE and goes to the reference (which accepts every Nd digit).
    for zero in ("\u06f0", "\u0660", "\uff10"):  # Persian, Arabic-Indic, full-width
        for i in range(10):
            table[ord(zero) + i] = str(i)
    # Only characters of phonenumbers' _VALID_PUNCTUATION that are neither letters (its
    # trailing-junk rule keeps those) nor extension markers (tildes, 'x'): deleting them
    # anywhere is then exactly what parse does (skip before, normalise inside, strip after).
    separators = (
        " \u00a0-.()/[]\u00ad\u200b\u2060\u3000\u2212"
        "\u2010\u2011\u2012\u2013\u2014\u2015\uff08\uff09\uff0d\uff0e\uff0f\uff3b\uff3d"
    )
    for ch in separators:
        table[ord(ch)] = None
    table[ord("\uff0b")] = "+"  # full-width plus, one of phonenumbers' _PLUS_CHARS
    return table


_TABLE = _build_table()
_SHAPE = re.compile(rf"\+?[0-9]{{{_MIN_DIGITS},}}")  # [0-9], not \d: str \d is any Nd digit


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionRules:
    """One region's PhoneMetadata, reduced and precompiled for the fast path."""

    region: str
    country_code: int
    cc_str: str
    idd: re.Pattern[str] | None  # international_prefix
    national_prefix: re.Pattern[str] | None  # national_prefix_for_parsing
    transform: str | None  # national_prefix_transform_rule, already in Python \1 syntax
    general_pattern: re.Pattern[str] | None  # general_desc.national_number_pattern
    general: Desc | None
    possible_lengths: tuple[int, ...]  # general_desc.possible_length, sorted
    local_lengths: frozenset[int]  # general_desc.possible_length_local_only
    exclusions: tuple[Desc, ...]  # premium .. voicemail, in _number_type_helper's order
    fixed: Desc | None
    mobile: Desc | None
    same_mobile_and_fixed: bool
    leading_digits: re.Pattern[str] | None


def _matches(nsn: str, desc: Desc) -> bool:
    # phonenumbers._is_number_matching_desc
    lengths, pattern = desc
    if lengths is not None and len(nsn) not in lengths:
        return False
    return pattern.fullmatch(nsn) is not None


def _classify(nsn: str, r: RegionRules) -> int:
    # phonenumbers._number_type_helper, folded to the four outcomes normalisation needs;
    # _matches is inlined for the general and exclusion checks (the hot loop of bulk imports).
    n = len(nsn)
    if r.general is None:
        return _UNKNOWN
    lengths, pattern = r.general
    if (lengths is not None and n not in lengths) or pattern.fullmatch(nsn) is None:
        return _UNKNOWN
    for lengths, pattern in r.exclusions:
        if (lengths is None or n in lengths) and pattern.fullmatch(nsn) is not None:
            return _OTHER
    if r.fixed is not None and _matches(nsn, r.fixed):
        if r.same_mobile_and_fixed or (r.mobile is not None and _matches(nsn, r.mobile)):
            return _MOBILE
        return _FIXED
    if not r.same_mobile_and_fixed and r.mobile is not None and _matches(nsn, r.mobile):
        return _MOBILE
    return _UNKNOWN


def _test_number_length(nsn: str, r: RegionRules) -> int:
    # phonenumbers._test_number_length with numtype UNKNOWN (the general description).
    n = len(nsn)
    if n in r.local_lengths:
        return _LOCAL_ONLY
    lengths = r.possible_lengths
    if lengths[0] == n:
        return _POSSIBLE
    if lengths[0] > n:
        return _TOO_SHORT
    if lengths[-1] < n:
        return _TOO_LONG
    return _POSSIBLE if n in lengths[1:] else _INVALID_LENGTH


def _general_match(nsn: str, r: RegionRules) -> bool:
    # phonenumbers._match_national_number(nsn, general_desc): the pattern only, no lengths.
    return r.general_pattern is not None and r.general_pattern.fullmatch(nsn) is not None


def _strip_national_prefix(number: str, r: RegionRules) -> str | None:
    # phonenumbers._maybe_strip_national_prefix_carrier_code (the carrier code is not needed).
    if not number or r.national_prefix is None:
        return number
    m = r.national_prefix.match(number)
    if m is None:
        return number
    viable = _general_match(number, r)
    groups = m.groups()
    if not r.transform or (groups and groups[-1] is None):
        stripped = number[m.end() :]
    elif not groups:
        return None  # phonenumbers itself fails here (IndexError): let the reference say so
    else:
        stripped = r.national_prefix.sub(r.transform, number, count=1)
    if viable and not _general_match(stripped, r):
        return number
    return stripped


class FastNormalizer:
    """Normalises the common shapes exactly as the reference would, or says it cannot.

    Args:
        rules_for: region code -> its :class:`RegionRules`, or None when phonenumbers has no
            metadata for it (the caller caches).
        regions_for_cc: country calling code -> its region codes, main region first
            (``COUNTRY_CODE_TO_REGION_CODE``).
    """

    __slots__ = ("_cc_by_prefix", "_regions_for_cc", "_rules_for")

    def __init__(
        self,
        rules_for: Callable[[str], RegionRules | None],
        regions_for_cc: Mapping[int, tuple[str, ...]],
    ) -> None:
        self._rules_for = rules_for
        self._regions_for_cc = regions_for_cc
        self._cc_by_prefix = {str(cc): cc for cc in regions_for_cc}

    def _split_cc(self, digits: str) -> tuple[int, str]:
        # phonenumbers._extract_country_code: the shortest prefix that is a known code.
        if digits[0] == "0":
            return 0, digits
        for i in (1, 2, 3):
            cc = self._cc_by_prefix.get(digits[:i])
            if cc is not None:
                return cc, digits[i:]
        return 0, digits

    def _main_rules(self, cc: int) -> RegionRules | None:
        main = self._regions_for_cc[cc][0]
        # Non-geographic codes (+800, +882...) use calling-code metadata: the reference's job.
        return None if main == "001" else self._rules_for(main)

    def __call__(self, raw: str, default: RegionRules | None, mobile_only: bool) -> str | None:
        """Normalise one number: E.164 (starts with "+"), a reason code, or None if undecided.

        Args:
            raw: the number as written; the caller has already answered ``empty``.
            default: rules of the default region, or None when no region was given.
            mobile_only: reject valid numbers whose type is not (fixed line or) mobile.
        """
        if len(raw) > _MAX_INPUT:
            return None
        s = raw.strip()
        if s.startswith(("tel:", "TEL:")):
            # parse skips everything before the first digit or plus; with no ';' left (which
            # _SHAPE guarantees) there is no phone-context or isdn-subaddress to honour.
            s = s[4:]
        s = s.translate(_TABLE)
        if _SHAPE.fullmatch(s) is None:
            return None

        # phonenumbers._maybe_extract_country_code
        if s[0] == "+":
            cc, national = self._split_cc(s[1:])
            if cc == 0:
                return None  # parse retries without the plus: rare, leave it to the reference
            rules = self._main_rules(cc)
        elif default is None:
            return "missing_region"  # parse's _check_region_for_parsing
        else:
            idd = default.idd.match(s) if default.idd is not None else None
            # _parse_prefix_as_idd: an IDD followed by 0 is no IDD (codes never start with 0).
            if idd is not None and s[idd.end() : idd.end() + 1] != "0":
                rest = s[idd.end() :]
                if len(rest) <= 2:
                    return None  # TOO_SHORT_AFTER_IDD
                cc, national = self._split_cc(rest)
                if cc == 0:
                    return None
                rules = self._main_rules(cc)
            elif s.startswith(default.cc_str):
                return None  # maybe the country code without a plus: parse's heuristic decides
            else:
                cc, national, rules = default.country_code, s, default
        if rules is None or len(national) < 2:
            return None

        # parse: strip the national prefix only if what remains has a possible length.
        stripped = _strip_national_prefix(national, rules)
        if stripped is None:
            return None
        if stripped != national and _test_number_length(stripped, rules) not in (
            _TOO_SHORT,
            _LOCAL_ONLY,
            _INVALID_LENGTH,
        ):
            national = stripped
        if len(national) > _MAX_NSN:
            return None  # parse raises TOO_LONG; the reference maps it

        # is_valid_number: region_code_for_number, then _number_type_helper for that region.
        kind = _UNKNOWN
        regions = self._regions_for_cc[cc]
        if len(regions) == 1:
            kind = _classify(national, rules)
        else:
            for code in regions:
                candidate = self._rules_for(code)
                if candidate is None:
                    return None
                if candidate.leading_digits is not None:
                    if candidate.leading_digits.match(national):
                        kind = _classify(national, candidate)
                        break
                else:
                    kind = _classify(national, candidate)
                    if kind != _UNKNOWN:
                        break
        if kind == _UNKNOWN:
            # is_possible_number_with_reason judges by the main region of the code.
            main = self._main_rules(cc)
            if main is None:
                return None
            return _LENGTH_REASON[_test_number_length(national, main)]
        if mobile_only and kind != _MOBILE:
            return "not_mobile"
        return "+" + str(cc) + national
