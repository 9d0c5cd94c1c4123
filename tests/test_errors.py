"""The error tree and masking: callers catch at the level they need; messages never leak."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import contactmatch
from contactmatch import errors

ALL_ERRORS = [
    getattr(errors, name)
    for name in errors.__all__
    if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), Exception)
]


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_derives_from_root(cls: type[Exception]) -> None:
    assert issubclass(cls, contactmatch.ContactMatchError)


def test_value_error_subclasses() -> None:
    for cls in (errors.InvalidNumber, errors.InvalidContactCard, errors.MalformedMessage):
        assert issubclass(cls, ValueError)
    assert issubclass(errors.UnknownUser, LookupError)
    assert issubclass(errors.MissingDependency, ImportError)


def test_mask_number_shape() -> None:
    assert errors.mask_number("+989123456789") == "+98912*****89"
    assert errors.mask_number("+98 912 345 6789") == "+98912*****89"
    assert errors.mask_number("1234") == "****"


@given(st.text(alphabet="+0123456789", min_size=9, max_size=20))
def test_mask_never_shows_the_middle(raw: str) -> None:
    masked = errors.mask_number(raw)
    assert len(masked) == len(raw)
    assert masked != raw
    assert raw not in masked


def test_invalid_number_message_and_pickle_are_masked() -> None:
    exc = errors.InvalidNumber("not_mobile", "+982188776655")
    assert exc.reason == "not_mobile"
    assert "+982188776655" not in str(exc)
    assert "not_mobile" in str(exc)
    restored = pickle.loads(pickle.dumps(exc))
    assert restored.reason == "not_mobile"
    assert b"2188776655" not in pickle.dumps(exc)


def test_rate_limited_carries_retry_after() -> None:
    exc = errors.RateLimited("quota exhausted", retry_after=12.4, quota="oprf")
    assert exc.retry_after == pytest.approx(12.4)
    assert exc.quota == "oprf"
    assert errors.RateLimited("x", retry_after=-3).retry_after == 0.0


def test_missing_dependency_names_the_fix() -> None:
    exc = errors.MissingDependency("postgres", "psycopg")
    assert "pip install 'contactmatch[postgres]'" in str(exc)


def test_verification_failed_is_opaque() -> None:
    assert str(errors.VerificationFailed()) == "verification failed"
