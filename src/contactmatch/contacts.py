"""Reduce what a phone exports (vCards, contact dicts) to phone numbers, and nothing else.

This is the privacy boundary for contact cards: names, photos, e-mails, addresses, notes and
every other property are dropped *here*, while parsing, so that no later layer (protocol,
store, log) can leak them by accident. Only the raw text of TEL values leaves this module;
turning those into E.164 numbers is :mod:`contactmatch.phone`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contactmatch._json import load_json
from contactmatch.errors import InvalidContactCard
from contactmatch.phone import normalize_many

__all__ = [
    "ContactBook",
    "load_contacts",
    "numbers_from_dicts",
    "numbers_from_vcard",
    "read_contacts",
]

#: Upper bounds that keep a hostile upload from exhausting memory; a real phone book is a few
#: thousand cards, so these leave two orders of magnitude of headroom.
MAX_INPUT_BYTES = 64 * 1024 * 1024
MAX_CARDS = 200_000
MAX_NUMBER_CHARS = 64

# Keys of a contact dict that may hold phone numbers. Everything else is dropped unread.
_PHONE_KEYS = ("phones", "phone", "tel", "telephone", "numbers", "number", "mobile")
# Inside a per-number dict ({"number": "...", "type": "cell"}), the key holding the value.
_NUMBER_KEYS = ("number", "value", "phone", "tel")

_FOLD = re.compile(r"\r?\n[ \t]")
# A content line: [group.]NAME[;params]:value  (RFC 6350 §3.3). Params may contain quoted ':'.
_LINE = re.compile(
    r'^(?:[A-Za-z0-9-]+\.)?(?P<name>[A-Za-z0-9-]+)(?P<params>(?:;(?:"[^"]*"|[^:;"])*)*):(?P<value>.*)$'
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactBook:
    """A phone book reduced to unique E.164 numbers, in first-seen order.

    ``rejected`` counts the raw entries that did not normalise, by reason code; the raw
    values themselves are not kept (they may be typos of real numbers).
    """

    numbers: tuple[str, ...]
    rejected: dict[str, int] = field(default_factory=dict)
    cards: int = 0

    def __repr__(self) -> str:
        # Never show numbers in a repr: it ends up in logs and tracebacks.
        return (
            f"ContactBook(numbers=<{len(self.numbers)} numbers>, rejected={self.rejected!r}, "
            f"cards={self.cards})"
        )


def _clean_value(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_NUMBER_CHARS:
        raise InvalidContactCard(f"a TEL value is longer than {MAX_NUMBER_CHARS} characters")
    return value


def numbers_from_vcard(text: str | bytes) -> list[str]:
    """Return the raw TEL values of every card in vCard 2.1/3.0/4.0 text, in order.

    Folded lines are unfolded; property groups (``item1.TEL``), parameters and vCard 4.0
    ``tel:`` URIs are handled. Every other property is discarded without being kept.

    Raises:
        InvalidContactCard: the text is not vCard, cards are unbalanced, or a limit is exceeded.
    """
    if isinstance(text, bytes):
        if len(text) > MAX_INPUT_BYTES:
            raise InvalidContactCard("vCard input is too large")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidContactCard("vCard input is not UTF-8") from exc
    if len(text) > MAX_INPUT_BYTES:
        raise InvalidContactCard("vCard input is too large")
    text = _FOLD.sub("", text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n"))
    numbers: list[str] = []
    depth = 0
    cards = 0
    for lineno, line in enumerate(text.split("\r\n"), start=1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            if depth == 0:
                raise InvalidContactCard(f"line {lineno} is not a vCard content line")
            continue  # tolerate junk inside a card (e.g. base64 photo continuation lines)
        name = m["name"].upper()
        if name == "BEGIN" and m["value"].strip().upper() == "VCARD":
            depth += 1
            if depth == 1:
                cards += 1
                if cards > MAX_CARDS:
                    raise InvalidContactCard(f"more than {MAX_CARDS} cards")
            continue
        if name == "END" and m["value"].strip().upper() == "VCARD":
            if depth == 0:
                raise InvalidContactCard(f"line {lineno}: END:VCARD without BEGIN:VCARD")
            depth -= 1
            continue
        if depth == 0:
            raise InvalidContactCard(f"line {lineno}: property outside a card")
        if name != "TEL" or depth != 1:  # depth > 1: an embedded AGENT card, not this contact
            continue
        value = m["value"].replace("\\,", ",").replace("\\;", ";").replace("\\\\", "\\")
        if value[:4].lower() == "tel:":
            value = value[4:].split(";", 1)[0]  # drop URI parameters such as ;ext=
        value = _clean_value(value)
        if value:
            numbers.append(value)
    if depth != 0:
        raise InvalidContactCard("a card is not closed with END:VCARD")
    if cards == 0:
        raise InvalidContactCard("no BEGIN:VCARD found")
    return numbers


def _numbers_in(value: Any) -> Iterable[str]:
    if value is None:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key in _NUMBER_KEYS:
            if key in value:
                yield from _numbers_in(value[key])
                return
        raise InvalidContactCard("a phone entry has no 'number' field")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for item in value:
            yield from _numbers_in(item)
    else:
        raise InvalidContactCard(f"a phone entry has type {type(value).__name__}, not str")


def numbers_from_dicts(cards: Iterable[Mapping[str, Any]]) -> list[str]:
    """Return the raw phone values of contact dicts (``{"name":…, "phones": […], …}``).

    Recognised number keys: ``phones``, ``phone``, ``tel``, ``telephone``, ``numbers``,
    ``number``, ``mobile``; each may hold a string, a list of strings, or per-number dicts
    with a ``number``/``value`` field. All other keys (names, photos, e-mails…) are ignored.

    Raises:
        InvalidContactCard: a card is not a mapping, a value has the wrong type, or too many cards.
    """
    numbers: list[str] = []
    for i, card in enumerate(cards):
        if i >= MAX_CARDS:
            raise InvalidContactCard(f"more than {MAX_CARDS} cards")
        if not isinstance(card, Mapping):
            raise InvalidContactCard(f"card {i} is a {type(card).__name__}, not a mapping")
        for key in _PHONE_KEYS:
            if key in card:
                for raw in _numbers_in(card[key]):
                    cleaned = _clean_value(raw)
                    if cleaned:
                        numbers.append(cleaned)
    return numbers


def read_contacts(source: str | bytes | Iterable[Mapping[str, Any]] | Iterable[str]) -> list[str]:
    """Raw phone values from any supported source, sniffing the format.

    ``source`` may be vCard text/bytes, JSON text of a list of contact dicts, plain text with
    one number per line, an iterable of contact dicts, or an iterable of number strings.
    """
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidContactCard("contact input is not UTF-8") from exc
    if isinstance(source, str):
        if len(source) > MAX_INPUT_BYTES:
            raise InvalidContactCard("contact input is too large")
        head = source.lstrip()[:64].upper()
        if head.startswith("BEGIN:VCARD"):
            return numbers_from_vcard(source)
        if head.startswith("["):
            # The strict loader: a hostile export (deep nesting, huge integers) is refused
            # as InvalidContactCard instead of crashing the reader.
            parsed = load_json(source, error=InvalidContactCard)
            if not isinstance(parsed, list):
                raise InvalidContactCard("contact JSON must be a list of contacts")
            return read_contacts(parsed)
        return [_clean_value(line) for line in source.splitlines() if line.strip()]
    items: list[Any] = list(source)
    if all(isinstance(x, str) for x in items):
        return [_clean_value(x) for x in items if x.strip()]
    return numbers_from_dicts(items)


def load_contacts(
    source: str | bytes | Iterable[Mapping[str, Any]] | Iterable[str] | Path,
    region: str | None = None,
    *,
    mobile_only: bool = True,
) -> ContactBook:
    """Read a phone book from any supported source and normalise it to unique E.164 numbers.

    A :class:`~pathlib.Path` is read from disk; anything else goes through
    :func:`read_contacts`. Numbers that do not normalise are counted by reason and dropped.
    """
    cards = 0
    if isinstance(source, Path):
        if source.stat().st_size > MAX_INPUT_BYTES:
            raise InvalidContactCard("contact file is too large")
        source = source.read_bytes()
    if isinstance(source, str | bytes):
        text = source.decode("utf-8-sig", "replace") if isinstance(source, bytes) else source
        cards = len(re.findall(r"(?im)^BEGIN:VCARD", text))
    else:
        items: list[Any] = list(source)
        cards = sum(1 for c in items if isinstance(c, Mapping))
        source = items
    raws = read_contacts(source)
    batch = normalize_many(raws, region, mobile_only=mobile_only)
    seen: dict[str, None] = {}
    for number in batch.numbers:
        if number is not None:
            seen.setdefault(number, None)
    rejected: dict[str, int] = {}
    for _, reason in batch.rejected:
        rejected[reason] = rejected.get(reason, 0) + 1
    return ContactBook(numbers=tuple(seen), rejected=rejected, cards=cards)
