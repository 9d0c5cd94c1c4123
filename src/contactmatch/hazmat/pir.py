"""SimplePIR: single-server private information retrieval from LWE, in numpy alone.

The scheme is SimplePIR of Henzinger, Hong, Corrigan-Gibbs, Meiklejohn and Vaikuntanathan,
"One Server for the Price of Two" (USENIX Security 2023, https://eprint.iacr.org/2022/949).
The database is a ``rows × cols`` matrix over Z_p; the server publishes a seed for a public
matrix A (``cols × n`` over Z_q) and the *hint* DB·A. To read column j the client sends
``A·s + e + Δ·u_j`` (an LWE encryption of the unit vector u_j), the server multiplies the
database by it, and the client strips ``hint·s`` and rounds away Δ to get the whole column.
The server sees only LWE ciphertexts, so it learns neither which column nor, when the client
pads its batch, how many columns were wanted.

Parameters, all from the reference implementation github.com/ahenzinger/simplepir:

* n = 1024, q = 2^32, σ = 6.4 and the plaintext modulus p per ``log2(m)`` (m = ``cols``):
  ``pir/params.csv`` (columns ``log(n),log(m),log(q),sigma,log(p_simple),p_simple``), read
  by ``Params.PickParams`` in ``pir/params.go``, which takes the first row with
  ``m <= 2^logm``. The table covers m <= 2^21; larger m raise :class:`InvalidInput`.
* σ is the width of ρ(x) = exp(-x²/(2σ²)): ``pir/gauss.go``'s ``cdf_table`` holds
  exp(-x²/(2·6.4²)) (entry 1 is 0.987867).
* the database is stored shifted to ``d - p//2`` (``pir/database.go``: ``D.Data.Sub(p.P / 2)``,
  undone by ``(vals[i] + info.P/2) % q`` in ``ReconstructElem``); this module does the same.

The paper chooses p so that one decryption fails with probability at most 2^-40 and states
~128-bit security for (n, q, σ) = (1024, 2^32, 6.4) by the lattice estimator (see
``docs/pir.md`` for the bound, which reproduces every p of the table).

Hazardous: the caller must never reuse a :class:`QueryState` for a second query, must keep it
in memory, and must pad batches if the *number* of retrievals is to stay private.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from functools import cache
from typing import Final, NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from contactmatch.errors import InvalidInput, MalformedMessage

__all__ = [
    "LOG_Q",
    "LWE_N",
    "P_TABLE",
    "SIGMA",
    "HintDelta",
    "PirDatabase",
    "PirParams",
    "QueryState",
    "expand_matrix",
    "pack_bytes",
    "params_for",
    "query",
    "recover",
    "unpack_bytes",
]

LWE_N: Final = 1024
LOG_Q: Final = 32
SIGMA: Final = 6.4

#: ``(log2 m, p)`` for SimplePIR, n = 1024, log q = 32, σ = 6.4: the ``p_simple`` column of
#: ahenzinger/simplepir ``pir/params.csv``. A database of m columns uses the first row with
#: m <= 2^log2m, as ``PickParams`` in ``pir/params.go`` does.
P_TABLE: Final[tuple[tuple[int, int], ...]] = (
    (13, 991),
    (14, 833),
    (15, 701),
    (16, 589),
    (17, 495),
    (18, 416),
    (19, 350),
    (20, 294),
    (21, 247),
)
MAX_COLS: Final = 1 << P_TABLE[-1][0]
#: Default cap on one :meth:`PirDatabase.answer` call: bounds the work one request can ask for.
DEFAULT_MAX_BATCH: Final = 256

_Q: Final = 1 << LOG_Q
_MASK: Final = _Q - 1
_SEED_LEN: Final = 32
# float64 represents every integer of magnitude <= 2^53; see _limb_width.
_EXACT: Final = 1 << 53
# Discrete Gaussian support [-T, T], T = ceil(12σ): the mass outside is below 2^-100.
_TAIL: Final = math.ceil(12 * SIGMA)
# Rows of A expanded at once while building a hint (about 4 MiB of uint32 each).
_HINT_CHUNK: Final = 1024
_DELTA_VERSION: Final = 1
_DELTA_HEADER: Final = struct.Struct(">BI")  # version, count
_DELTA_ENTRY_BYTES: Final = 4 + 4 + 2  # row u32, column u32, difference i16

U32Array = npt.NDArray[np.uint32]
I64Array = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]
U8Array = npt.NDArray[np.uint8]
RandBytes = Callable[[int], bytes]


def _p_for_cols(cols: int) -> int:
    """The table's p for a database ``cols`` wide (rounded up to the next table entry)."""
    if not 1 <= cols <= MAX_COLS:
        raise InvalidInput(f"PIR supports 1..{MAX_COLS} database columns, not {cols}")
    for log_m, p in P_TABLE:
        if cols <= 1 << log_m:
            return p
    raise InvalidInput(f"PIR supports 1..{MAX_COLS} database columns, not {cols}")  # unreachable


@dataclass(frozen=True, slots=True)
class PirParams:
    """The shape of one PIR database and the plaintext modulus safe for its width.

    ``p`` may be smaller than the table's value (less data per element, more noise margin),
    never larger: the 2^-40 failure bound and the exactness of the float64 products rely on it.
    """

    rows: int
    cols: int
    p: int

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "p"):
            if type(getattr(self, name)) is not int:
                raise InvalidInput(f"PirParams.{name} must be an int")
        if not 1 <= self.rows < _Q:
            raise InvalidInput(f"PIR database rows must be in 1..{_Q - 1}")
        top = _p_for_cols(self.cols)
        if not 2 <= self.p <= top:
            raise InvalidInput(f"p must be in 2..{top} for {self.cols} columns")

    @property
    def n(self) -> int:
        """LWE secret dimension."""
        return LWE_N

    @property
    def q(self) -> int:
        """Ciphertext modulus (arithmetic is on uint32 words, wrapping)."""
        return _Q

    @property
    def sigma(self) -> float:
        """Width of the discrete Gaussian error, ρ(x) = exp(-x²/(2σ²))."""
        return SIGMA

    @property
    def delta(self) -> int:
        """Scaling factor Δ = ⌊q/p⌋ that lifts a plaintext into Z_q."""
        return _Q // self.p

    @property
    def element_bits(self) -> int:
        """Whole bits one element carries when bytes are packed: ⌊log2 p⌋."""
        return self.p.bit_length() - 1

    @property
    def hint_bytes(self) -> int:
        """Size of the hint (rows × n uint32), downloaded once per database version."""
        return self.rows * LWE_N * 4

    @property
    def query_bytes(self) -> int:
        """Upload per retrieval: one uint32 per column."""
        return self.cols * 4

    @property
    def answer_bytes(self) -> int:
        """Download per retrieval: one uint32 per row."""
        return self.rows * 4

    @property
    def _offset(self) -> int:
        # Elements d in [0, p) are stored as d - p//2, as SimplePIR does.
        return self.p // 2


def params_for(rows: int, cols: int) -> PirParams:
    """Parameters for a ``rows × cols`` database with the largest p the table allows.

    Raises:
        InvalidInput: ``cols`` is outside 1..2^21 or ``rows`` outside 1..2^32-1.
    """
    if type(cols) is not int or type(rows) is not int:
        raise InvalidInput("rows and cols must be ints")
    return PirParams(rows=rows, cols=cols, p=_p_for_cols(cols))


# -- the public matrix A ------------------------------------------------------------------


def _check_seed(seed: object) -> bytes:
    if not isinstance(seed, bytes) or len(seed) != _SEED_LEN:
        raise InvalidInput(f"the PIR matrix seed must be {_SEED_LEN} bytes")
    return seed


def expand_matrix(seed: bytes, start: int, stop: int, n: int = LWE_N) -> U32Array:
    """Rows ``start..stop-1`` of the public matrix A, derived from ``seed``.

    A is the keystream of AES-256-CTR under the 32-byte ``seed`` as key, with a 128-bit
    big-endian counter block starting at 0, read as little-endian uint32 words in row-major
    order: ``A[r][k]`` is keystream bytes ``4(r·n + k) .. 4(r·n + k) + 3``. Any row is
    reachable directly (the counter for byte offset o is o // 16), so a server and a client
    expand only the rows they need, and any AES library reproduces A.

    Raises:
        InvalidInput: a seed that is not 32 bytes, or a bad row range.
    """
    key = _check_seed(seed)
    if type(start) is not int or type(stop) is not int or not 0 <= start <= stop:
        raise InvalidInput("matrix rows must satisfy 0 <= start <= stop")
    if type(n) is not int or n < 1:
        raise InvalidInput("matrix width n must be a positive int")
    offset = start * n * 4
    skip = offset % 16
    counter = (offset // 16).to_bytes(16, "big")
    if offset // 16 >= 1 << 128:
        raise InvalidInput("matrix row out of range")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    stream = encryptor.update(bytes(skip + (stop - start) * n * 4))[skip:]
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32).reshape(stop - start, n)


def _expand_rows(seed: bytes, rows: I64Array, n: int = LWE_N) -> U32Array:
    """Arbitrary rows of A at once: AES-ECB on exactly the counter blocks CTR would use."""
    if rows.size == 0:
        return np.zeros((0, n), dtype=np.uint32)
    if n % 4:
        return np.vstack([expand_matrix(seed, int(r), int(r) + 1, n) for r in rows])
    blocks_per_row = n // 4  # 16-byte blocks per row when rows start on a block boundary
    # Counter blocks are 128-bit big-endian; every row index here is < 2^32, so the high
    # 64 bits are zero and the low 64 bits are row·blocks_per_row + k.
    counters = np.zeros((rows.size, blocks_per_row, 2), dtype=">u8")
    counters[:, :, 1] = rows.astype(np.uint64)[:, None] * np.uint64(blocks_per_row) + np.arange(
        blocks_per_row, dtype=np.uint64
    )
    encryptor = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()  # noqa: S305 -- CTR by hand
    stream = encryptor.update(counters.tobytes())
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32).reshape(rows.size, n)


# -- exact products mod 2^32 on float64 BLAS ------------------------------------------------
#
# A float64 GEMM is exact when every product and every partial sum is an integer of magnitude
# at most 2^53: then each addition, in whatever order and blocking BLAS uses (FMA included),
# has an exactly representable result. A partial sum of k terms |x|·|y| is bounded by
# k·max|x|·max|y|, so it suffices that k·max|x|·max|y| <= 2^53. The uint32 side is split into
# L balanced limbs of w bits (each in [-2^(w-1), 2^(w-1))), with w the largest width meeting
# the bound; the L partial products are stacked into one GEMM and recombined mod 2^32.


def _limb_width(inner: int, xmax: int) -> int:
    """Largest limb width w <= 32 with inner · xmax · 2^(w-1) <= 2^53."""
    for w in range(32, 0, -1):
        if inner * xmax * (1 << (w - 1)) <= _EXACT:
            return w
    raise InvalidInput("product too large to compute exactly")  # pragma: no cover


def _limbs(words: U32Array, width: int) -> F64Array:
    """Balanced base-2^width digits of uint32 words: shape (L, *words.shape), float64."""
    count = -(-LOG_Q // width)
    rest = words.astype(np.int64)
    out = np.empty((count, *words.shape), dtype=np.float64)
    for i in range(count):
        bits = min(width, LOG_Q - width * i)
        h = 1 << (bits - 1)
        digit = ((rest + h) & ((1 << bits) - 1)) - h
        out[i] = digit
        rest = (rest - digit) >> bits
    return out


def _combine(parts: F64Array, width: int) -> U32Array:
    """Σ parts[i] · 2^(width·i) mod 2^32 for exact integer-valued float64 partial products."""
    acc = np.zeros(parts.shape[1:], dtype=np.int64)
    for i in range(parts.shape[0]):
        shift = width * i
        # Only the low 32 - shift bits of a part survive the shift mod 2^32; masking first
        # keeps the shifted value inside int64.
        acc += (parts[i].astype(np.int64) & ((1 << (LOG_Q - shift)) - 1)) << shift
    return (acc & _MASK).astype(np.uint32)


def _centred(words: U32Array) -> F64Array:
    """uint32 words as float64 in [-2^31, 2^31) (the same residues mod 2^32)."""
    return words.view(np.int32).astype(np.float64)


def _mulmod_right(left: F64Array, left_max: int, right: U32Array) -> U32Array:
    """left (r × k, exact small integers, |x| <= left_max) · right (k × c uint32) mod 2^32."""
    k, c = right.shape
    width = _limb_width(k, left_max)
    if width == LOG_Q:
        return _combine((left @ _centred(right))[None], width)
    limbs = _limbs(right, width)  # (L, k, c)
    count = limbs.shape[0]
    stacked = np.ascontiguousarray(limbs.transpose(1, 0, 2)).reshape(k, count * c)
    prod = left @ stacked  # (r, L·c)
    return _combine(prod.reshape(-1, count, c).transpose(1, 0, 2), width)


# -- the discrete Gaussian ------------------------------------------------------------------


@cache
def _cdt() -> npt.NDArray[np.uint64]:
    """Cumulative thresholds of D_{Z,σ} on [-T, T], scaled to 2^64, computed to 50 digits.

    A sample is the number of thresholds <= a uniform 64-bit value, minus T. Each probability
    is off by less than 2^-64 from rounding, so the statistical distance to the true discrete
    Gaussian is below (2T+1)·2^-64 + Pr[|x| > T] < 2^-56 for T = 77.
    """
    thresholds = []
    with localcontext() as ctx:
        ctx.prec = 50
        two_s2 = Decimal(2) * Decimal(str(SIGMA)) ** 2
        weights = [(-(Decimal(x) ** 2) / two_s2).exp() for x in range(-_TAIL, _TAIL + 1)]
        total = sum(weights, Decimal(0))
        scale = Decimal(1 << 64)
        acc = Decimal(0)
        for w in weights[:-1]:
            acc += w
            thresholds.append(int((acc / total * scale).to_integral_value()))
    # Thresholds that round to 2^64 can never be reached by a 64-bit value: the points above
    # them (the far tail, each of mass < 2^-65) get probability 0, within the bound above.
    return np.array([t for t in thresholds if t < 1 << 64], dtype=np.uint64)


def _gaussian(count: int, randbytes: RandBytes) -> I64Array:
    """``count`` discrete Gaussian samples (σ = 6.4) from 8 random bytes each."""
    u = np.frombuffer(randbytes(8 * count), dtype="<u8").astype(np.uint64)
    idx = np.searchsorted(_cdt(), u, side="right")
    return idx.astype(np.int64) - _TAIL


# -- the server -----------------------------------------------------------------------------


def _check_elements(params: PirParams, elements: object, shape: tuple[int, ...]) -> I64Array:
    if not isinstance(elements, np.ndarray) or elements.dtype.kind not in "iu":
        raise InvalidInput("PIR elements must be an integer numpy array")
    if elements.shape != shape:
        raise InvalidInput(f"PIR elements must have shape {shape}, not {elements.shape}")
    if elements.size and (int(elements.min()) < 0 or int(elements.max()) >= params.p):
        raise InvalidInput(f"PIR elements must lie in [0, {params.p})")
    return elements.astype(np.int64)


_DELTA_CHUNK = 4096  # delta entries per step of HintDelta.apply (16 MiB of scratch)
_PENDING_MAX = 1 << 22  # delta entries a database keeps for its hint (about 40 MiB)


@dataclass(frozen=True, slots=True, eq=False)
class HintDelta:
    """What a client adds to its hint after :meth:`PirDatabase.update`.

    Entry k says: hint row ``rows[k]`` += ``diffs[k]`` · A[``cols[k]``] mod 2^32. ``diffs``
    is the exact integer difference of the stored (shifted) elements, in (-p, p), *not*
    reduced mod p: the hint is linear over Z_q and p does not divide q, so a difference off by
    a multiple of p would corrupt the hint. Entries are sorted by (column, row), unique, and
    non-zero, which makes the encoding canonical.
    """

    rows: npt.NDArray[np.uint32]
    cols: npt.NDArray[np.uint32]
    diffs: npt.NDArray[np.int16]

    def __len__(self) -> int:
        return int(self.rows.size)

    def encode(self) -> bytes:
        """Serialise: ``version u8 | count u32 BE | rows u32 LE | cols u32 LE | diffs i16 LE``.

        Each array holds ``count`` values; version is 1.
        """
        return (
            _DELTA_HEADER.pack(_DELTA_VERSION, len(self))
            + self.rows.astype("<u4").tobytes()
            + self.cols.astype("<u4").tobytes()
            + self.diffs.astype("<i2").tobytes()
        )

    @classmethod
    def decode(cls, data: bytes, params: PirParams) -> HintDelta:
        """Parse and validate an encoded delta for a database of ``params``' shape.

        Raises:
            MalformedMessage: wrong version or length, an index out of range, a difference
                outside (-p, p) or zero, or entries not strictly sorted by (column, row).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedMessage("a hint delta must be bytes")
        raw = bytes(data)
        if len(raw) < _DELTA_HEADER.size:
            raise MalformedMessage("hint delta too short")
        version, count = _DELTA_HEADER.unpack_from(raw)
        if version != _DELTA_VERSION:
            raise MalformedMessage("unknown hint delta version")
        if len(raw) != _DELTA_HEADER.size + count * _DELTA_ENTRY_BYTES:
            raise MalformedMessage("hint delta length does not match its count")
        at = _DELTA_HEADER.size
        rows = np.frombuffer(raw, dtype="<u4", count=count, offset=at).astype(np.uint32)
        cols = np.frombuffer(raw, dtype="<u4", count=count, offset=at + 4 * count)
        diffs = np.frombuffer(raw, dtype="<i2", count=count, offset=at + 8 * count)
        delta = cls(rows=rows, cols=cols.astype(np.uint32), diffs=diffs.astype(np.int16))
        delta._validate(params)
        return delta

    def _validate(self, params: PirParams) -> None:
        if not (self.rows.shape == self.cols.shape == self.diffs.shape) or self.rows.ndim != 1:
            raise MalformedMessage("hint delta arrays are not aligned")
        if not len(self):
            return
        if int(self.rows.max()) >= params.rows or int(self.cols.max()) >= params.cols:
            raise MalformedMessage("hint delta index out of range")
        mag = np.abs(self.diffs.astype(np.int64))
        if int(mag.max()) >= params.p or int(mag.min()) == 0:
            raise MalformedMessage("hint delta difference out of range")
        keys = self.cols.astype(np.int64) * params.rows + self.rows.astype(np.int64)
        if keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            raise MalformedMessage("hint delta entries are not sorted and unique")

    def apply(self, hint: U32Array, seed: bytes, params: PirParams | None = None) -> U32Array:
        """Add the delta to ``hint`` in place (and return it), expanding only the rows of A
        for the changed columns, each once.

        Raises:
            InvalidInput: a hint that is not a writable uint32 (rows × n) array or a bad seed.
            MalformedMessage: the delta does not fit the hint (checked against ``params``
                when given, else against the hint's row count).
        """
        _check_seed(seed)
        if (
            not isinstance(hint, np.ndarray)
            or hint.dtype != np.uint32
            or hint.ndim != 2
            or hint.shape[1] != LWE_N
            or not hint.flags.writeable
        ):
            raise InvalidInput("the hint must be a writable uint32 array of shape (rows, n)")
        if params is not None:
            if hint.shape[0] != params.rows:
                raise InvalidInput("the hint does not match the database's rows")
            self._validate(params)
        elif len(self) and int(self.rows.max()) >= hint.shape[0]:
            raise MalformedMessage("hint delta index out of range")
        if not len(self):
            return hint
        cols, inverse = np.unique(self.cols.astype(np.int64), return_inverse=True)
        a_rows = _expand_rows(seed, cols)  # each changed column's row of A, once
        # uint32 products wrap mod 2^32, which is the hint's arithmetic: a difference as its
        # two's complement times A's word is the difference times the word, mod 2^32. Entries
        # are summed per hint row (sorted, reduceat) in chunks that bound the scratch memory.
        order = np.argsort(self.rows, kind="stable")
        rows = self.rows[order].astype(np.intp)
        diffs = self.diffs[order].astype(np.int64).astype(np.uint32)
        which = inverse[order]
        for start in range(0, rows.shape[0], _DELTA_CHUNK):
            stop = min(rows.shape[0], start + _DELTA_CHUNK)
            r = rows[start:stop]
            contrib = diffs[start:stop, None] * a_rows[which[start:stop]]
            heads = np.flatnonzero(np.concatenate(([True], r[1:] != r[:-1])))
            hint[r[heads]] += np.add.reduceat(contrib, heads, axis=0, dtype=np.uint32)
        return hint


class PirDatabase:
    """The server side: a database of elements in [0, p), its hint and batched answers.

    The elements are stored once, shifted to ``d - p//2`` as float64 in the orientation the
    answer GEMM ran fastest in (``rows × cols``, C-contiguous: 144 ms against 159 ms for the
    transposed layout at 9000 × 4096 × 64; see ``docs/pir.md``), so an answer is one BLAS
    call with no conversion of the database.
    """

    __slots__ = ("_cached_hint", "_db", "_max_batch", "_pending", "params")

    def __init__(
        self, params: PirParams, elements: npt.NDArray[np.integer], *, max_batch: int = 256
    ) -> None:
        """Build from ``elements`` (rows × cols integers in [0, p)).

        Raises:
            InvalidInput: a wrong shape or dtype, an element outside [0, p), max_batch < 1.
        """
        if not isinstance(params, PirParams):
            raise InvalidInput("params must be PirParams")
        if type(max_batch) is not int or max_batch < 1:
            raise InvalidInput("max_batch must be a positive int")
        values = _check_elements(params, elements, (params.rows, params.cols))
        self.params = params
        self._max_batch = max_batch
        shifted = (values - params._offset).astype(np.float64)
        self._db: F64Array = np.ascontiguousarray(shifted)
        self._cached_hint: tuple[bytes, U32Array] | None = None
        self._pending: list[HintDelta] = []  # updates since the kept hint, not yet applied

    def __repr__(self) -> str:
        return f"<PirDatabase rows={self.params.rows} cols={self.params.cols} p={self.params.p}>"

    @property
    def max_batch(self) -> int:
        """The largest batch :meth:`answer` accepts."""
        return self._max_batch

    def elements(self) -> I64Array:
        """The database as int64 elements in [0, p) (rows × cols); a copy."""
        return self._db.astype(np.int64) + self.params._offset

    def columns(self, cols: npt.NDArray[np.integer]) -> I64Array:
        """Some columns' elements in [0, p), one column per row (len(cols) × rows); a copy.

        Raises:
            InvalidInput: a column index out of range.
        """
        idx = _check_cols(self.params, cols)
        return self._db[:, idx].T.astype(np.int64) + self.params._offset

    def hint(self, seed: bytes) -> U32Array:
        """DB·A mod 2^32 (rows × n uint32), with A expanded from ``seed`` in chunks of rows.

        The result is kept, and :meth:`update`'s deltas are applied to it on the next call;
        each call returns a copy.

        Raises:
            InvalidInput: a seed that is not 32 bytes.
        """
        _check_seed(seed)
        if self._cached_hint is not None and self._cached_hint[0] == seed:
            for delta in self._pending:
                delta.apply(self._cached_hint[1], seed)
            self._pending.clear()
            return self._cached_hint[1].copy()
        p = self.params
        acc = np.zeros((p.rows, LWE_N), dtype=np.uint32)
        for start in range(0, p.cols, _HINT_CHUNK):
            stop = min(p.cols, start + _HINT_CHUNK)
            a = expand_matrix(seed, start, stop)
            # Each chunk's product is exact on its own; the uint32 sum wraps mod 2^32.
            acc += _mulmod_right(self._db[:, start:stop], p._offset, a)
        self._cached_hint = (seed, acc)
        self._pending.clear()
        return acc.copy()

    def answer(self, queries: U32Array) -> U32Array:
        """Answers (B × rows uint32) to B queries (B × cols uint32): one GEMM for the batch.

        Raises:
            MalformedMessage: not a uint32 array of shape (B, cols).
            InvalidInput: B above ``max_batch``.
        """
        p = self.params
        if not isinstance(queries, np.ndarray) or queries.dtype != np.uint32:
            raise MalformedMessage("PIR queries must be a uint32 array")
        if queries.ndim != 2 or queries.shape[1] != p.cols:
            raise MalformedMessage(f"PIR queries must have shape (B, {p.cols})")
        batch = queries.shape[0]
        if batch > self._max_batch:
            raise InvalidInput(f"batch larger than {self._max_batch} queries")
        width = _limb_width(p.cols, p._offset)
        limbs = _limbs(queries, width)  # (L, B, cols)
        count = limbs.shape[0]
        prod = self._db @ limbs.reshape(count * batch, p.cols).T  # (rows, L·B)
        # Combining in the GEMM's (rows, B) layout and transposing once is cheaper than
        # combining strided (B, rows) views.
        parts = prod.reshape(p.rows, count, batch).transpose(1, 0, 2)
        return np.ascontiguousarray(_combine(parts, width).T)

    def update(
        self,
        rows_idx: npt.ArrayLike,
        cols_idx: npt.ArrayLike,
        values: npt.ArrayLike,
    ) -> HintDelta:
        """Set elements (aligned index and value arrays) and return the clients' hint delta.

        Unchanged elements are left out of the delta. The server's kept hint, if any, is
        updated too.

        Raises:
            InvalidInput: unaligned arrays, an index out of range, a repeated position, or a
                value outside [0, p).
        """
        p = self.params
        try:
            r = np.asarray(rows_idx)
            c = np.asarray(cols_idx)
            v = np.asarray(values)
        except (TypeError, ValueError) as exc:
            raise InvalidInput("update indices and values must be integer arrays") from exc
        if any(a.ndim != 1 or (a.size and a.dtype.kind not in "iu") for a in (r, c, v)):
            raise InvalidInput("update indices and values must be 1-D integer arrays")
        if not r.size == c.size == v.size:
            raise InvalidInput("update indices and values must be aligned")
        r, c, v = (a.astype(np.int64) for a in (r, c, v))
        if r.size and (
            int(r.min()) < 0 or int(r.max()) >= p.rows or int(c.min()) < 0 or int(c.max()) >= p.cols
        ):
            raise InvalidInput("update index out of range")
        if v.size and (int(v.min()) < 0 or int(v.max()) >= p.p):
            raise InvalidInput(f"update values must lie in [0, {p.p})")
        keys = c * p.rows + r
        order = np.argsort(keys, kind="stable")
        keys, r, c, v = keys[order], r[order], c[order], v[order]
        if keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            raise InvalidInput("update names the same position twice")
        new = (v - p._offset).astype(np.float64)
        diffs = (new - self._db[r, c]).astype(np.int64)
        self._db[r, c] = new
        keep = diffs != 0
        delta = HintDelta(
            rows=r[keep].astype(np.uint32),
            cols=c[keep].astype(np.uint32),
            diffs=diffs[keep].astype(np.int16),
        )
        if self._cached_hint is not None and len(delta):
            # Applied when the hint is next asked for, not here: a server patches its
            # database every refresh, but publishes a whole hint only to new clients. Past
            # a bound, recomputing the hint is cheaper than keeping (and applying) the deltas.
            self._pending.append(delta)
            if sum(len(d) for d in self._pending) > _PENDING_MAX:
                self._cached_hint = None
                self._pending.clear()
        return delta


# -- the client -----------------------------------------------------------------------------


class QueryState:
    """The client's secrets for one batch of queries: the LWE secrets s_b.

    Use once, keep in memory: its repr shows the batch size only, and it refuses pickling
    and copying (a pickle lands in caches and crash dumps and would reveal the columns).
    """

    __slots__ = ("_secrets",)

    def __init__(self, secrets: U32Array) -> None:
        self._secrets = secrets  # (B, n) uint32

    def __len__(self) -> int:
        return int(self._secrets.shape[0])

    def __repr__(self) -> str:
        return f"<QueryState batch={len(self)}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("QueryState holds LWE secrets and cannot be pickled or copied")


def _check_cols(params: PirParams, cols: Sequence[int] | npt.NDArray[np.integer]) -> I64Array:
    try:
        idx = np.asarray(cols)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("query columns must be integers") from exc
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise InvalidInput("query columns must be a 1-D sequence of integers")
    idx = idx.astype(np.int64)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= params.cols):
        raise InvalidInput("query column out of range")
    return idx


def _query_with(
    params: PirParams,
    seed: bytes,
    cols: Sequence[int] | npt.NDArray[np.integer],
    randbytes: RandBytes,
) -> tuple[QueryState, U32Array]:
    """:func:`query` with injected randomness: tests and vectors only."""
    _check_seed(seed)
    idx = _check_cols(params, cols)
    batch = idx.size
    secrets = np.frombuffer(randbytes(4 * LWE_N * batch), dtype="<u4").astype(np.uint32)
    secrets = secrets.reshape(batch, LWE_N)
    errors = _gaussian(batch * params.cols, randbytes).reshape(batch, params.cols)
    out = np.empty((batch, params.cols), dtype=np.uint32)
    for start in range(0, params.cols, _HINT_CHUNK):
        stop = min(params.cols, start + _HINT_CHUNK)
        a = expand_matrix(seed, start, stop)
        # (A·S)ᵀ for this block of A's rows: S is the uint32 side, split into limbs.
        out[:, start:stop] = _mulmod_right(_centred(a), 1 << 31, secrets.T).T
    noisy = out.astype(np.int64) + errors
    noisy[np.arange(batch), idx] += params.delta
    return QueryState(secrets), (noisy & _MASK).astype(np.uint32)


def query(
    params: PirParams, seed: bytes, cols: Sequence[int] | npt.NDArray[np.integer]
) -> tuple[QueryState, U32Array]:
    """Encrypt B column indices: query_b = A·s_b + e_b + Δ·u_{cols[b]} mod 2^32.

    s_b is uniform in Z_q^n and e_b discrete Gaussian (σ = 6.4), both from ``os.urandom``.

    Returns:
        The secret state for :func:`recover` and the queries, uint32 of shape (B, cols).

    Raises:
        InvalidInput: a bad seed or a column outside [0, cols).
    """
    return _query_with(params, seed, cols, os.urandom)


def _phases(params: PirParams, hint: U32Array, state: QueryState, answers: U32Array) -> U32Array:
    """answer_b - hint·s_b mod 2^32 = Δ·(d - p//2) + noise, shape (B, rows)."""
    if not isinstance(state, QueryState):
        raise InvalidInput("state must be a QueryState")
    if (
        not isinstance(hint, np.ndarray)
        or hint.dtype != np.uint32
        or hint.shape != (params.rows, LWE_N)
    ):
        raise InvalidInput(f"the hint must be uint32 of shape ({params.rows}, {LWE_N})")
    batch = len(state)
    if (
        not isinstance(answers, np.ndarray)
        or answers.dtype != np.uint32
        or answers.shape != (batch, params.rows)
    ):
        raise MalformedMessage(f"PIR answers must be uint32 of shape ({batch}, {params.rows})")
    # hint·S: both sides are full 32-bit words, so the secrets are split into limbs.
    hs = _mulmod_right(_centred(hint), 1 << 31, state._secrets.T)  # (rows, B)
    return answers - hs.T  # uint32 arithmetic wraps mod 2^32


def recover(
    params: PirParams, hint: U32Array, state: QueryState, answers: U32Array
) -> npt.NDArray[np.int64]:
    """Decrypt B answers to the B requested database columns (B × rows, elements in [0, p)).

    Raises:
        InvalidInput: a hint of the wrong shape or dtype, or not a QueryState.
        MalformedMessage: answers that are not uint32 of shape (B, rows).
    """
    v = _phases(params, hint, state, answers).astype(np.int64)
    delta = params.delta
    lo = -params._offset
    # Δ·c + noise with c in [lo, lo + p) and |noise| < Δ/2 lies in [Δ·lo - Δ/2, Δ·(lo+p) - Δ/2),
    # a window of width Δ·p <= q: shift it to [0, Δ·p) and divide (works for even p too).
    # Since lo = -p//2 this is Δ·d + Δ/2 + noise, so t // Δ is d itself.
    t = (v + delta // 2 - delta * lo) & _MASK
    return (t // delta) % params.p


# -- packing bytes into elements -----------------------------------------------------------


def _check_bits(element_bits: int) -> None:
    if type(element_bits) is not int or not 1 <= element_bits <= 16:
        raise InvalidInput("element_bits must be an int in 1..16")


def pack_bytes(data: U8Array, element_bits: int) -> npt.NDArray[np.uint16]:
    """Pack each row of bytes (k × L uint8) into ⌈8L/element_bits⌉ elements, big-endian bits.

    The last element of a row is zero-padded at its low end.

    Raises:
        InvalidInput: not a 2-D uint8 array, or element_bits outside 1..16.
    """
    _check_bits(element_bits)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise InvalidInput("pack_bytes takes a 2-D uint8 array")
    k, length = data.shape
    count = -(-8 * length // element_bits)
    bits = np.zeros((k, count * element_bits), dtype=np.uint16)
    bits[:, : 8 * length] = np.unpackbits(data, axis=1)
    weights = (1 << np.arange(element_bits - 1, -1, -1)).astype(np.uint16)
    packed = bits.reshape(k, count, element_bits) @ weights
    return packed.astype(np.uint16)


def unpack_bytes(
    elements: npt.NDArray[np.integer], element_bits: int, length: int
) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`pack_bytes`: k × ⌈8·length/element_bits⌉ elements to k × length bytes.

    Raises:
        MalformedMessage: a wrong element count, an element of more than element_bits bits,
            or non-zero padding bits (so each byte string has exactly one packing).
        InvalidInput: element_bits outside 1..16 or a negative length.
    """
    _check_bits(element_bits)
    if type(length) is not int or length < 0:
        raise InvalidInput("length must be a non-negative int")
    count = -(-8 * length // element_bits)
    if (
        not isinstance(elements, np.ndarray)
        or elements.dtype.kind not in "iu"
        or elements.ndim != 2
        or elements.shape[1] != count
    ):
        raise MalformedMessage(f"expected a 2-D integer array with {count} elements per row")
    values = elements.astype(np.int64)
    if values.size and (int(values.min()) < 0 or int(values.max()) >= 1 << element_bits):
        raise MalformedMessage(f"element wider than {element_bits} bits")
    shifts = np.arange(element_bits - 1, -1, -1, dtype=np.int64)
    bits = ((values[:, :, None] >> shifts) & 1).astype(np.uint8)
    bits = bits.reshape(values.shape[0], count * element_bits)
    if bits[:, 8 * length :].any():
        raise MalformedMessage("non-zero padding bits")
    return np.packbits(bits[:, : 8 * length], axis=1)
