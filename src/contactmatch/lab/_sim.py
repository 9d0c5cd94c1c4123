"""What the lab's simulations share: a clock only the simulation moves, and their keys."""

from __future__ import annotations

from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.schemes.base import get_scheme

__all__ = ["EPOCH", "SimClock", "lab_key"]

#: Simulated time starts here (any positive instant works; this one reads as a 2023 date).
EPOCH = 1_700_000_000.0


class SimClock:
    """The simulated wall clock handed to the server's ``_clock`` hook: days pass in
    milliseconds, and every run of a seed sees the same instants."""

    def __init__(self, start: float = EPOCH) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def lab_key(scheme: str, seed: int) -> ServerKey:
    """A server key derived from ``seed`` (reproducible runs), of the mode ``scheme`` needs."""
    mode = Mode.VOPRF if get_scheme(scheme).verifiable else Mode.OPRF
    return ServerKey.derive(seed.to_bytes(8, "big") * 4, b"contactmatch/audit", mode)
