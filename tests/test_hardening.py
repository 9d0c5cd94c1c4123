"""Hostile input at the edges (issue 9, Low items 10-13): strict JSON, canonical bearer tokens,
masking that shows digits only, and secrets that refuse to be pickled or copied."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contactmatch._calling_codes import CALLING_CODES
from contactmatch._json import MAX_DEPTH, MAX_INT_DIGITS, load_json
from contactmatch.atrest import DataKey
from contactmatch.contacts import MAX_CARDS, MAX_NUMBER_CHARS, load_contacts
from contactmatch.errors import (
    AuthenticationFailed,
    ContactMatchError,
    InvalidContactCard,
    InvalidInput,
    InvalidNumber,
    MalformedMessage,
)
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode, OprfClient
from contactmatch.phone import normalize, normalize_many
from contactmatch.server import ServerThread, SignedTokens, create_app
from contactmatch.server._codes import status_and_code
from contactmatch.server.models import SettingsBody, parse_body
from contactmatch.service import DiscoveryServer
from contactmatch.stores import open_store

KEY = ServerKey.generate(Mode.OPRF)

# -- item 10: one strict JSON loader -------------------------------------------------------

HOSTILE_JSON = {
    "deep_arrays": "[" * 1000 + "]" * 1000,
    "deep_objects": '{"a":' * 1000 + "1" + "}" * 1000,
    "unclosed": "[" * 60_000,  # under the 64 KiB account-body cap
    "lone_high_surrogate": '{"discoverability": "\\ud800"}',
    "lone_low_surrogate": '{"discoverability": "x\\udfff"}',
    "surrogate_key": '{"\\ud800": "everyone"}',
    "utf8_surrogate": b'{"discoverability": "\xed\xa0\x80"}',
    "huge_int": '{"discoverability": ' + "9" * 5000 + "}",
    "long_int": '{"discoverability": ' + "9" * (MAX_INT_DIGITS + 1) + "}",
    "nan": '{"discoverability": NaN}',
    "infinity": '{"discoverability": -Infinity}',
    "float_overflow": '{"discoverability": 1e999}',
    "repeated_key": '{"discoverability": "nobody", "discoverability": "everyone"}',
    "not_utf8": b'{"discoverability": "\xff"}',
    "utf16": '{"discoverability": "everyone"}'.encode("utf-16"),
}


@pytest.mark.parametrize("body", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_json_object_refuses_hostile_bodies_as_invalid_input(body: str | bytes) -> None:
    raw = body.encode() if isinstance(body, str) else body
    with pytest.raises(InvalidInput) as info:
        parse_body(SettingsBody, raw)
    assert status_and_code(info.value) == (400, "invalid_input")


@pytest.mark.parametrize("body", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_every_reader_refuses_hostile_json_with_its_own_error(body: str | bytes) -> None:
    with pytest.raises(MalformedMessage):
        load_json(body, error=MalformedMessage)
    raw = body if isinstance(body, bytes) else body.encode()
    with pytest.raises(InvalidContactCard):
        load_contacts(b"[" + raw + b"]")  # a list: contact JSON, not lines of numbers


def test_json_messages_never_quote_the_input() -> None:
    for body in HOSTILE_JSON.values():
        with pytest.raises(InvalidInput) as info:
            load_json(body)
        assert "999" not in str(info.value)
        assert "discoverability" not in str(info.value)


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**MAX_INT_DIGITS) + 1, 10**MAX_INT_DIGITS - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()  # hypothesis leaves out surrogates by default: valid JSON strings only
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(), kids, max_size=5),
)


@given(_JSON_VALUES, st.booleans(), st.booleans())
def test_strict_loader_agrees_with_json_on_valid_documents(
    value: Any, ascii_: bool, as_bytes: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_)
    assert load_json(text.encode() if as_bytes else text) == json.loads(text)


def _depth(value: Any) -> int:
    """Reference nesting depth (``[]`` is 1), by plain recursion over a shallow value."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@st.composite
def _nested(draw: st.DrawFn) -> tuple[str, int]:
    """A document around the depth limit whose strings hold brackets, quotes and backslashes."""
    filler = draw(st.text(alphabet='[]{}"\\ab', max_size=6))
    doc: Any = filler
    for as_object in draw(st.lists(st.booleans(), max_size=MAX_DEPTH + 3)):
        siblings: list[Any] = [[], {}, filler] if draw(st.booleans()) else []
        doc = {filler: doc, "s": siblings} if as_object else [siblings, doc]
    return json.dumps(doc), _depth(doc)


@given(_nested())
def test_depth_limit_is_exact(case: tuple[str, int]) -> None:
    text, depth = case
    if depth <= MAX_DEPTH:
        assert load_json(text) == json.loads(text)
    else:
        with pytest.raises(InvalidInput, match="deeper"):
            load_json(text)


@given(st.text(alphabet='[]{}"\\:,01 u', max_size=300))
def test_any_text_is_parsed_or_refused_with_the_typed_error(text: str) -> None:
    with suppress(InvalidInput):  # anything else (RecursionError, ValueError) fails
        load_json(text)


def test_unterminated_strings_do_not_make_the_depth_scan_quadratic() -> None:
    body = '["' + '\\"' * 300_000 + "[" * (MAX_DEPTH + 1)
    started = time.perf_counter()
    with pytest.raises(InvalidInput):
        load_json(body)
    assert time.perf_counter() - started < 5.0  # linear: milliseconds; quadratic: minutes


@pytest.fixture
def http(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[httpx.Client, SignedTokens]]:
    with ExitStack() as stack:
        store = open_store("memory://")
        stack.callback(store.close)
        tokens = SignedTokens.from_server_key(KEY)
        service = DiscoveryServer(store, KEY, DataKey.generate())
        service.register("alice", "+989123456789")  # a live account: only the body is wrong
        app = create_app(service, authenticate=tokens)
        url = stack.enter_context(ServerThread(app))
        yield stack.enter_context(httpx.Client(base_url=url)), tokens
    # No hostile body may reach the "unexpected exception" log line (a 500 with frames).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_hostile_bodies_are_400_over_http(http: tuple[httpx.Client, SignedTokens]) -> None:
    client, tokens = http
    headers = {
        "Authorization": f"Bearer {tokens.issue('alice')}",
        "Content-Type": "application/json",
    }
    for name, body in HOSTILE_JSON.items():
        content = body.encode() if isinstance(body, str) else body
        for method, path, code in (
            ("PUT", "/v1/settings", "invalid_input"),
            ("POST", "/v1/discover", "malformed_message"),
            ("POST", "/v1/contacts", "malformed_message"),
        ):
            resp = client.request(method, path, content=content, headers=headers)
            assert resp.status_code == 400, (name, path, resp.text)
            assert resp.json()["error"]["code"] == code, (name, path)


# -- item 11: a bearer token has exactly one spelling --------------------------------------

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _tokens() -> SignedTokens:
    return SignedTokens(b"k" * 32, ttl=3600, _clock=lambda: 1_000_000.0)


def _flip_unused_bits(part: str) -> str:
    # 32 bytes are 43 characters: the last one carries 4 data bits and 2 unused ones.
    last = _ALPHABET.index(part[-1])
    return part[:-1] + _ALPHABET[last ^ 1]


def test_signature_spellings_do_not_authenticate() -> None:
    tokens = _tokens()
    good = tokens.issue("alice")
    user, expiry, sig = good.split(".")
    assert len(sig) == 43
    for bad in (
        good + "=",
        f"{user}.{expiry}.{sig}==",
        f"{user}.{expiry}.{_flip_unused_bits(sig)}",
        f"{user}.{expiry}.{sig[:20]}!{sig[20:]}",  # the lenient decoder skipped junk
        f"{user}.{expiry}.{sig.replace('-', '+').replace('_', '/')}",
    ):
        with pytest.raises(AuthenticationFailed, match="invalid token"):
            tokens.verify(bad)
    assert tokens.verify(good) == "alice"


@pytest.mark.parametrize(
    ("user_part", "expiry_part"),
    [
        ("YWxpY2U=", "1003600"),  # padded user part
        ("YWxpY2V", "1003600"),  # unused bits set in the user part
        ("YWxp Y2U", "1003600"),
        ("YWxpY2U", "+1003600"),
        ("YWxpY2U", "01003600"),
        ("YWxpY2U", " 1003600"),
        ("YWxpY2U", "1003600 "),
        ("YWxpY2U", "1_003_600"),
        ("YWxpY2U", "١٠٠٣٦٠٠"),  # Arabic-Indic digits: int() reads them
        ("YWxpY2U", "-0"),
    ],
)
def test_signed_but_non_canonical_parts_are_refused(user_part: str, expiry_part: str) -> None:
    # Even with a valid signature (an older issuer, a leaked secret), only the canonical
    # spelling is a token: one token, one string.
    tokens = _tokens()
    payload = f"{user_part}.{expiry_part}"
    sig = _b64(tokens._sign(payload.encode("utf-8")))
    with pytest.raises(AuthenticationFailed, match="invalid token"):
        tokens.verify(f"{payload}.{sig}")


def _b64(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@given(st.data())
def test_any_edit_of_a_token_is_refused(data: st.DataObject) -> None:
    tokens = _tokens()
    good = tokens.issue(data.draw(st.text(min_size=1, max_size=20)))
    at = data.draw(st.integers(0, len(good)))
    char = data.draw(st.sampled_from([*_ALPHABET, ".", "=", "+", "/", " ", "é"]))
    edit = data.draw(st.sampled_from(["insert", "replace", "delete"]))
    if edit == "insert":
        bad = good[:at] + char + good[at:]
    elif edit == "replace":
        bad = good[:at] + char + good[at + 1 :]
    else:
        bad = good[:at] + good[at + 1 :]
    if bad == good:
        return
    with pytest.raises(AuthenticationFailed):
        tokens.verify(bad)


def test_issued_tokens_round_trip_and_expiry_stays_canonical() -> None:
    tokens = _tokens()
    assert tokens.verify(tokens.issue("a.b_c-d")) == "a.b_c-d"
    with pytest.raises(AuthenticationFailed, match="expired"):
        tokens.verify(tokens.issue("alice", ttl=-2_000_000))  # expiry clamps to 0
    for ttl in (float("inf"), float("nan"), 1e30):
        with pytest.raises(InvalidInput):
            tokens.issue("alice", ttl=ttl)


# -- item 12: masks show the calling code and two digits, never a letter --------------------

_NAME = "АБВГДЕЖЗИКЛМНОПабвгдежзиклмноп"  # Cyrillic: no error template contains one
_NUMBERISH = st.text(alphabet="0123456789۰۱۲۳۴۵۶۷۸۹+ -().", min_size=1, max_size=30)
_WORDS = st.text(alphabet=_NAME, min_size=3, max_size=10)


@st.composite
def _entries(draw: st.DrawFn) -> str:
    """A phone book entry as exports hold them: numbers, names, CSV and vCard bits."""
    parts = draw(
        st.lists(
            _NUMBERISH
            | _WORDS
            | st.sampled_from([",", ";", ":", "tel:", "TEL:", "00", "+98", "0912"])
            | st.text(max_size=5),
            min_size=1,
            max_size=6,
        )
    )
    return "".join(parts)


def _digits_shown(message: str) -> tuple[int, str]:
    """Digits in a message and the calling code its mask shows (checked to be real)."""
    m = re.search(r"\+(\d+)\*", message)
    code = m.group(1) if m else ""
    assert not code or code in CALLING_CODES
    return sum(ch.isdigit() for ch in message), code


def _assert_no_fragment(message: str, raw: str) -> None:
    assert not set(message) & set(_NAME), message
    for run in re.findall(r"[^\d\s]{3,}", raw):
        if not set(run) & set(_NAME):
            continue  # ASCII runs may match the template ("tel", "not"); names are the point
        assert run not in message


@given(_entries(), st.sampled_from([None, "IR", "US"]))
def test_normalize_errors_show_no_fragment_and_few_digits(raw: str, region: str | None) -> None:
    try:
        normalize(raw, region)
    except InvalidNumber as exc:
        error = exc
    else:
        return
    for text in (str(error), error.masked, repr(error)):
        _assert_no_fragment(text, raw)
    shown, code = _digits_shown(str(error))
    assert shown <= len(code) + 2
    assert len(error.masked) <= 18


@given(st.lists(_entries(), min_size=1, max_size=20), st.sampled_from([None, "IR"]))
def test_normalize_many_and_load_contacts_leak_nothing(raws: list[str], region: str | None) -> None:
    batch = normalize_many(raws, region)
    assert all(reason.isidentifier() for _, reason in batch.rejected)  # codes, not input
    for source in ("\n".join(raws), json.dumps([{"name": "x", "phones": raws}])):
        try:
            book = load_contacts(source, region)
        except ContactMatchError as exc:
            message = str(exc)
            for raw in raws:
                _assert_no_fragment(message, raw)
            # The only numbers in these messages are line numbers and the documented limits.
            rest = message.replace(str(MAX_NUMBER_CHARS), "").replace(str(MAX_CARDS), "")
            assert not re.search(r"\d{3}", rest), message
        else:
            assert not any(set(n) & set(_NAME) for n in book.numbers)


def test_huge_input_gives_a_short_message() -> None:
    with pytest.raises(InvalidNumber) as info:
        normalize("+98" + "9" * 60_000)
    assert len(str(info.value)) < 100
    with pytest.raises(InvalidNumber) as info:
        normalize("0912 345 6789", "US")
    assert "*********89" in str(info.value)  # 9 of 11 digits hidden, not 3


def test_a_region_that_is_not_a_code_is_not_echoed() -> None:
    with pytest.raises(InvalidInput) as info:
        normalize("0912 345 6789", "+989123456789")
    assert "912" not in str(info.value)
    with pytest.raises(InvalidInput, match="'ir'"):
        normalize("0912 345 6789", "ir")  # a typo of a code is shown: it helps


# -- item 13: secrets refuse pickling and copying, like ServerKey ---------------------------


def _blind_state() -> object:
    state, _ = OprfClient(Mode.OPRF).blind([b"+989123456789"])
    return state


@pytest.mark.parametrize(
    "make",
    [lambda: KEY, _tokens, _blind_state],
    ids=["ServerKey", "SignedTokens", "BlindState"],
)
@pytest.mark.parametrize(
    "action", [pickle.dumps, copy.copy, copy.deepcopy], ids=["pickle", "copy", "deepcopy"]
)
def test_secrets_refuse_pickling_and_copying(
    make: Callable[[], object], action: Callable[[object], object]
) -> None:
    with pytest.raises(TypeError, match="pickle"):
        action(make())
