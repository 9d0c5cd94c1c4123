"""The ``pir`` membership method and the one-round ``localfilter``, end to end in-process.

What must hold: every ``+pir`` scheme agrees with a dict lookup, also after registrations and
deletions reach the client as hint deltas; the database is a function of the membership
alone (a patched one equals one built afresh); the server's view does not depend on the book;
bad input is refused with typed errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contactmatch.errors import InvalidInput, MalformedMessage, UnknownKeyId
from contactmatch.registry.pir import BATCH, PirPublisher, decode_hint
from contactmatch.registry.table import RegistryTable
from contactmatch.schemes import SchemeClient, ServerInfo, build_server, get_scheme, run_discovery
from contactmatch.schemes.methods.localfilter import LOCAL_BOOK, LOCAL_FPR
from contactmatch.schemes.pirclient import PirHint
from contactmatch.schemes.tokens import make_client_tokens
from contactmatch.schemes.wire import PirRequest, decode

PIR_SCHEMES = ["oprf+pir", "voprf+pir", "hmac+pir", "sha256+pir"]
_numbers = st.integers(min_value=0, max_value=9_999_999).map(lambda i: f"+98912{i:07d}")


def _registry(n: int, step: int = 3) -> dict[str, str]:
    return {f"+98912{i:07d}": f"user-{i}" for i in range(0, n * step, step)}


def _client(server, hint: PirHint | bytes, cache=None) -> SchemeClient:  # type: ignore[no-untyped-def]
    info = ServerInfo.decode(server.info().encode())
    return SchemeClient(
        server.scheme,
        info,
        make_client_tokens(server.scheme.token, info),
        filter_blob=server.published_filter(),
        hint=hint,
        cache=cache,
    )


def _run(server, client: SchemeClient, book: list[str]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    request = client.start(book)
    while request is not None:
        request = client.receive(server.handle(request))
    return client.result.matches


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(PIR_SCHEMES),
    registered=st.lists(_numbers, min_size=1, max_size=80, unique=True),
    others=st.lists(_numbers, max_size=30),
    data=st.data(),
)
def test_pir_schemes_agree_with_reference_through_changes(
    name: str, registered: list[str], others: list[str], data: st.DataObject
) -> None:
    registry = {n: f"u{i}" for i, n in enumerate(registered)}
    server = build_server(name, [(u, n) for n, u in registry.items()])
    hint = PirHint(server.published_hint())  # downloaded once, then only patched
    for round_ in range(3):
        picked = data.draw(st.lists(st.sampled_from(sorted(registry)), max_size=20))
        book = picked + others
        got = _run(server, _client(server, hint), book)
        assert got == {n: registry[n] for n in book if n in registry}
        # Users come and go; the client's hint is patched by each answer's delta.
        gone = data.draw(st.lists(st.sampled_from(sorted(registry)), max_size=5, unique=True))
        server.unregister([registry.pop(n) for n in gone])
        new = data.draw(st.lists(_numbers, max_size=5, unique=True))
        new = [n for n in new if n not in registry]
        ids = [f"n{round_}-{i}" for i in range(len(new))]
        if new:
            server.register(ids, new)
            registry.update(zip(new, ids, strict=True))
        if not registry:
            break


def test_a_patched_database_equals_one_built_afresh() -> None:
    # 3,100 users, 150 leave and 150 join: the size class (quarter octaves) stays the same.
    server = build_server("sha256+pir", [(u, n) for n, u in _registry(3100).items()])
    pub = server.registry.pir()
    before, shape = pub.version, pub.shape
    old_hint = PirHint(pub.published())
    server.unregister([f"user-{i}" for i in range(0, 450, 3)])
    server.register([f"x{i}" for i in range(150)], [f"+98913{i:07d}" for i in range(150)])
    assert pub.shape == shape
    fresh = PirPublisher(server.registry.table)
    assert pub.version == fresh.version != before
    assert pub.shape == fresh.shape
    assert pub.published() == fresh.published()
    # The delta from the old version takes the old hint to the new one, and it is small.
    delta = pub.published(since=before)
    assert decode_hint(delta).delta is not None
    old_hint.update(delta)
    assert old_hint.version == pub.version
    assert np.array_equal(old_hint.matrix, PirHint(fresh.published()).matrix)
    assert len(delta) < len(fresh.published()) / 10


def test_a_new_size_class_is_a_new_database_with_the_same_rules() -> None:
    # Crossing a quarter octave changes the shape: there is no delta, and the rebuilt
    # database still equals one built afresh.
    server = build_server("sha256+pir", [(u, n) for n, u in _registry(3000).items()])
    pub = server.registry.pir()
    before, shape = pub.version, pub.shape
    server.unregister([f"user-{i}" for i in range(0, 900, 3)])
    assert pub.shape != shape
    assert decode_hint(pub.published(since=before)).hint is not None  # the whole hint
    assert pub.published() == PirPublisher(server.registry.table).published()


def test_unknown_hint_version_is_refused_with_a_refresh_error() -> None:
    server = build_server("oprf+pir", [(u, n) for n, u in _registry(50).items()])
    hint = PirHint(server.published_hint())
    hint.version ^= 1  # a version the server never held
    client = _client(server, hint)
    req = client.start([next(iter(_registry(50)))])
    req = client.receive(server.handle(req))  # the evaluation round
    assert req is not None
    with pytest.raises(UnknownKeyId):
        server.handle(req)


def _pir_requests(server, book: list[str]) -> list[bytes]:  # type: ignore[no-untyped-def]
    client = _client(server, server.published_hint())
    out = []
    request = client.start(book)
    while request is not None:
        if decode(request).NAME == "pir_request":
            out.append(request)
        request = client.receive(server.handle(request))
    return out


def test_request_size_depends_only_on_the_padded_count() -> None:
    registry = _registry(2000)
    server = build_server("sha256+pir", [(u, n) for n, u in registry.items()])
    numbers = sorted(registry)
    sizes = {len(r) for k in (1, 5, 40) for r in _pir_requests(server, numbers[:k])}
    assert len(sizes) == 1
    two = _pir_requests(server, numbers[:150])  # more hits than columns of one batch
    assert len(two) >= 2
    assert {len(r) for r in two} == sizes
    for r in two:
        assert decode(r, PirRequest).batch == BATCH


def _chi_square_critical(df: int, alpha_z: float = 3.09) -> float:
    """Wilson-Hilferty: the chi-square quantile at the normal quantile z (3.09: alpha 0.001)."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + alpha_z * math.sqrt(h)) ** 3


def test_the_server_view_does_not_depend_on_the_book() -> None:
    # Two books of the same size, one all hits in low columns, one all misses-turned-hits in
    # others: the query words the server sees have the same (uniform) distribution.
    registry = _registry(2000)
    server = build_server("sha256+pir", [(u, n) for n, u in registry.items()])
    numbers = sorted(registry)
    words = []
    for book in (numbers[:20], numbers[-20:]):
        reqs = [r for _ in range(15) for r in _pir_requests(server, book)]
        q = np.concatenate(
            [np.frombuffer(decode(r, PirRequest).queries, dtype="<u4") for r in reqs]
        )
        words.append(q >> np.uint32(28))  # top 4 bits: 16 cells
    counts = np.stack([np.bincount(w.astype(np.int64), minlength=16) for w in words])
    expected = counts.sum(axis=0, keepdims=True) * counts.sum(axis=1, keepdims=True) / counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert stat < _chi_square_critical(15)
    for c in counts:  # each is uniform on its own too
        e = c.sum() / 16
        assert float(((c - e) ** 2 / e).sum()) < _chi_square_critical(15)


def test_bad_pir_requests_get_typed_errors() -> None:
    server = build_server("oprf+pir", [(u, n) for n, u in _registry(200).items()])
    pub = server.registry.pir()
    cols = pub.params.cols
    good = PirRequest(
        scheme="oprf+pir",
        key_id=server.token_fn.key_id,
        version=pub.version,
        batch=2,
        queries=bytes(2 * cols * 4),
    )
    assert server.handle(good.encode())  # well-formed: answered
    wrong_shape = PirRequest(
        scheme="oprf+pir",
        key_id=good.key_id,
        version=pub.version,
        batch=2,
        queries=bytes(2 * (cols + 1) * 4),
    )
    with pytest.raises(MalformedMessage):
        server.handle(wrong_shape.encode())
    other = PirRequest(
        scheme="oprf+filter", key_id=good.key_id, version=1, batch=1, queries=bytes(4)
    )
    with pytest.raises(MalformedMessage):
        server.handle(other.encode())
    oversized = PirRequest(
        scheme="oprf+pir",
        key_id=good.key_id,
        version=pub.version,
        batch=pub.max_batch + 1,
        queries=bytes((pub.max_batch + 1) * cols * 4),
    )
    with pytest.raises(InvalidInput, match="batch"):
        server.handle(oversized.encode())
    for junk in (good.encode()[:-3], good.encode() + b"x", b"CMW\x02\x09" + b"\x00" * 9):
        with pytest.raises(MalformedMessage):
            server.handle(junk)
    with pytest.raises(MalformedMessage):
        decode_hint(server.published_hint()[:-1])
    with pytest.raises(MalformedMessage):
        PirHint(b"CMH" + bytes(100))


def test_localfilter_is_one_round_and_sized_for_ten_thousand_contacts() -> None:
    assert LOCAL_BOOK * LOCAL_FPR <= 2.0**-20
    registry = _registry(500)
    server = build_server("oprf+localfilter", [(u, n) for n, u in registry.items()])
    book = sorted(registry)[:50] + [f"+98935{i:07d}" for i in range(50)]
    report = run_discovery(server, book)
    assert report.rounds == 1  # the evaluation only: nothing is asked about the hits
    assert report.result.matches == {n: n for n in book if n in registry}
    assert get_scheme("oprf+localfilter").leakage.server_learns.endswith(
        "nothing else (there is no second round)"
    )
    # A lookup with tokens is refused: the server answers no question about hits.
    from contactmatch.schemes.wire import LookupRequest

    ask = LookupRequest(scheme="oprf+localfilter", key_id=server.token_fn.key_id, tokens=[b"x"])
    with pytest.raises(MalformedMessage):
        server.handle(ask.encode())


def test_table_changes_report_their_buckets() -> None:
    table = RegistryTable.build(["a", "b"], [b"t" * 64, b"u" * 64], key_id="k1")
    delta = table.apply([("c", b"v" * 64)], ["a"])
    assert delta.buckets.shape[0] == 2  # the joining row and the leaving one
