"""Membership methods: where the match happens, as objects behind one small protocol.

A scheme is a token function × a membership method (see ``docs/schemes.md``). The method
objects answer their requests over a :class:`~contactmatch.registry.shared.TokenRegistry`,
the one registry of the scheme's token function that every method shares.
"""

from __future__ import annotations

from contactmatch.errors import UnknownScheme
from contactmatch.schemes.base import MethodName
from contactmatch.schemes.methods.base import MembershipMethod
from contactmatch.schemes.methods.bucket import BucketMethod
from contactmatch.schemes.methods.filter import FilterMethod
from contactmatch.schemes.methods.localfilter import LocalFilterMethod
from contactmatch.schemes.methods.lookup import LookupMethod
from contactmatch.schemes.methods.pir import PirMethod

__all__ = [
    "METHODS",
    "BucketMethod",
    "FilterMethod",
    "LocalFilterMethod",
    "LookupMethod",
    "MembershipMethod",
    "PirMethod",
    "method_for",
]

#: The method object for each method name a scheme may carry.
METHODS: dict[MethodName, MembershipMethod] = {
    m.name: m
    for m in (LookupMethod(), BucketMethod(), FilterMethod(), LocalFilterMethod(), PirMethod())
}
# Keyed by plain str too, so any name a caller hands in is looked up without a cast.
_BY_NAME: dict[str, MembershipMethod] = {m.name: m for m in METHODS.values()}


def method_for(name: MethodName | str) -> MembershipMethod:
    """The method called ``name`` (``lookup``, ``bucket``, ``filter``, ``localfilter``, ``pir``).

    Raises:
        UnknownScheme: no membership method has that name.
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise UnknownScheme(f"no membership method {str(name)[:20]!r}") from None
