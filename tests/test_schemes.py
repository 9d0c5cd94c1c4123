"""Every scheme pair, end to end in-process: agreement with a plain reference, wire checks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contactmatch.errors import (
    InvalidInput,
    InvalidKey,
    MalformedMessage,
    ProtocolStateError,
    UnknownKeyId,
    UnknownScheme,
    VerificationFailed,
)
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.schemes import (
    METHODS,
    TOKEN_FUNCTIONS,
    SchemeClient,
    ServerInfo,
    build_server,
    get_scheme,
    make_client_tokens,
    run_discovery,
    scheme_names,
)
from contactmatch.schemes.base import TOKEN_TRAITS
from contactmatch.schemes.sealed import bits_for, open_sealed, seal_user_id
from contactmatch.schemes.wire import LookupRequest, decode

ALL = scheme_names()
_numbers = st.integers(min_value=0, max_value=9_999_999).map(lambda i: f"+98912{i:07d}")


def reference(
    registry: dict[str, str], book: list[str], *, numbers_only: bool = False
) -> dict[str, str]:
    """The plain-Python answer every scheme must give: a dict lookup (``localfilter``, for
    apps whose users are their numbers, answers the number itself)."""
    return {n: n if numbers_only else registry[n] for n in book if n in registry}


def test_registry_holds_every_pair() -> None:
    assert len(ALL) == len(TOKEN_FUNCTIONS) * len(METHODS) == 25
    assert "oprf+filter" in ALL
    assert "sha256+lookup" in ALL
    with pytest.raises(UnknownScheme):
        get_scheme("rot13+lookup")


def test_every_scheme_states_its_own_leakage() -> None:
    # Both axes shape the statement: no two of the 25 pairs claim the same leakage.
    assert len({get_scheme(name).leakage for name in ALL}) == len(ALL)


@pytest.mark.parametrize("name", ALL)
def test_leakage_follows_the_traits(name: str) -> None:
    scheme = get_scheme(name)
    token, leak = TOKEN_TRAITS[scheme.token], scheme.leakage
    assert leak.thief_learns == token.thief_reverses
    if token.keyed:
        assert leak.enumeration_cost.startswith("one rate-limited server evaluation")
    elif scheme.method == "lookup":
        assert leak.enumeration_cost.startswith("one server lookup per candidate")
    else:  # public tokens and a bucket or a filter: the plan can be hashed offline
        assert leak.enumeration_cost.startswith("free and offline")
    sees_numbers = token.server_sees_inputs or (token.clear and scheme.method == "lookup")
    assert ("in the clear" in leak.server_learns) == sees_numbers
    assert ("blinded" in leak.server_learns) == scheme.oblivious
    assert ("VOPRF proof" in leak.server_learns) == token.verifiable


@pytest.mark.parametrize("name", ALL)
def test_scheme_end_to_end(name: str) -> None:
    registry = {f"+98912{i:07d}": f"user-{i}" for i in range(0, 3000, 3)}
    book = [f"+98912{i:07d}" for i in range(1000, 1100)]
    server = build_server(name, list(zip(registry.values(), registry, strict=True)), anonymity=8)
    report = run_discovery(server, book)
    scheme = get_scheme(name)
    assert report.result.matches == reference(registry, book, numbers_only=scheme.decides_locally)
    assert sorted(report.result.unregistered) == sorted(set(book) - set(registry))
    # localfilter has no match round: a public one sends nothing at all.
    match_rounds = 0 if scheme.decides_locally else 1
    if scheme.interactive or match_rounds:
        assert report.bytes_up > 0
        assert report.bytes_down > 0
    assert report.rounds == int(scheme.interactive) + match_rounds


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(ALL),
    registered=st.lists(_numbers, max_size=60, unique=True),
    others=st.lists(_numbers, max_size=30),
    data=st.data(),
)
def test_schemes_agree_with_reference(
    name: str, registered: list[str], others: list[str], data: st.DataObject
) -> None:
    registry = {n: f"u{i}" for i, n in enumerate(registered)}
    picked = data.draw(st.lists(st.sampled_from(registered), max_size=20)) if registered else []
    book = picked + others
    server = build_server(name, [(u, n) for n, u in registry.items()], anonymity=4)
    result = run_discovery(server, book).result
    assert result.matches == reference(
        registry, book, numbers_only=get_scheme(name).decides_locally
    )
    assert set(result.unregistered) == set(book) - set(registry)


@pytest.mark.parametrize("name", ["oprf+lookup", "voprf+filter", "hmac+bucket"])
def test_token_cache_skips_evaluation_on_resync(name: str) -> None:
    server = build_server(name, [("a", "+989120000001"), ("b", "+989120000002")])
    cache: dict[tuple[str, str], bytes] = {}
    first = run_discovery(server, ["+989120000001", "+989120000003"], cache=cache)
    assert first.rounds == 2
    again = run_discovery(server, ["+989120000001", "+989120000003"], cache=cache)
    assert again.rounds <= 1  # no evaluation round: every token was cached
    assert again.result.matches == {"+989120000001": "a"}


def test_device_transfer_moves_number_between_accounts() -> None:
    server = build_server("oprf+lookup", [("old", "+989120000001")])
    server.register(["new"], ["+989120000001"])
    assert run_discovery(server, ["+989120000001"]).result.matches == {"+989120000001": "new"}
    server.unregister(["new"])
    assert run_discovery(server, ["+989120000001"]).result.matches == {}


def test_unregister_drops_from_every_method() -> None:
    for method in METHODS:
        server = build_server(f"sha256+{method}", [("a", "+989120000001"), ("b", "+989120000002")])
        server.unregister(["a"])
        res = run_discovery(server, ["+989120000001", "+989120000002"]).result
        local = get_scheme(f"sha256+{method}").decides_locally
        assert res.matches == reference(
            {"+989120000002": "b"}, res.unregistered + list(res.matches), numbers_only=local
        ), method


def test_bucket_answers_hide_strangers_ids() -> None:
    server = build_server("oprf+bucket", [(f"u{i}", f"+98912{i:07d}") for i in range(64)])
    assert server.bits == bits_for(64, 64) == 0  # one bucket: everyone is returned
    report = run_discovery(server, ["+989120000005"])
    assert report.result.matches == {"+989120000005": "u5"}
    # The answer carried 64 sealed ids; a token the client does not hold opens none of them.
    assert open_sealed(b"x" * 64, seal_user_id(b"y" * 64, "u1")) is None
    assert open_sealed(b"y" * 64, seal_user_id(b"y" * 64, "u1")) == "u1"


def test_bits_grow_with_registry() -> None:
    assert bits_for(10, 64) == 0
    assert bits_for(64 * 2**10, 64) == 10
    assert bits_for(10**12, 1) == 32
    with pytest.raises(InvalidInput, match="anonymity"):
        bits_for(100, 0)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=30, deadline=None)
@given(junk=st.binary(max_size=200))
def test_server_rejects_junk_with_typed_errors(name: str, junk: bytes) -> None:
    server = _servers(name)
    with pytest.raises((MalformedMessage, VerificationFailed, UnknownKeyId)):
        server.handle(junk)


@pytest.mark.parametrize("name", ["sha256+lookup", "oprf+bucket", "voprf+filter"])
def test_client_rejects_junk_responses(name: str) -> None:
    server = _servers(name)
    info = server.info()
    blob = server.published_filter() if name.endswith("filter") else None
    for junk in (b"", b"CMW\x01\x04", b"\x00" * 40, server.handle(_first_request(server))[:-1]):
        client = SchemeClient(
            name, info, make_client_tokens(get_scheme(name).token, info), filter_blob=blob
        )
        req = client.start(["+989120000001"])
        assert req is not None
        with pytest.raises((MalformedMessage, VerificationFailed)):
            client.receive(junk)


def test_wrong_key_id_is_refused() -> None:
    server = _servers("sha256+lookup")
    other = LookupRequest(scheme="sha256+lookup", key_id="deadbeef", tokens=[b"t" * 32]).encode()
    with pytest.raises(UnknownKeyId):
        server.handle(other)
    wrong_scheme = LookupRequest(scheme="plain+lookup", key_id="none", tokens=[b"t"]).encode()
    with pytest.raises(MalformedMessage):
        server.handle(wrong_scheme)


def test_voprf_client_refuses_an_unpinned_key() -> None:
    server = build_server("voprf+lookup", [("a", "+989120000001")])
    info = server.info()
    stranger = ServerKey.generate(Mode.VOPRF)
    client = SchemeClient(
        "voprf+lookup",
        info,
        make_client_tokens("voprf", info, pinned={stranger.key_id: stranger.public_key}),
    )
    req = client.start(["+989120000001"])
    assert req is not None
    with pytest.raises(UnknownKeyId):
        client.receive(server.handle(req))


def test_key_mode_must_match_token_function() -> None:
    with pytest.raises(InvalidKey):
        build_server("oprf+lookup", [], key=ServerKey.generate(Mode.VOPRF))


def test_server_info_round_trip_and_validation() -> None:
    info = _servers("voprf+bucket").info()
    assert ServerInfo.decode(info.encode()) == info
    for bad in (b"{}", b"not json", b'{"scheme":"x+y","key_id":"a","bits":1,'):
        with pytest.raises((MalformedMessage, UnknownScheme)):
            ServerInfo.decode(bad)


def test_numbers_must_be_normalised() -> None:
    with pytest.raises(MalformedMessage):
        build_server("sha256+lookup", [("a", "0912 345 6789")])


def test_reprs_hide_numbers_and_tokens() -> None:
    server = _servers("oprf+lookup")
    report = run_discovery(server, ["+989120000001"])
    assert "+98912" not in repr(report.result)
    msg = decode(_first_request(_servers("sha256+lookup")))
    assert "items" in repr(msg)


_CACHE: dict[str, object] = {}


def _servers(name: str):  # type: ignore[no-untyped-def]
    if name not in _CACHE:
        _CACHE[name] = build_server(name, [("a", "+989120000001"), ("b", "+989120000002")])
    return _CACHE[name]


def _first_request(server) -> bytes:  # type: ignore[no-untyped-def]
    info = server.info()
    blob = server.published_filter() if server.scheme.publishes_filter else None
    client = SchemeClient(
        server.scheme, info, make_client_tokens(server.scheme.token, info), filter_blob=blob
    )
    req = client.start(["+989120000001"])
    assert req is not None
    return req


def test_docs_carry_the_leakage_table_verbatim() -> None:
    from pathlib import Path

    from contactmatch.schemes import leakage_table

    doc = Path(__file__).resolve().parent.parent / "docs" / "schemes.md"
    assert leakage_table() in doc.read_text(encoding="utf-8")


def test_client_state_machine_misuse_is_a_protocol_state_error() -> None:
    server = _servers("oprf+lookup")
    info = server.info()
    client = SchemeClient("oprf+lookup", info, make_client_tokens("oprf", info))
    with pytest.raises(ProtocolStateError):
        client.receive(b"")  # nothing was asked yet
    with pytest.raises(ProtocolStateError):
        _ = client.result
    request = client.start(["+989120000001"])
    assert request is not None
    with pytest.raises(ProtocolStateError):
        client.start(["+989120000001"])  # one discovery per client
    while request is not None:
        request = client.receive(server.handle(request))
    assert client.result.matches == {"+989120000001": "a"}
    with pytest.raises(ProtocolStateError):
        client.receive(b"")  # done: no response expected
    assert issubclass(ProtocolStateError, RuntimeError)  # what these raised before 0.3
