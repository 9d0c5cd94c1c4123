"""Contact cards are reduced to phone numbers; nothing else survives the boundary."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contactmatch.contacts import (
    ContactBook,
    load_contacts,
    numbers_from_dicts,
    numbers_from_vcard,
    read_contacts,
)
from contactmatch.demo import sample_contacts_path
from contactmatch.errors import InvalidContactCard

VCARD3 = (
    "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Sara Rahimi\r\nN:Rahimi;Sara;;;\r\n"
    "TEL;TYPE=CELL:0912 345 6789\r\nEMAIL:sara@example.org\r\nEND:VCARD\r\n"
)


def test_vcard3_tel_only() -> None:
    assert numbers_from_vcard(VCARD3) == ["0912 345 6789"]


def test_vcard4_tel_uri_with_parameters() -> None:
    card = (
        "BEGIN:VCARD\nVERSION:4.0\nFN:X\n"
        'TEL;VALUE=uri;TYPE="voice,cell":tel:+98-912-345-6789;ext=12\nEND:VCARD\n'
    )
    assert numbers_from_vcard(card) == ["+98-912-345-6789"]


def test_folded_lines_are_unfolded() -> None:
    card = "BEGIN:VCARD\r\nVERSION:3.0\r\nTEL;TYPE=CELL:+98 912\r\n  345 6789\r\nEND:VCARD\r\n"
    assert numbers_from_vcard(card) == ["+98 912 345 6789"]


def test_groups_multiple_cards_and_lowercase() -> None:
    text = VCARD3 + "begin:vcard\nversion:3.0\nitem1.tel;type=cell:+49 1512 3456789\nend:vcard\n"
    assert numbers_from_vcard(text) == ["0912 345 6789", "+49 1512 3456789"]


def test_embedded_agent_card_is_not_this_contact() -> None:
    text = (
        "BEGIN:VCARD\nVERSION:3.0\nTEL:0912 345 6789\nAGENT:\nBEGIN:VCARD\nTEL:0935 000 0000\n"
        "END:VCARD\nEND:VCARD\n"
    )
    assert numbers_from_vcard(text) == ["0912 345 6789"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "TEL:0912 345 6789\n",
        "BEGIN:VCARD\nTEL:0912 345 6789\n",
        "END:VCARD\n",
        "BEGIN:VCARD\nTEL:" + "1" * 200 + "\nEND:VCARD\n",
    ],
)
def test_malformed_vcards_raise_typed_error(text: str) -> None:
    with pytest.raises(InvalidContactCard):
        numbers_from_vcard(text)


def test_non_utf8_bytes_raise_typed_error() -> None:
    with pytest.raises(InvalidContactCard):
        numbers_from_vcard(b"BEGIN:VCARD\nTEL:\xff\xfe\nEND:VCARD\n")


def test_dicts_all_shapes() -> None:
    cards = [
        {"name": "A", "phones": ["0912 345 6789", {"number": "+98 935 120 4477", "type": "cell"}]},
        {"name": "B", "phone": "00989191112233", "emails": ["b@example.org"]},
        {"name": "C", "photo": b"\x89PNG"},
        {"tel": None},
    ]
    assert numbers_from_dicts(cards) == ["0912 345 6789", "+98 935 120 4477", "00989191112233"]


@pytest.mark.parametrize(
    "cards",
    [[{"phones": [123]}], [{"phones": [{"type": "cell"}]}], ["not a dict", 5]],
)
def test_bad_dicts_raise_typed_error(cards: list[object]) -> None:
    with pytest.raises(InvalidContactCard):
        numbers_from_dicts(cards)  # type: ignore[arg-type]


def test_read_contacts_sniffs_formats() -> None:
    assert read_contacts(VCARD3) == ["0912 345 6789"]
    assert read_contacts(json.dumps([{"phones": ["1"]}])) == ["1"]
    assert read_contacts("0912 345 6789\n\n+49 1512 3456789\n") == [
        "0912 345 6789",
        "+49 1512 3456789",
    ]
    assert read_contacts(["a", " ", "b"]) == ["a", "b"]
    with pytest.raises(InvalidContactCard):
        read_contacts("[not json")


def test_load_sample_book() -> None:
    book = load_contacts(sample_contacts_path(), "IR")
    assert isinstance(book, ContactBook)
    assert book.cards == 12
    assert "+989123456789" in book.numbers
    assert len(book.numbers) == len(set(book.numbers))  # duplicates across cards collapse
    assert book.rejected.get("not_mobile", 0) >= 2  # the Tehran landlines
    assert "+98912" not in repr(book)


_names = st.text(alphabet=st.characters(categories=["L"]), min_size=12, max_size=24)


@settings(max_examples=40, deadline=None)
@given(name=_names, photo=st.binary(min_size=24, max_size=64), email_user=_names)
def test_no_byte_of_name_photo_or_email_survives(
    name: str, photo: bytes, email_user: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    photo_b64 = base64.b64encode(photo).decode()
    vcard = (
        f"BEGIN:VCARD\nVERSION:3.0\nFN:{name}\nN:{name};;;;\nEMAIL:{email_user}@example.org\n"
        f"PHOTO;ENCODING=b;TYPE=JPEG:{photo_b64}\nADR:;;{name} street;;;;\nNOTE:{name}\n"
        "TEL;TYPE=CELL:0912 345 6789\nEND:VCARD\n"
    )
    card = {"name": name, "photo": photo, "emails": [email_user], "phones": ["0912 345 6789"]}
    outputs: list[object] = [
        numbers_from_vcard(vcard),
        numbers_from_dicts([card]),
        read_contacts(vcard),
        load_contacts(vcard, "IR"),
        load_contacts([card], "IR"),
    ]
    path = tmp_path_factory.mktemp("cards") / "book.vcf"
    path.write_text(vcard, encoding="utf-8")
    outputs.append(load_contacts(Path(path), "IR"))
    for out in outputs:
        dumped = repr(out) + repr(getattr(out, "numbers", ""))
        for secret in (name, email_user, photo_b64[:16]):
            assert secret not in dumped
        assert photo not in dumped.encode()
    assert load_contacts(vcard, "IR").numbers == ("+989123456789",)
