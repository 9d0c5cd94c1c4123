"""The registry laid out for keyword PIR: a SimplePIR database whose version names its content.

The ``pir`` membership method lets a client retrieve the ``(sealed user id)`` entries of its
filter hits without the server learning which (:mod:`contactmatch.hazmat.pir`). This module
turns a :class:`~contactmatch.registry.table.RegistryTable` into that database.

Layout. The database has ``cols`` columns; a registered token's entry lives in column
``bucket32 · cols >> 32`` of its 32-bit bucket key (``bucket32``, which a client computes
from its own token), so one retrieval of that column brings the entry back,
together with the column's other entries, which stay sealed to tokens the client does not
hold. A column is cut into *bands* of ``h`` rows, one slot each: a slot holds
``len | sealed user id | zero padding`` packed into ``h`` elements of Z_p.

Within a column, entries are placed by *ordered linear probing around the column*: each has
a home band (the next bits of its bucket key) and entries in ``(bucket key, fingerprint)``
order take the first free band at or after their home, wrapping past the last band to the
first. The placement is a function of the set alone (ordered hash tables are
history-independent: Amble and Knuth; Blelloch and Golovin), so:

* every process holding the same membership builds byte-identical databases and hints, and
  the version (a digest of the content) means the same thing on every process and restart;
* a registration or deletion moves only the entries of its probe run (about one or two at
  the load used here), so the hint changes in a few elements and clients patch it with a
  small :class:`~contactmatch.hazmat.pir.HintDelta` rather than download it again.

The shape (columns, bands, slot width) is a function of the registry's size class (quarter
octaves: the shape moves when the registry grows or shrinks by a fifth), its fullest column
and its longest sealed id, so it changes rarely; a change of shape is a new database and
clients download its hint whole.
"""

from __future__ import annotations

import hashlib
import math
import struct
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contactmatch._memory import trim
from contactmatch.errors import InvalidInput, MalformedMessage, UnknownKeyId
from contactmatch.hazmat.pir import (
    LWE_N,
    HintDelta,
    PirDatabase,
    PirParams,
    pack_bytes,
    params_for,
)
from contactmatch.registry.answers import HashDelta
from contactmatch.registry.publisher import (
    _mix,
    content_version,
    first_step_after,
)
from contactmatch.registry.table import RegistryTable

__all__ = [
    "BATCH",
    "MAX_BATCH",
    "PirPublisher",
    "PirShape",
    "column_of",
    "columns_of",
    "decode_hint",
    "encode_hint",
    "shape_for",
]

U8 = npt.NDArray[np.uint8]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

#: Retrievals per request: every PIR request carries exactly this many queries (padded).
BATCH = 64
#: The most queries one request may carry (a server refuses more).
MAX_BATCH = 256
#: Smallest slot: 1 length byte + 8 check bytes + 7 bytes of user id; slots grow in steps
#: of :data:`SLOT_STEP` bytes with the longest sealed id, so they rarely change.
SLOT_MIN_BYTES = 16
SLOT_STEP = 8
#: Mean entries per slot when the registry is at the top of its size class, before the
#: bands added so that the fullest column fits (:func:`shape_for`).
LOAD = 0.8
#: Most columns: a padded batch of 64 queries stays within 2 MiB (64 · 8000 · 4 bytes), and
#: every answer is one exact float64 product (hazmat.pir: cols · (p/2) · 2^31 <= 2^53).
MAX_COLS = 8000
_MIN_COLS = 16
_M32 = np.uint64(0xFFFFFFFF)
_SEED_DOMAIN = b"contactmatch/pir-seed/v1"
_HINT_MAGIC = b"CMH"
_HINT_VERSION = 1
_WHOLE, _DELTA = 1, 2
# magic, format version, kind, pir version, since, cols, bands, slot_bytes, p, rows, seed,
# key id length
_HEAD = struct.Struct(">3sBBQQIIHHI32sB")


@dataclass(frozen=True, slots=True)
class PirShape:
    """How the registry is laid out: what a client needs, with the hint, to read entries."""

    cols: int
    bands: int
    slot_bytes: int
    p: int

    @property
    def element_bits(self) -> int:
        """Plaintext bits per element, as :attr:`PirParams.element_bits` (which needs rows)."""
        return math.floor(math.log2(self.p))

    @property
    def h(self) -> int:
        """Elements per slot."""
        return -(-self.slot_bytes * 8 // self.element_bits)

    @property
    def rows(self) -> int:
        return self.bands * self.h

    @property
    def params(self) -> PirParams:
        return PirParams(rows=self.rows, cols=self.cols, p=self.p)

    def code(self) -> int:
        """The shape as one integer, for the content version."""
        return ((self.cols << 40) ^ (self.bands << 12) ^ self.slot_bytes) & (2**64 - 1)


def slot_width(longest_sealed: int) -> int:
    """The slot of a registry whose longest sealed id has this many bytes (length byte too)."""
    return max(SLOT_MIN_BYTES, -(-(1 + longest_sealed) // SLOT_STEP) * SLOT_STEP)


def size_class(users: int) -> int:
    """The top of the registry's size class: quarter octaves from 1,024 up (2^(k/4))."""
    k = math.ceil(4 * math.log2(max(users, 1024)) - 1e-9)
    return math.ceil(math.pow(2.0, k / 4))


def shape_for(users: int, slot_bytes: int, bands_needed: int = 0) -> PirShape:
    """The shape of a registry of ``users`` whose slots are ``slot_bytes`` wide.

    Columns balance the download of one answer (rows) against the upload of one query
    (columns): ``cols ≈ sqrt(slots · h)``, a multiple of 16, at most :data:`MAX_COLS`. A
    column's bands hold its mean share of the size class at :data:`LOAD` plus five standard
    deviations of a column's count (balls into bins), and at least the fullest column's count
    plus one (``bands_needed``), so every column keeps a free band and wrapped probing ends.
    """
    top = size_class(users)
    p = params_for(1, MAX_COLS).p  # one p for every width up to MAX_COLS (hazmat.pir table)
    h = -(-slot_bytes * 8 // math.floor(math.log2(p)))
    cols = max(_MIN_COLS, min(MAX_COLS, round(math.sqrt(top / LOAD * h) / 16) * 16))
    mean = top / cols
    bands = max(math.ceil(mean / LOAD), math.ceil(mean + 5 * math.sqrt(mean)) + 2, bands_needed)
    return PirShape(cols, bands, slot_bytes, p)


def column_of(bucket32: int, cols: int) -> int:
    """The column holding a token's entry: ``bucket32 · cols >> 32``."""
    return (bucket32 * cols) >> 32


def columns_of(bucket32: U64, cols: int) -> I64:
    """:func:`column_of` over an array of 32-bit bucket keys."""
    out: I64 = (((bucket32 & _M32) * np.uint64(cols)) >> np.uint64(32)).astype(np.int64)
    return out


def seed_for(key_id: str) -> bytes:
    """The public matrix's seed: public, fixed per key (a fresh key gets a fresh matrix)."""
    return hashlib.sha256(_SEED_DOMAIN + key_id.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class _Placed:
    """Placed slots of some columns, with each column's count and longest sealed id."""

    cols: I64  # the column of each entry
    bands: I64  # its band
    slots: U8  # (entries, slot width): length byte, sealed id, zero padding
    counts: I64  # per requested column
    longest: I64  # per requested column: its longest sealed id (0 if empty)


def _place(table: RegistryTable, cols: I64, ncols: int, bands: int) -> _Placed:
    """Every entry of these columns (sorted, distinct), placed in ``bands`` bands."""
    # Columns are not powers of two: read the power-of-two buckets that cover them (each
    # column spans at most two at ``bits`` = floor(log2 ncols)) and keep the columns' rows.
    bits = ncols.bit_length() - 1
    lo = -((-cols * (1 << 32)) // ncols)
    hi = -((-(cols + 1) * (1 << 32)) // ncols) - 1
    prefixes = np.unique(np.concatenate([lo >> (32 - bits), hi >> (32 - bits)]))
    ans = table.bucket(prefixes.tolist(), bits)
    scaled = ans.keys * np.uint64(ncols)
    col_all = (scaled >> np.uint64(32)).astype(np.int64)
    keep = np.flatnonzero(np.isin(col_all, cols))  # in (column, bucket key) order
    col_of = col_all[keep]
    low = scaled[keep] & _M32
    home = ((low * np.uint64(bands)) >> np.uint64(32)).astype(np.int64)
    n = keep.shape[0]
    where = np.searchsorted(cols, col_of)
    counts = np.bincount(where, minlength=cols.shape[0]).astype(np.int64)
    lens = (ans.offsets[keep + 1] - ans.offsets[keep]).astype(np.int64)
    longest = np.zeros(cols.shape[0], dtype=np.int64)
    np.maximum.at(longest, where, lens)
    band = _probe(home, counts, bands)
    width = slot_width(int(lens.max()) if n else 0)
    slots = np.zeros((n, width), dtype=np.uint8)
    if n:
        top = int(lens.max())
        if top > 255:
            raise InvalidInput("a sealed user id is longer than a PIR slot can say")
        slots[:, 0] = lens
        sealed = np.frombuffer(ans.sealed, dtype=np.uint8)
        pos = np.arange(top, dtype=np.int64)
        take = pos[None, :] < lens[:, None]
        src = ans.offsets[keep][:, None] + pos[None, :]
        slots[:, 1 : 1 + top][take] = sealed[src[take]]
    return _Placed(col_of, band, slots, counts, longest)


def _probe(home: I64, counts: I64, bands: int) -> I64:
    """Bands of entries (grouped by column, in order) under ordered linear probing with
    wrap-around, for columns of fewer than ``bands`` entries each.

    Without wrapping, place_i = max(home_i, place_{i-1} + 1) = i + cummax(home_i - i). Run
    over each column's entries twice, the second time with homes shifted by ``bands``: the
    second pass sees the first pass's overflow arrive at the column's start, and its places
    mod ``bands`` are the wrapped layout. They are distinct because a column of n < bands
    entries spans at most bands - 1 places in the second pass (place_2n - place_(n+1) <=
    bands - 1, from place_k = max_j<=k (home_j + k - j)).
    """
    n = home.shape[0]
    if not n:
        return home
    if int(counts.max()) >= bands:
        raise InvalidInput("a PIR column holds as many entries as it has bands")
    starts = np.cumsum(counts) - counts
    seg = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    local = np.arange(n, dtype=np.int64) - np.repeat(starts, counts)
    # Doubled sequence, column by column: [first pass | second pass].
    twice_seg = np.concatenate([seg, seg])
    twice_pass = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    twice_local = np.concatenate([local, local])
    twice_home = np.concatenate([home, home + bands])
    order = np.lexsort((twice_local, twice_pass, twice_seg))
    h2, s2 = twice_home[order], twice_seg[order]
    starts2 = np.repeat(2 * starts, 2 * counts)
    idx = np.arange(2 * n, dtype=np.int64) - starts2  # position within the doubled column
    big = np.int64(1 << 40)
    place = np.maximum.accumulate(h2 - idx + s2 * big) - s2 * big + idx
    second = place[twice_pass[order] == 1]  # in (column, entry) order, like ``home``
    out: I64 = second % bands
    return out


def _elements(shape: PirShape, placed: _Placed, cols: I64) -> npt.NDArray[np.int64]:
    """The database elements of ``cols`` (``len(cols) × rows``) holding ``placed``."""
    out = np.zeros((cols.shape[0], shape.bands, shape.h), dtype=np.int64)
    if placed.slots.shape[0]:
        slots = placed.slots
        if slots.shape[1] < shape.slot_bytes:
            slots = np.pad(slots, ((0, 0), (0, shape.slot_bytes - slots.shape[1])))
        packed = pack_bytes(slots[:, : shape.slot_bytes], shape.element_bits)
        idx = np.searchsorted(cols, placed.cols)
        out[idx, placed.bands] = packed
    return out.reshape(cols.shape[0], shape.rows)


_WEIGHTS: dict[int, U64] = {}


def _column_digests(values: npt.NDArray[np.int64], cols: I64) -> U64:
    """A 64-bit digest of each column's elements (rows of ``values``), mixed with its index."""
    rows = values.shape[1]
    w = _WEIGHTS.get(rows)
    if w is None:
        w = _mix(np.arange(1, rows + 1, dtype=np.uint64))
        _WEIGHTS[rows] = w
    with np.errstate(over="ignore"):
        d = (values.astype(np.uint64) * w[None, :]).sum(axis=1, dtype=np.uint64)
        out: U64 = _mix(d ^ _mix(cols.astype(np.uint64)))
    return out


@dataclass(frozen=True, slots=True)
class _Step:
    since: int
    version: int
    delta: HintDelta


class PirPublisher:
    """The PIR database of one registry, its hint, and a bounded history of hint deltas.

    Args:
        table: the registry it lays out.
        history: how many changes to keep for hint deltas.
        max_batch: the most queries one request may carry.
    """

    def __init__(
        self, table: RegistryTable, *, history: int = 256, max_batch: int = MAX_BATCH
    ) -> None:
        self._lock = threading.RLock()
        self._table = table
        self.max_batch = max_batch
        self._steps: deque[_Step] = deque(maxlen=history)
        self._seed = seed_for(table.key_id)
        self._build(table)

    # -- building -----------------------------------------------------------------------------
    def _build(self, table: RegistryTable) -> None:
        users = len(table)
        needed = 0
        slot_bytes = SLOT_MIN_BYTES
        while True:
            shape = shape_for(users, slot_bytes, needed)
            cols = np.arange(shape.cols, dtype=np.int64)
            try:
                placed = _place(table, cols, shape.cols, shape.bands)
            except InvalidInput:  # a column too full for its bands: more bands
                needed = shape.bands + 1
                continue
            fit = self._fit(placed.counts, placed.longest, users)
            if fit != shape:
                slot_bytes, needed = fit.slot_bytes, fit.bands
                continue
            break
        values = _elements(shape, placed, cols)
        self._shape = shape
        self._users = users
        self._counts = placed.counts
        self._longest = placed.longest
        self._acc = int(_column_digests(values, cols).sum(dtype=np.uint64))
        self._db = PirDatabase(shape.params, values.T, max_batch=self.max_batch)
        del values, placed
        self._encoded: tuple[int, bytes] | None = None  # the whole hint of one version
        self._version = self._content_version()
        self._steps.clear()
        trim()

    @staticmethod
    def _fit(counts: I64, longest: I64, users: int) -> PirShape:
        """The shape a fresh build would choose for this registry (a function of the set:
        its size class, its fullest column and its longest sealed id)."""
        width = slot_width(int(longest.max()) if longest.shape[0] else 0)
        fullest = int(counts.max()) if counts.shape[0] else 0
        return shape_for(users, width, fullest + 1)

    def _content_version(self) -> int:
        return content_version(self._acc, self._shape.code(), self._users)

    # -- reading --------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The version of the database answered now (a digest of its content; never 0)."""
        return self._version

    @property
    def shape(self) -> PirShape:
        return self._shape

    @property
    def seed(self) -> bytes:
        return self._seed

    @property
    def params(self) -> PirParams:
        return self._shape.params

    @property
    def database(self) -> PirDatabase:
        """The database answered now (benchmarks check retrieved columns against it)."""
        return self._db

    def info(self) -> dict[str, int | str]:
        """What a client needs besides the hint (published in the scheme's info)."""
        s = self._shape
        return {
            "version": self.version,
            "cols": s.cols,
            "bands": s.bands,
            "slot_bytes": s.slot_bytes,
            "p": s.p,
            "rows": s.rows,
            "batch": BATCH,
            "max_batch": self.max_batch,
            "hint_bytes": s.rows * LWE_N * 4,
        }

    def _whole_hint(self) -> bytes:
        enc = self._encoded
        if enc is None or enc[0] != self.version:
            blob = encode_hint(
                self._table.key_id, self._shape, self.version, self._db.hint(self._seed)
            )
            enc = (self.version, blob)
            self._encoded = enc
            trim()
        return enc[1]

    def published(self, since: int | None = None) -> bytes:
        """The whole hint, or a delta from ``since`` when this process held that version."""
        with self._lock:
            delta = self._delta_since(since) if since is not None else None
            if delta is not None:
                return encode_delta(
                    self._table.key_id, self._shape, since or 0, self.version, delta
                )
            return self._whole_hint()

    def _delta_since(self, since: int) -> HintDelta | None:
        """The entries that take a hint from ``since`` to now; None if this process cannot."""
        if since == self.version:
            return HintDelta(
                rows=np.zeros(0, np.uint32),
                cols=np.zeros(0, np.uint32),
                diffs=np.zeros(0, np.int16),
            )
        steps = list(self._steps)
        start = first_step_after(steps, since)
        if start is None:
            return None
        return merge_deltas([st.delta for st in steps[start:]], self.params)

    def answer(self, version: int, queries: U32) -> tuple[int, bytes, U32]:
        """Answer a batch of queries made for hint ``version``.

        Returns the version answered, the hint delta from the client's version to it (empty
        if the same), and the answers. A client's version this process cannot patch from is
        refused: the client downloads the hint again.

        Raises:
            MalformedMessage: queries of the wrong shape.
            UnknownKeyId: a hint version this process cannot patch from (download it again).
            InvalidInput: a batch above ``max_batch``.
        """
        with self._lock:
            delta = self._delta_since(version)
            if delta is None:  # a version this process never held, or before its history
                raise UnknownKeyId("the PIR hint is out of date; download it again")
            return self.version, delta.encode() if len(delta) else b"", self._db.answer(queries)

    # -- changes --------------------------------------------------------------------------------
    def advance(self, delta: HashDelta) -> None:
        """Take in a change of the registry (``delta`` from :meth:`RegistryTable.apply`)."""
        if not delta and not delta.buckets.shape[0]:
            return
        with self._lock:
            shape = self._shape
            users = len(self._table)
            cols = np.unique(columns_of(delta.buckets, shape.cols))
            try:
                placed = _place(self._table, cols, shape.cols, shape.bands)
            except InvalidInput:  # a column outgrew its bands
                self._build(self._table)
                return
            counts, longest = self._counts.copy(), self._longest.copy()
            counts[cols], longest[cols] = placed.counts, placed.longest
            if self._fit(counts, longest, users) != shape:
                # A new shape: every process rebuilds to the same one, from the same rows.
                self._build(self._table)
                return
            self._counts, self._longest = counts, longest
            before = self.version
            old = self._db.columns(cols)
            new = _elements(shape, placed, cols)
            mask = 2**64 - 1
            self._acc = (
                self._acc
                - int(_column_digests(old, cols).sum(dtype=np.uint64))
                + int(_column_digests(new, cols).sum(dtype=np.uint64))
            ) & mask
            self._users = users
            ci, ri = np.nonzero(old != new)
            hint_delta = self._db.update(ri, cols[ci], new[ci, ri])  # keeps its hint in step
            self._version = self._content_version()
            if self._version != before:
                self._steps.append(_Step(before, self._version, hint_delta))

    def rebase(self, table: RegistryTable) -> None:
        """Read the same rows from another table object (see TokenRegistry.rebase)."""
        with self._lock:
            self._table = table


def merge_deltas(deltas: list[HintDelta], params: PirParams) -> HintDelta:
    """One delta with the effect of applying ``deltas`` in order (differences add up)."""
    if len(deltas) == 1:
        return deltas[0]
    empty = (np.zeros(0, np.int64),)
    r = np.concatenate([*empty, *(d.rows.astype(np.int64) for d in deltas)])
    c = np.concatenate([*empty, *(d.cols.astype(np.int64) for d in deltas)])
    v = np.concatenate([*empty, *(d.diffs.astype(np.int64) for d in deltas)])
    keys = c * params.rows + r
    uniq, inverse = np.unique(keys, return_inverse=True)
    sums = np.zeros(uniq.shape[0], dtype=np.int64)
    np.add.at(sums, inverse, v)
    keep = sums != 0
    uniq, sums = uniq[keep], sums[keep]
    return HintDelta(
        rows=(uniq % params.rows).astype(np.uint32),
        cols=(uniq // params.rows).astype(np.uint32),
        diffs=sums.astype(np.int16),
    )


# -- the published hint's bytes ----------------------------------------------------------------


def _head(
    kind: int, key_id: str, shape: PirShape, *, seed: bytes, version: int, since: int
) -> bytes:
    kid = key_id.encode("utf-8")
    return (
        _HEAD.pack(
            _HINT_MAGIC,
            _HINT_VERSION,
            kind,
            version,
            since,
            shape.cols,
            shape.bands,
            shape.slot_bytes,
            shape.p,
            shape.rows,
            seed,
            len(kid),
        )
        + kid
    )


def encode_hint(key_id: str, shape: PirShape, version: int, hint: U32) -> bytes:
    """A whole hint: its header (shape, seed, version, key id) and rows × n uint32 (LE)."""
    head = _head(_WHOLE, key_id, shape, seed=seed_for(key_id), version=version, since=0)
    return head + hint.astype("<u4").tobytes()


def encode_delta(key_id: str, shape: PirShape, since: int, version: int, d: HintDelta) -> bytes:
    """A hint delta from ``since`` to ``version``."""
    head = _head(_DELTA, key_id, shape, seed=seed_for(key_id), version=version, since=since)
    return head + d.encode()


@dataclass(frozen=True, slots=True)
class HintBlob:
    """A decoded hint or hint delta (see :func:`decode_hint`)."""

    key_id: str
    shape: PirShape
    seed: bytes
    version: int
    since: int
    hint: U32 | None
    delta: HintDelta | None


def decode_hint(data: bytes) -> HintBlob:
    """Parse a published hint or hint delta, checking every size before allocating.

    Raises:
        MalformedMessage: anything that does not decode or does not add up.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("a PIR hint must be bytes")
    raw = bytes(data)
    if len(raw) < _HEAD.size:
        raise MalformedMessage("PIR hint too short")
    (magic, fmt, kind, version, since, cols, bands, slot_bytes, p, rows, seed, klen) = (
        _HEAD.unpack_from(raw)
    )
    if magic != _HINT_MAGIC or fmt != _HINT_VERSION or kind not in (_WHOLE, _DELTA):
        raise MalformedMessage("not a PIR hint of a known version")
    at = _HEAD.size + klen
    try:
        key_id = raw[_HEAD.size : at].decode("utf-8")
        if len(raw) < at or not _MIN_COLS <= cols <= MAX_COLS or not bands > 0:
            raise MalformedMessage("PIR hint shape out of range")
        shape = PirShape(cols, bands, slot_bytes, p)
        if shape.p != params_for(1, shape.cols).p or shape.rows != rows or slot_bytes < 2:
            raise MalformedMessage("PIR hint shape does not add up")
    except (UnicodeDecodeError, InvalidInput) as exc:
        raise MalformedMessage("PIR hint header does not decode") from exc
    body = raw[at:]
    if kind == _WHOLE:
        if len(body) != rows * LWE_N * 4:
            raise MalformedMessage("PIR hint length does not match its shape")
        hint = np.frombuffer(body, dtype="<u4").astype(np.uint32).reshape(rows, LWE_N)
        return HintBlob(key_id, shape, seed, version, since, hint, None)
    delta = HintDelta.decode(body, shape.params)
    return HintBlob(key_id, shape, seed, version, since, None, delta)
