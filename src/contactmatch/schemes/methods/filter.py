"""``filter``: the server publishes a compact filter; clients look up only their hits."""

from __future__ import annotations

from typing import ClassVar

from contactmatch.schemes.base import MethodName
from contactmatch.schemes.methods.lookup import LookupMethod

__all__ = ["FilterMethod"]


class FilterMethod(LookupMethod):
    """A lookup method whose clients first test their tokens against a published filter.

    The filter itself comes from the registry's
    :class:`~contactmatch.registry.publisher.FilterPublisher`; hits are then answered exactly
    like lookups, so a filter false positive costs one confirmation and never a false match.
    """

    name: ClassVar[MethodName] = "filter"
