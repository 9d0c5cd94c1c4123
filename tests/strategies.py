"""Shared Hypothesis strategies (and the plain reference they are checked against).

Phone inputs are built the way phone books hold them: a national significant number (random
digits in Iranian mobile ranges, or another region's example number with its tail redrawn),
written in one of the usual shapes (E.164, spaced international, ``00`` prefix, national with
trunk prefix, bare, ``tel:``), with random separators, digit scripts and, sometimes, junk.
"""

from __future__ import annotations

import functools

import phonenumbers
from hypothesis import strategies as st
from phonenumbers import (
    NumberParseException,
    PhoneMetadata,
    PhoneNumberFormat,
    PhoneNumberType,
)

__all__ = [
    "DIGIT_SCRIPTS",
    "REGIONS",
    "default_regions",
    "ir_mobile_nsns",
    "phone_inputs",
    "reference_e164",
    "to_script",
]

REGIONS = tuple(sorted(phonenumbers.SUPPORTED_REGIONS))

DIGIT_SCRIPTS = {
    name: "".join(chr(zero + i) for i in range(10))
    for name, zero in (
        ("ascii", 0x30),
        ("persian", 0x06F0),
        ("arabic_indic", 0x0660),
        ("fullwidth", 0xFF10),
    )
}

# Separators phone books and users put between digit groups, including some that
# phonenumbers does *not* accept inside a number (tab, thin space, ZWNJ, tilde).
SEPARATORS = (
    "",
    " ",
    "-",
    ".",
    "/",
    "\u00a0",
    "\u2011",
    "\u2013",
    "\u3000",
    "\u200b",
    "\t",
    "\u2009",
    "\u200c",
    "~",
)

JUNK_SUFFIXES = (" ext 12", " x34", ";ext=5", "#", " (mobile)", "!!", ",,7", ";isub=1")
JUNK_PREFIXES = ("Mobile: ", "tel:", "TEL:", "cell ", "+", "++", "0", "(", "*")


def to_script(text: str, script: str) -> str:
    """Rewrite the ASCII digits of ``text`` in another digit script."""
    return text.translate(str.maketrans("0123456789", DIGIT_SCRIPTS[script]))


def reference_e164(raw: str, region: str | None, mobile_only: bool) -> str | None:
    """The plain phonenumbers loop: E.164 of a valid (mobile) number, else None."""
    try:
        number = phonenumbers.parse(raw, region)
    except NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    if mobile_only and phonenumbers.number_type(number) not in (
        PhoneNumberType.MOBILE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
    ):
        return None
    return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))


@functools.cache
def _examples() -> tuple[tuple[str, int, str], ...]:
    """(region, country code, NSN) of every example mobile and fixed-line number."""
    out = []
    for region in REGIONS:
        for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE):
            ex = phonenumbers.example_number_for_type(region, kind)
            if ex is not None:
                nsn = phonenumbers.national_significant_number(ex)
                out.append((region, int(ex.country_code), nsn))
    return tuple(out)


def _trunk_prefix(region: str) -> str:
    md = PhoneMetadata.metadata_for_region(region)
    return (md.national_prefix or "") if md is not None else ""


def ir_mobile_nsns() -> st.SearchStrategy[str]:
    """Ten-digit NSNs around the Iranian mobile ranges (9[0-39]..), most valid, some not."""
    return st.builds(
        lambda head, tail: "9" + head + tail,
        st.sampled_from(["0", "1", "2", "3", "9", "9", "1", "3", "4", "8"]),
        st.text(alphabet="0123456789", min_size=8, max_size=8),
    )


@st.composite
def _sources(draw: st.DrawFn) -> tuple[str, int, str]:
    """(region, country code, NSN): mostly Iranian mobiles, else a redrawn example number."""
    if draw(st.integers(0, 9)) < 5:
        return "IR", 98, draw(ir_mobile_nsns())
    region, cc, nsn = draw(st.sampled_from(_examples()))
    keep = draw(st.integers(max(0, len(nsn) - 5), len(nsn)))
    tail = draw(st.text(alphabet="0123456789", min_size=len(nsn) - keep, max_size=len(nsn) - keep))
    # Occasionally one digit more or less, to reach the length-based reasons.
    extra = draw(st.sampled_from(["", "", "", "", "7", "-"]))
    nsn = nsn[:keep] + tail
    nsn = nsn[:-1] if extra == "-" else nsn + extra
    return region, cc, nsn


def _grouped(draw: st.DrawFn, digits: str) -> str:
    """Insert one kind of separator at random positions (most inputs use one kind)."""
    sep = draw(
        st.sampled_from(SEPARATORS[:10]) if draw(st.booleans()) else st.sampled_from(SEPARATORS)
    )
    if not sep or len(digits) < 2:
        return digits
    cuts = sorted(draw(st.sets(st.integers(1, len(digits) - 1), max_size=4)))
    parts, last = [], 0
    for c in cuts:
        parts.append(digits[last:c])
        last = c
    parts.append(digits[last:])
    return sep.join(parts)


@st.composite
def phone_inputs(draw: st.DrawFn) -> str:
    """One phone number as a phone book might hold it (sometimes mangled)."""
    region, cc, nsn = draw(_sources())
    shape = draw(
        st.sampled_from(
            ["e164", "intl", "idd00", "idd00", "national", "national", "bare", "cc", "tel", "paren"]
        )
    )
    body = _grouped(draw, nsn)
    if shape == "e164":
        raw = f"+{cc}{nsn}"
    elif shape == "intl":
        raw = f"+{cc} {body}"
    elif shape == "idd00":
        raw = f"00{cc}{draw(st.sampled_from(['', ' ']))}{body}"
    elif shape == "national":
        raw = _trunk_prefix(region) + body
    elif shape == "bare":
        raw = body
    elif shape == "cc":
        raw = f"{cc}{body}"
    elif shape == "tel":
        raw = f"tel:+{cc}-{body}"
    else:
        raw = f"(+{cc}) {body}"
    raw = to_script(raw, draw(st.sampled_from(["ascii", "ascii", *DIGIT_SCRIPTS])))
    if draw(st.booleans()):
        raw = (
            draw(st.sampled_from(["", " ", "  ", "\t", "\n"]))
            + raw
            + draw(st.sampled_from(["", " ", "\n", "\u200b"]))
        )
    junk = draw(st.integers(0, 9))
    if junk == 0:
        raw += draw(st.sampled_from(JUNK_SUFFIXES))
    elif junk == 1:
        raw = draw(st.sampled_from(JUNK_PREFIXES)) + raw
    elif junk == 2 and len(raw) > 3:
        # Drop or duplicate a character somewhere.
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + raw[i + 1 :] if draw(st.booleans()) else raw[: i + 1] + raw[i:]
    elif junk == 3:
        raw = draw(
            st.text(alphabet="0123456789+-() x\u06f0\u06f9\u0660\u0669\uff10a;=:#*~", max_size=20)
        )
    return raw


def default_regions() -> st.SearchStrategy[str | None]:
    """Default regions: mostly IR (the messenger's home), sometimes none, sometimes any."""
    return st.one_of(
        st.just("IR"),
        st.none(),
        st.sampled_from(["US", "GB", "DE", "AR", "BR", "IT", "RU", "KZ", "JP", "CA", "GG"]),
        st.sampled_from(REGIONS),
    )
