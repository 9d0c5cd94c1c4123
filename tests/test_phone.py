"""contactmatch.phone: normalisation, reason codes, masking, fast path against phonenumbers."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contactmatch
from contactmatch import phone
from contactmatch.errors import ContactMatchError, InvalidInput, InvalidNumber
from contactmatch.phone import REASONS, NormalizedBatch, normalize, normalize_many
from tests.strategies import (
    DIGIT_SCRIPTS,
    default_regions,
    phone_inputs,
    reference_e164,
    to_script,
)

# Shapes an Iranian phone book holds for +98 912 345 6789.
IR_MOBILE_FORMS = [
    "0912 345 6789",
    "09123456789",
    "0912-345-6789",
    "(0912) 345 6789",
    "0912.345.6789",
    "+98 912 345 6789",
    "+989123456789",
    "+98 (912) 345-6789",
    "(+98) 912 345 6789",
    "00989123456789",
    "0098 912 345 6789",
    "9123456789",
    "tel:+98-912-345-6789",
    "TEL:+98-912-345-6789",
    " \t0912 345 6789\n",
    "\uff0b98 912 345 6789",  # full-width plus
    "\u00a00912\u00a0345\u00a06789",
]


def _fast(raw: str, region: str | None, mobile_only: bool = True) -> str | None:
    rules = phone._rules_for(region) if region else None
    return phone._FAST(raw, rules, mobile_only)


@pytest.mark.parametrize("raw", IR_MOBILE_FORMS)
@pytest.mark.parametrize("script", sorted(DIGIT_SCRIPTS))
def test_ir_mobile_forms(raw: str, script: str) -> None:
    text = to_script(raw, script)
    assert normalize(text, "IR") == "+989123456789"
    assert normalize_many([text], "IR").numbers == ["+989123456789"]
    # These are the shapes the bulk path exists for: none may fall back to the reference.
    assert _fast(text, "IR") == "+989123456789"


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", "IR", "empty"),
        ("  \t ", "IR", "empty"),
        ("hello", "IR", "not_a_number"),
        ("0912 345 6789", None, "missing_region"),
        ("+999 123 4567", "IR", "invalid_country_code"),
        ("0098 ", "IR", "too_short"),
        ("+98 12345678", "IR", "too_short"),
        ("0912 345 67890", "IR", "too_long"),
        ("09123456789123456789", "IR", "too_long"),
        ("+98 123456789", "IR", "invalid_length"),
        ("0906 345 6789", "IR", "invalid_for_region"),
        ("021 2345 6789", "IR", "not_mobile"),
        ("+1 800 253 0000", None, "not_mobile"),
    ],
)
def test_reason_codes(raw: str, region: str | None, reason: str) -> None:
    assert reason in REASONS
    with pytest.raises(InvalidNumber) as info:
        normalize(raw, region)
    assert info.value.reason == reason
    batch = normalize_many(["+989123456789", raw], region)
    assert batch.numbers == ["+989123456789", None]
    assert batch.rejected == [(1, reason)]
    # Whichever path decides must give the same code as the reference.
    assert phone._reference(raw, region, True) == reason
    decided = _fast(raw, region)
    assert decided in (None, reason)


def test_reject_reasons_decided_on_the_fast_path_match_the_reference() -> None:
    # The common rejects (landlines, wrong ranges, wrong lengths) must not need phonenumbers.
    for raw, reason in [
        ("021 2345 6789", "not_mobile"),
        ("0906 345 6789", "invalid_for_region"),
        ("+98 123456789", "invalid_length"),
        ("+98 12345678", "too_short"),
        ("0912 345 67890", "too_long"),
    ]:
        assert _fast(raw, "IR") == reason == phone._reference(raw, "IR", True)
    assert _fast("0912 345 6789", None) == "missing_region"


def test_mobile_only_false_accepts_every_valid_type() -> None:
    assert normalize("021 2345 6789", "IR", mobile_only=False) == "+982123456789"
    assert normalize("+1 800 253 0000", mobile_only=False) == "+18002530000"
    batch = normalize_many(["021 2345 6789", "0906 345 6789"], "IR", mobile_only=False)
    assert batch.numbers == ["+982123456789", None]
    assert batch.rejected == [(1, "invalid_for_region")]


def test_invalid_number_is_a_value_error_and_a_contactmatch_error() -> None:
    with pytest.raises(ValueError, match="not_mobile") as info:
        normalize("021 2345 6789", "IR")
    assert isinstance(info.value, InvalidNumber)
    assert isinstance(info.value, ContactMatchError)


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("+98 21 2345 6789", None),  # not_mobile
        ("0906 345 6789", "IR"),  # invalid_for_region
        ("0912 345 6789", None),  # missing_region
        ("+999 123 4567 89", "IR"),  # invalid_country_code
        ("09123456789123456789", "IR"),  # too_long
        ("۰۲۱ ۲۳۴۵ ۶۷۸۹", "IR"),  # Persian digits
    ],
)
def test_error_messages_never_show_the_full_number(raw: str, region: str | None) -> None:
    with pytest.raises(InvalidNumber) as info:
        normalize(raw, region)
    err = info.value
    digits = "".join(ch for ch in raw if ch.isdigit())
    for text in (str(err), repr(err), *map(str, err.args)):
        assert raw not in text
        assert raw.replace(" ", "") not in text
        assert digits not in text
        assert "*" in text  # the masked form is shown instead
    # Pickling (process pools) must not carry the number either.
    clone = pickle.loads(pickle.dumps(err))
    assert clone.reason == err.reason
    assert digits not in str(clone)
    assert digits[-6:] not in pickle.dumps(err).decode("latin-1")


def test_missing_region_is_told_apart_from_an_unknown_country_code() -> None:
    # phonenumbers uses one error type for both; _parse_reason tells them apart by message.
    assert phone._reference("0912 345 6789", None, True) == "missing_region"
    assert phone._reference("+999 123 4567", None, True) == "invalid_country_code"
    assert phone._reference("+999 123 4567", "IR", True) == "invalid_country_code"


@pytest.mark.parametrize("region", ["ir", "XX", "ZZ", "001", ""])
def test_unknown_region_is_refused(region: str) -> None:
    with pytest.raises(InvalidInput, match="region"):
        normalize("+989123456789", region)
    with pytest.raises(InvalidInput, match="region"):
        normalize_many(["+989123456789"], region)


def test_non_str_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        normalize(9123456789, "IR")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1"):
        normalize_many(["09123456789", None], "IR")  # type: ignore[list-item]


def test_normalize_many_aligns_with_its_input() -> None:
    raws = ["0912 345 6789", "", "+44 7400 123456", "021 2345 6789", "0935 111 2233"]
    batch = normalize_many(iter(raws), "IR")
    assert isinstance(batch, NormalizedBatch)
    assert batch.numbers == ["+989123456789", None, "+447400123456", None, "+989351112233"]
    assert batch.rejected == [(1, "empty"), (3, "not_mobile")]
    assert normalize_many([], "IR") == NormalizedBatch(numbers=[], rejected=[])


def test_every_reason_code_is_documented() -> None:
    produced = set(phone._PARSE_REASON.values()) | set(phone._LENGTH_REASON.values())
    produced |= {"empty", "missing_region", "not_mobile"}
    assert produced == set(REASONS)


def _check_against_reference(raws: list[str], region: str | None, mobile_only: bool) -> None:
    batch = normalize_many(raws, region, mobile_only=mobile_only)
    assert len(batch.numbers) == len(raws)
    reasons = dict(batch.rejected)
    assert [i for i, _ in batch.rejected] == sorted(reasons)
    for i, raw in enumerate(raws):
        expected = reference_e164(raw, region, mobile_only)
        assert batch.numbers[i] == expected, (raw, region, mobile_only)
        assert (i in reasons) == (expected is None)
        if expected is None:
            assert reasons[i] == phone._reference(raw, region, mobile_only), (raw, region)
            with pytest.raises(InvalidNumber) as info:
                normalize(raw, region, mobile_only=mobile_only)
            assert info.value.reason == reasons[i]
        else:
            assert normalize(raw, region, mobile_only=mobile_only) == expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(phone_inputs(), max_size=25), default_regions(), st.booleans())
def test_normalize_many_equals_the_reference(
    raws: list[str], region: str | None, mobile_only: bool
) -> None:
    _check_against_reference(raws, region, mobile_only)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=10), default_regions(), st.booleans())
def test_arbitrary_text_equals_the_reference(
    raws: list[str], region: str | None, mobile_only: bool
) -> None:
    _check_against_reference(raws, region, mobile_only)


@settings(max_examples=300, deadline=None)
@given(phone_inputs(), default_regions(), st.booleans())
def test_fast_path_never_disagrees(raw: str, region: str | None, mobile_only: bool) -> None:
    decided = _fast(raw, region, mobile_only)
    if decided is not None:
        assert decided == phone._reference(raw, region, mobile_only)


def test_phonenumbers_is_imported_only_by_phone() -> None:
    package = Path(contactmatch.__file__).parent
    importers = sorted(
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+phonenumbers\b", p.read_text(encoding="utf-8"), re.M)
    )
    assert importers == ["phone.py"]
