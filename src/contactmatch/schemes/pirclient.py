"""The client's side of ``pir``: the hint it holds, and the padded retrieval of its hits.

:class:`PirHint` is what a client downloads once and patches with deltas (from the hint
endpoint, or inside each answer); :class:`PirRetrieval` turns a discovery's filter hits into
padded batches of SimplePIR queries and opens the client's own entries in the answers.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from contactmatch.errors import MalformedMessage, UnknownKeyId
from contactmatch.hazmat.pir import HintDelta, QueryState, query, recover, unpack_bytes
from contactmatch.registry.pir import PirShape, column_of, decode_hint
from contactmatch.schemes.sealed import SEAL_CHECK_BYTES, bucket32, open_sealed, seal_check
from contactmatch.schemes.wire import PirRequest, PirResponse, decode

__all__ = ["PirHint", "PirRetrieval"]

U32 = npt.NDArray[np.uint32]


class PirHint:
    """A downloaded PIR hint (the database's ``DB·A``), kept current by deltas.

    Build from the whole hint's bytes; :meth:`update` takes a whole hint or a delta.
    """

    def __init__(self, data: bytes) -> None:
        blob = decode_hint(data)
        if blob.hint is None:
            raise MalformedMessage("a PIR hint delta needs a whole hint to patch")
        self.key_id = blob.key_id
        self.shape: PirShape = blob.shape
        self.seed = blob.seed
        self.version = blob.version
        self.matrix: U32 = blob.hint

    def __repr__(self) -> str:
        return f"<PirHint v={self.version} rows={self.shape.rows} cols={self.shape.cols}>"

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes)

    def update(self, data: bytes) -> None:
        """Install a whole hint, or patch this one with a delta from its version.

        Raises:
            MalformedMessage: the blob does not decode, or is a delta from another version
                or for another shape (the hint held is then unchanged).
        """
        blob = decode_hint(data)
        if blob.hint is not None:
            self.__init__(data)  # type: ignore[misc]  # a whole hint replaces everything
            return
        assert blob.delta is not None
        if blob.since != self.version or blob.shape != self.shape or blob.key_id != self.key_id:
            raise MalformedMessage("the PIR hint delta is not from the hint held")
        blob.delta.apply(self.matrix, self.seed, self.shape.params)
        self.version = blob.version

    def patch(self, delta: bytes, version: int) -> None:
        """Apply the delta an answer carries (from this hint's version to ``version``)."""
        if delta:
            HintDelta.decode(delta, self.shape.params).apply(
                self.matrix, self.seed, self.shape.params
            )
        elif version != self.version:
            raise MalformedMessage("a PIR answer of another version came without its delta")
        self.version = version


class PirRetrieval:
    """The PIR rounds of one discovery: its hits' columns in padded batches, opened.

    Args:
        scheme: the scheme's name (for the requests).
        key_id: the key the tokens are under.
        hint: the hint held; answers' deltas patch it in place.
        tokens: the filter hits, ``{number: token}``.
        batch: queries per request (the server's published batch): every request carries
            exactly this many, real or padding.
    """

    def __init__(
        self, scheme: str, key_id: str, hint: PirHint, tokens: Mapping[str, bytes], batch: int
    ) -> None:
        if not hmac.compare_digest(hint.key_id.encode(), key_id.encode()):
            raise UnknownKeyId("the PIR hint is for another key; download it again")
        if not batch >= 1:
            raise MalformedMessage("the PIR batch must be positive")
        self.scheme = scheme
        self.key_id = key_id
        self.hint = hint
        self.batch = batch
        self._tokens = dict(tokens)
        self._by_col: dict[int, list[str]] = {}
        for number, tok in self._tokens.items():
            col = column_of(bucket32(tok), hint.shape.cols)
            self._by_col.setdefault(col, []).append(number)
        cols = sorted(self._by_col)
        self._chunks = [cols[i : i + batch] for i in range(0, len(cols), batch)]
        self._state: QueryState | None = None
        self._asked: list[int] = []
        self.matches: dict[str, str] = {}
        self.requests = 0

    @property
    def done(self) -> bool:
        return not self._chunks and self._state is None

    def next_request(self) -> bytes | None:
        """The next padded batch of queries, or None when every hit was retrieved."""
        if self._state is not None:
            raise MalformedMessage("a PIR answer is awaited")
        if not self._chunks:
            return None
        real = self._chunks.pop(0)
        m = self.hint.shape.cols
        # Padding: uniformly random columns. The queries are LWE ciphertexts either way;
        # what padding hides is the count, which the fixed batch size fixes.
        cols = real + [secrets.randbelow(m) for _ in range(self.batch - len(real))]
        self._state, queries = query(self.hint.shape.params, self.hint.seed, cols)
        self._asked = real
        self.requests += 1
        return PirRequest(
            scheme=self.scheme,
            key_id=self.key_id,
            version=self.hint.version,
            batch=self.batch,
            queries=queries.astype("<u4").tobytes(),
        ).encode()

    def receive(self, response: bytes | PirResponse) -> None:
        """Open the entries of the answered columns; the answer's delta patches the hint.

        Raises:
            MalformedMessage: the answer does not fit the request.
            UnknownKeyId: the answer is under another key.
        """
        msg = response if isinstance(response, PirResponse) else decode(response, PirResponse)
        state = self._state
        if state is None:
            raise MalformedMessage("no PIR answer is awaited")
        if not hmac.compare_digest(msg.key_id.encode(), self.key_id.encode()):
            raise UnknownKeyId("the PIR answer is under another key")
        shape = self.hint.shape
        if msg.batch != self.batch or len(msg.answers) != self.batch * shape.rows * 4:
            raise MalformedMessage("the PIR answer does not fit the request")
        self.hint.patch(msg.delta, msg.version)
        answers = np.frombuffer(msg.answers, dtype="<u4").astype(np.uint32)
        values = recover(shape.params, self.hint.matrix, state, answers.reshape(self.batch, -1))
        self._state = None
        for b, col in enumerate(self._asked):
            self._open(values[b], self._by_col[col])

    def _open(self, column: npt.NDArray[np.int64], numbers: list[str]) -> None:
        shape = self.hint.shape
        if int(column.max(initial=0)) >= 1 << shape.element_bits:
            raise MalformedMessage("a PIR answer does not decode under the hint held")
        slots = unpack_bytes(
            column.reshape(shape.bands, shape.h), shape.element_bits, shape.slot_bytes
        )
        lens = slots[:, 0].astype(np.int64)
        checks = slots[:, 1 : 1 + SEAL_CHECK_BYTES]
        for number in numbers:
            tok = self._tokens[number]
            want = np.frombuffer(seal_check(tok), dtype=np.uint8)
            for band in np.flatnonzero((checks == want).all(axis=1) & (lens > SEAL_CHECK_BYTES)):
                n = int(lens[band])
                if n > shape.slot_bytes - 1:
                    continue
                uid = open_sealed(tok, slots[band, 1 : 1 + n].tobytes())
                if uid is not None:
                    self.matches[number] = uid
                    break
