"""The numbering plan the lab draws its numbers from, read from a data file.

Sweeps and hash reversal test candidate numbers of a real numbering plan, and the synthetic
populations of the demo and the scheme comparison are drawn from it too. The plan is a fact
about the world with a source, not logic, so it lives in
``contactmatch/data/numbering_plan_ir.json`` (Iran's mobile ranges), where it can be checked
against that source, and another country's plan dropped in, without touching code.

The order of ``mobile_prefixes`` is part of the data: synthetic workloads index into it, so
reordering it changes every generated workload (and the figures measured on them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from contactmatch._json import load_json
from contactmatch.errors import InvalidInput

__all__ = ["DEFAULT_PLAN", "NumberingPlan", "load_plan"]

#: The plan file shipped in ``contactmatch/data``.
DEFAULT_PLAN = "numbering_plan_ir.json"
_FORMAT = "contactmatch-numbering-plan"


@dataclass(frozen=True, slots=True, kw_only=True)
class NumberingPlan:
    """Mobile ranges of one country, and the ranges the lab gives each role.

    Each range is an E.164 prefix (``+98912``) followed by ``subscriber_digits`` digits.
    """

    country: str
    calling_code: str
    subscriber_digits: int
    #: Numbers in the country's whole mobile range: what reversal timings extrapolate to.
    mobile_numbers: int
    #: Operator prefixes after the calling code (``912``), in the file's order.
    mobile_prefixes: tuple[str, ...]
    #: The range the scrapers sweep and the registered users of a simulation live in.
    swept: str
    #: Where scraper accounts (and the simulated normal user) are registered.
    scrapers: str
    #: Where a normal user's unregistered contacts come from (never swept).
    others: str
    source: str

    @property
    def range_size(self) -> int:
        """Numbers behind one prefix (10^subscriber_digits)."""
        return int(10**self.subscriber_digits)

    def prefixes(self) -> list[str]:
        """The operator ranges as E.164 prefixes (``+98912``), in the file's order."""
        return [self.e164(p) for p in self.mobile_prefixes]

    def e164(self, national_prefix: str) -> str:
        """The E.164 prefix of one operator range: ``+``, calling code, prefix."""
        return f"+{self.calling_code}{national_prefix}"

    def number(self, prefix: str, index: int) -> str:
        """The ``index``-th number of the range behind the E.164 ``prefix``."""
        return f"{prefix}{index:0{self.subscriber_digits}d}"


def _text(doc: dict[str, object], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"numbering plan: {key} must be a non-empty string")
    return value


def _digits(doc: dict[str, object], key: str) -> str:
    value = _text(doc, key)
    if not (value.isascii() and value.isdigit()):
        raise InvalidInput(f"numbering plan: {key} must be digits")
    return value


@functools.cache
def load_plan(name: str = DEFAULT_PLAN) -> NumberingPlan:
    """Read a plan file from ``contactmatch/data`` (cached: the file never changes).

    Raises:
        InvalidInput: the file is not a plan of this format, or a field is malformed.
        FileNotFoundError: no such file in the package data.
    """
    raw = resources.files("contactmatch").joinpath("data", name).read_bytes()
    doc = load_json(raw)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != 1:
        raise InvalidInput(f"{name} is not a version 1 {_FORMAT} file")
    lab = doc.get("lab")
    prefixes = doc.get("mobile_prefixes")
    digits = doc.get("subscriber_digits")
    size = doc.get("mobile_numbers")
    if not isinstance(lab, dict) or not isinstance(prefixes, list) or not prefixes:
        raise InvalidInput("numbering plan: needs mobile_prefixes and lab roles")
    if type(digits) is not int or not 1 <= digits <= 12:
        raise InvalidInput("numbering plan: subscriber_digits must be an integer in 1..12")
    if type(size) is not int or size < 1:
        raise InvalidInput("numbering plan: mobile_numbers must be a positive integer")
    ranges = tuple(_digits({"prefix": p}, "prefix") for p in prefixes)
    code = _digits(doc, "calling_code")
    if any(not 7 <= len(code) + len(r) + digits <= 15 for r in ranges):
        raise InvalidInput("numbering plan: numbers must have 7 to 15 digits (E.164)")
    roles = {role: _digits(lab, role) for role in ("swept", "scrapers", "others")}
    if len(set(roles.values())) != 3 or not set(roles.values()) <= set(ranges):
        raise InvalidInput("numbering plan: lab roles must be three distinct mobile prefixes")
    return NumberingPlan(
        country=_text(doc, "country"),
        calling_code=code,
        subscriber_digits=digits,
        mobile_numbers=size,
        mobile_prefixes=ranges,
        swept=f"+{code}{roles['swept']}",
        scrapers=f"+{code}{roles['scrapers']}",
        others=f"+{code}{roles['others']}",
        source=_text(doc, "source"),
    )
