"""Every region phonenumbers knows: its example numbers, in every written form, normalise as the
reference does, on both the single and the bulk path (and mostly on the fast path)."""

from __future__ import annotations

import phonenumbers
import pytest
from phonenumbers import PhoneMetadata, PhoneNumberFormat, PhoneNumberType

from contactmatch import phone
from contactmatch.errors import InvalidNumber
from contactmatch.phone import normalize, normalize_many
from tests.strategies import DIGIT_SCRIPTS, REGIONS, reference_e164, to_script

KINDS = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE)
FORMATS = (
    PhoneNumberFormat.E164,
    PhoneNumberFormat.INTERNATIONAL,
    PhoneNumberFormat.NATIONAL,
    PhoneNumberFormat.RFC3966,
)


def _forms(region: str, number: phonenumbers.PhoneNumber) -> list[tuple[str, bool]]:
    """Every written form of ``number``, each flagged True if it carries its country code."""
    forms = [
        (phonenumbers.format_number(number, fmt), fmt != PhoneNumberFormat.NATIONAL)
        for fmt in FORMATS
    ]
    md = PhoneMetadata.metadata_for_region(region)
    assert md is not None
    if md.international_prefix == "00":
        e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
        forms.append(("00" + e164[1:], False))  # only the region itself dials out with 00
    for script in DIGIT_SCRIPTS:
        if script != "ascii":
            forms += [(to_script(text, script), intl) for text, intl in forms[:3]]
    return forms


def _examples(region: str) -> list[tuple[PhoneNumberType, phonenumbers.PhoneNumber]]:
    found = [(kind, phonenumbers.example_number_for_type(region, kind)) for kind in KINDS]
    return [(kind, ex) for kind, ex in found if ex is not None]


def _expect(raw: str, region: str | None, mobile_only: bool) -> tuple[str | None, str | None]:
    number = reference_e164(raw, region, mobile_only)
    return number, (None if number is not None else phone._reference(raw, region, mobile_only))


@pytest.mark.parametrize("region", REGIONS)
def test_region_examples_match_the_reference(region: str) -> None:
    examples = _examples(region)
    assert examples or region == "TA", "every region but Tristan da Cunha has an example"
    cases: list[tuple[str, str | None]] = []
    for _, ex in examples:
        for raw, international in _forms(region, ex):
            cases.append((raw, region))
            if international:
                cases += [(raw, None), (raw, "IR" if region != "IR" else "US")]
    for mobile_only in (True, False):
        for default in {d for _, d in cases}:
            raws = [raw for raw, d in cases if d == default]
            batch = normalize_many(raws, default, mobile_only=mobile_only)
            reasons = dict(batch.rejected)
            for i, raw in enumerate(raws):
                number, reason = _expect(raw, default, mobile_only)
                assert batch.numbers[i] == number, (raw, default, mobile_only)
                assert reasons.get(i) == reason, (raw, default, mobile_only)
                if number is not None:
                    assert normalize(raw, default, mobile_only=mobile_only) == number
                else:
                    with pytest.raises(InvalidNumber) as info:
                        normalize(raw, default, mobile_only=mobile_only)
                    assert info.value.reason == reason


@pytest.mark.parametrize("region", REGIONS)
def test_region_examples_are_accepted_or_rejected_as_not_mobile(region: str) -> None:
    for kind, ex in _examples(region):
        e164 = phonenumbers.format_number(ex, PhoneNumberFormat.E164)
        national = phonenumbers.format_number(ex, PhoneNumberFormat.NATIONAL)
        # Example numbers are valid by construction: any type passes without mobile_only.
        assert normalize(e164, mobile_only=False) == e164
        assert normalize_many([e164], mobile_only=False).numbers == [e164]
        is_mobile = phonenumbers.number_type(ex) in (
            PhoneNumberType.MOBILE,
            PhoneNumberType.FIXED_LINE_OR_MOBILE,
        )
        if kind == PhoneNumberType.MOBILE:
            assert is_mobile
        if is_mobile:
            assert normalize(e164) == e164
        else:
            with pytest.raises(InvalidNumber) as info:
                normalize(e164)
            assert info.value.reason == "not_mobile"
            assert normalize_many([e164, national], region).rejected == [
                (0, "not_mobile"),
                (1, "not_mobile"),
            ]


@pytest.mark.parametrize("region", REGIONS)
def test_international_forms_take_the_fast_path(region: str) -> None:
    # The bulk path is only fast if it decides these itself; only non-geographic country
    # codes are meant for the reference.
    for _, ex in _examples(region):
        for raw, international in _forms(region, ex):
            if international:
                assert phone._FAST(raw, None, True) is not None, raw
