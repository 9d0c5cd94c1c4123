"""The safe OPRF layer: batch-oriented client and server objects over RFC 9497 (ristretto255).

One discovery round::

    client = OprfClient(Mode.VOPRF, public_keys=published)      # pinned {key_id: pkS}
    state, blinded = client.blind(numbers)                       # numbers: E.164 as bytes
    evaluation = server.evaluate_batch(blinded)                  # sent back over the wire
    tokens = client.finalize(state, evaluation)                  # checks key id and proof

The server precomputes the tokens of registered numbers with ``server.evaluate_tokens``; the
client caches its tokens under ``tokens.key_id`` and refreshes them when a later evaluation
names another key (rotation). Randomness is always drawn here, never taken from the caller.
In VOPRF mode the client only accepts evaluations under a key it has pinned, with a valid
proof: the server cannot single out one user with a key of their own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from contactmatch.errors import InvalidInput, InvalidKey, UnknownKeyId, VerificationFailed
from contactmatch.hazmat import oprf as _oprf
from contactmatch.hazmat import ristretto as _r255
from contactmatch.hazmat.oprf import Mode
from contactmatch.keys import KeyRing, ServerKey, key_id_for

__all__ = [
    "BlindState",
    "Evaluation",
    "Mode",
    "OprfClient",
    "OprfServer",
    "Tokens",
]

_SAFE_MODES = (Mode.OPRF, Mode.VOPRF)
#: Default cap on one request: bounds the work a single client can ask for.
DEFAULT_MAX_BATCH = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class BlindState:
    """The client's secret state between :meth:`OprfClient.blind` and ``finalize``.

    Holds the inputs and blinds: keep it in memory, never send or log it (its repr shows only
    the batch size).
    """

    mode: Mode
    inputs: tuple[bytes, ...] = field(repr=False)
    blinds: tuple[bytes, ...] = field(repr=False)
    blinded_elements: tuple[bytes, ...] = field(repr=False)

    def __len__(self) -> int:
        return len(self.inputs)

    def __repr__(self) -> str:
        return f"<BlindState mode={self.mode.name} n={len(self)}>"

    def __reduce__(self) -> NoReturn:
        # Like ServerKey: a pickle lands in caches, queues and crash dumps, and this one would
        # carry the numbers and the blinds that unmask them (copy and deepcopy come here too).
        raise TypeError("BlindState holds the client's blinds and cannot be pickled or copied")


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """The server's answer to one batch: aligned evaluated elements, the key id, the proof."""

    key_id: str
    mode: Mode
    evaluated_elements: tuple[bytes, ...]
    proof: bytes | None = None

    def __len__(self) -> int:
        return len(self.evaluated_elements)

    def __repr__(self) -> str:
        return f"<Evaluation key_id={self.key_id} mode={self.mode.name} n={len(self)}>"


@dataclass(frozen=True, slots=True, kw_only=True)
class Tokens:
    """PRF outputs (64 bytes each) aligned with the inputs, and the key id they were made under.

    Tokens made under different key ids never match: compare only within one key id.
    """

    key_id: str
    tokens: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.tokens)

    def __getitem__(self, i: int) -> bytes:
        return self.tokens[i]

    def __repr__(self) -> str:
        return f"<Tokens key_id={self.key_id} n={len(self)}>"


def _safe_mode(mode: int) -> Mode:
    try:
        m = Mode(mode)
    except ValueError:
        m = None
    if m not in _SAFE_MODES:
        raise InvalidInput("the safe layer serves OPRF and VOPRF; POPRF is in contactmatch.hazmat")
    assert m is not None
    return m


def _check_inputs(inputs: Sequence[bytes]) -> tuple[bytes, ...]:
    items = tuple(inputs)
    if any(type(x) is not bytes for x in items):
        raise InvalidInput("inputs must be bytes")
    return items


class OprfClient:
    """Blinds a batch of inputs, then unblinds the server's evaluation into tokens."""

    __slots__ = ("_mode", "_public_keys")

    def __init__(
        self, mode: Mode = Mode.VOPRF, *, public_keys: Mapping[str, bytes] | None = None
    ) -> None:
        """Create a client for one protocol mode.

        Args:
            mode: ``Mode.OPRF`` or ``Mode.VOPRF``.
            public_keys: ``{key_id: pkS}`` of the keys the client accepts, obtained through an
                authenticated channel (shipped with the app, a transparency log). Required for
                VOPRF; in OPRF mode, if given, evaluations under other key ids are refused too.

        Raises:
            InvalidInput: an unsupported mode.
            InvalidKey: a public key is invalid or does not match its key id.
        """
        self._mode = _safe_mode(mode)
        self._public_keys: dict[str, bytes] = {}
        self.set_public_keys(public_keys or {})

    @property
    def mode(self) -> Mode:
        """The protocol mode."""
        return self._mode

    @property
    def key_ids(self) -> frozenset[str]:
        """Ids of the pinned keys."""
        return frozenset(self._public_keys)

    def set_public_keys(self, public_keys: Mapping[str, bytes]) -> None:
        """Replace the pinned keys (after fetching a fresh, authenticated list).

        Raises:
            InvalidKey: a key is not a valid element or does not hash to its key id.
        """
        checked = {}
        for kid, pk in public_keys.items():
            if type(pk) is not bytes or not _r255.is_valid_element(pk):
                raise InvalidKey("a pinned public key is not a valid ristretto255 element")
            if key_id_for(pk, self._mode) != kid:
                raise InvalidKey("a pinned public key does not match its key id")
            checked[kid] = pk
        self._public_keys = checked

    def blind(self, inputs: Sequence[bytes]) -> tuple[BlindState, list[bytes]]:
        """Blind a batch with fresh random scalars.

        Args:
            inputs: the private inputs (normalised numbers as bytes).

        Returns:
            ``(state, blinded_elements)``: keep ``state``, send ``blinded_elements``.

        Raises:
            InvalidInput: an input is not bytes or is too long, or the batch is empty.
        """
        items = _check_inputs(inputs)
        if not items:
            raise InvalidInput("empty batch")
        blinds, blinded = _oprf._blind_many(items, self._mode)
        state = BlindState(
            mode=self._mode, inputs=items, blinds=tuple(blinds), blinded_elements=tuple(blinded)
        )
        return state, blinded

    def finalize(self, state: BlindState, evaluation: Evaluation) -> Tokens:
        """Check the evaluation (mode, key id, size, proof) and turn it into tokens.

        Raises:
            UnknownKeyId: the evaluation names a key that is not pinned; refresh the pinned
                keys (and cached tokens) and retry.
            VerificationFailed: the evaluation is malformed, has the wrong size, lacks or fails
                its proof, or contains invalid elements.
            InvalidInput: ``state`` belongs to another mode.
        """
        if state.mode != self._mode:
            raise InvalidInput("this state was made by a client of another mode")
        if not isinstance(evaluation, Evaluation) or evaluation.mode != self._mode:
            raise VerificationFailed
        if len(evaluation) != len(state):
            raise VerificationFailed
        pk = None
        if self._mode is Mode.VOPRF or self._public_keys:
            pk = self._public_keys.get(evaluation.key_id)
            if pk is None:
                raise UnknownKeyId("the evaluation names a key this client has not pinned")
        if self._mode is Mode.VOPRF:
            if evaluation.proof is None:
                raise VerificationFailed
            outputs = _oprf.finalize(
                state.inputs, state.blinds, evaluation.evaluated_elements, self._mode,
                blinded_elements=state.blinded_elements, pk=pk, proof=evaluation.proof,
            )  # fmt: skip
        else:
            outputs = _oprf.finalize(
                state.inputs, state.blinds, evaluation.evaluated_elements, self._mode
            )
        return Tokens(key_id=evaluation.key_id, tokens=tuple(outputs))

    def __repr__(self) -> str:
        return f"<OprfClient mode={self._mode.name} pinned={len(self._public_keys)}>"


class OprfServer:
    """Evaluates blinded batches and precomputes tokens under the keys of a :class:`KeyRing`."""

    __slots__ = ("_max_batch", "_ring", "_workers")

    def __init__(
        self,
        keys: ServerKey | KeyRing,
        *,
        workers: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        """Serve one key or a ring of keys (current plus previous during a rotation).

        Args:
            keys: a single key or a key ring.
            workers: threads per batch; ``None`` uses every core, ``1`` the calling thread.
            max_batch: the largest batch one ``evaluate_batch`` call accepts.

        Raises:
            InvalidInput: the keys serve POPRF (use the hazmat layer for it).
        """
        self._ring = keys if isinstance(keys, KeyRing) else KeyRing(keys)
        _safe_mode(self._ring.mode)
        self._workers = workers
        self._max_batch = max_batch

    @property
    def mode(self) -> Mode:
        """The protocol mode of the served keys."""
        return self._ring.mode

    @property
    def key_ring(self) -> KeyRing:
        """The served keys; rotate and retire through it."""
        return self._ring

    @property
    def current_key_id(self) -> str:
        """Id of the key new evaluations use."""
        return self._ring.current.key_id

    def public_keys(self) -> dict[str, bytes]:
        """``{key_id: pkS}`` of every served key: publish these for clients to pin."""
        return self._ring.public_keys()

    def evaluate_batch(
        self, blinded_elements: Sequence[bytes], *, key_id: str | None = None
    ) -> Evaluation:
        """Evaluate a client's blinded batch (with a batched proof in VOPRF mode).

        Args:
            blinded_elements: the client's blinded elements (untrusted).
            key_id: a served key to use instead of the current one (e.g. a client finishing a
                refresh under the previous key during its grace period).

        Raises:
            VerificationFailed: an element is malformed, non-canonical or the identity.
            UnknownKeyId: ``key_id`` is not served.
            InvalidInput: the batch is empty or larger than ``max_batch``.
        """
        if len(blinded_elements) > self._max_batch:
            raise InvalidInput(f"batch larger than {self._max_batch} elements")
        key = self._ring.get(key_id)
        evaluated, proof = _oprf.blind_evaluate(
            key.private_bytes(), blinded_elements, key.mode, workers=self._workers
        )
        return Evaluation(
            key_id=key.key_id, mode=key.mode, evaluated_elements=tuple(evaluated), proof=proof
        )

    def evaluate_tokens(self, inputs: Sequence[bytes], *, key_id: str | None = None) -> Tokens:
        """Precompute tokens of registered inputs directly with the key (RFC 9497 Evaluate).

        Equal to what a client's ``finalize`` yields for the same input and key id.

        Raises:
            UnknownKeyId: ``key_id`` is not served.
            InvalidInput: an input is not bytes or is too long.
        """
        items = _check_inputs(inputs)
        key = self._ring.get(key_id)
        tokens = _oprf.evaluate_many(key.private_bytes(), items, key.mode, workers=self._workers)
        return Tokens(key_id=key.key_id, tokens=tuple(tokens))

    def __repr__(self) -> str:
        return f"<OprfServer mode={self.mode.name} current={self.current_key_id}>"
