"""Operating a server: health, readiness, metrics, logs, configuration and keys (issue 13)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from prometheus_client.parser import text_string_to_metric_families

from contactmatch._urls import redact_url
from contactmatch.atrest import DataKey
from contactmatch.cli import main
from contactmatch.cli.serve import add_serve_arguments, env_name
from contactmatch.errors import InvalidKey, StoreUnavailable
from contactmatch.keys import KeyRing, ServerKey
from contactmatch.oprf import Mode, OprfServer
from contactmatch.rotation import rotate
from contactmatch.server import SignedTokens, create_app
from contactmatch.server._workers import WorkerConfig
from contactmatch.server.auth import StaticToken
from contactmatch.server.serve import JsonLogFormatter, build_server, configure_logging
from contactmatch.service import DiscoveryClient, DiscoveryServer
from contactmatch.stores import open_store
from tests.test_http import AppTransport

ALICE = "+989123456789"
BOB = "+989121112233"
STRANGER = "+989131119999"
ADMIN_TOKEN = "a3f1c2" * 8
METRICS_TOKEN = "9b8e7d" * 8


def _token_file(path: Path, token: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return str(path)


class Server:
    """An app over a fresh SQLite store, reached through httpx's ASGI transport."""

    def __init__(self, stack: ExitStack, tmp: Path, key: ServerKey, **options: object) -> None:
        self.key = key
        self.data_key = DataKey.generate()
        self.store = open_store(f"sqlite:///{tmp}/registry.db")
        stack.callback(self.store.close)
        self.service = DiscoveryServer(self.store, KeyRing(key), self.data_key)
        self.tokens = SignedTokens.from_server_key(key)
        self.app = create_app(self.service, authenticate=self.tokens, **options)  # type: ignore[arg-type]
        portal = stack.enter_context(start_blocking_portal())
        self.http = stack.enter_context(
            httpx.Client(base_url="http://cm.test", transport=AppTransport(self.app, portal))
        )

    def discover(self, user: str, numbers: list[str], scheme: str = "oprf+filter") -> object:
        auth = {"Authorization": f"Bearer {self.tokens.issue(user)}"}
        info = self.http.get(f"/v1/info/{scheme}").content
        blob = self.http.get(f"/v1/filter/{scheme}").content if "filter" in scheme else None
        client = DiscoveryClient(info, filter_blob=blob, region="IR")

        def send(request: bytes) -> bytes:
            resp = self.http.post("/v1/discover", content=request, headers=auth)
            resp.raise_for_status()
            return resp.content

        return client.discover(numbers, send).matches


Make = Callable[..., Server]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    with ExitStack() as stack:

        def build(**options: object) -> Server:
            # Each server its own directory: apps over separate registries.
            where = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
            where.mkdir()
            return Server(stack, where, ServerKey.generate(), **options)

        yield build


# -- health and readiness -----------------------------------------------------------------


def test_health_and_readiness_say_nothing_identifying(make: Make) -> None:
    s = make()
    s.service.register("alice", ALICE)
    assert s.http.get("/healthz").json() == {"status": "ok"}
    ready = s.http.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body == {
        "status": "ready",
        "keys": 1,
        "users": 1,
        "feed_sequence": s.service.feed_position,
        "feed_lag": 0,
        "started_from": "store",
    }
    assert "alice" not in ready.text
    assert s.key.key_id not in ready.text


def test_readiness_fails_with_503_when_the_store_is_down(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make()

    def down() -> int:
        raise StoreUnavailable("sqlite: feed_head: database unavailable (OperationalError)")

    monkeypatch.setattr(s.store, "feed_head", down)
    resp = s.http.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "not_ready"
    assert "sqlite" not in resp.text  # the error's type only
    assert s.http.get("/healthz").status_code == 200  # alive all the same
    scrape = s.http.get("/metrics")  # metrics answer when the store does not
    assert scrape.status_code == 200
    assert _samples(scrape.text)[("contactmatch_store_up", ())] == 0


# -- metrics --------------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_scrape_parses_and_holds_aggregates_only(make: Make) -> None:
    s = make()
    s.service.register("alice", ALICE)
    s.service.register("bob", BOB)
    assert s.discover("bob", [ALICE, STRANGER]) == {ALICE: "alice"}
    assert s.discover("bob", [ALICE], scheme="oprf+bucket") == {ALICE: "alice"}
    s.http.get("/v1/info/nope+nothing")  # a 404
    resp = s.http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    got = _samples(resp.text)
    req = "contactmatch_http_requests_total"
    assert got[(req, (("endpoint", "discover"), ("status", "200")))] >= 3
    assert got[(req, (("endpoint", "info"), ("status", "404")))] == 1
    assert got[("contactmatch_http_errors_total", (("endpoint", "info"), ("status", "404")))] == 1
    for scheme in ("oprf+filter", "oprf+bucket"):
        assert got[("contactmatch_discovery_seconds_count", (("scheme", scheme),))] >= 1
    assert got[("contactmatch_evaluations_total", ())] >= 3
    assert got[("contactmatch_matches_total", ())] >= 1
    assert got[("contactmatch_registry_users", ())] == 2
    assert got[("contactmatch_feed_lag", ())] == 0
    assert got[("contactmatch_feed_sequence", ())] == s.service.feed_position
    version = s.service.filter_version("oprf+filter")
    assert got[("contactmatch_filter_version", (("scheme", "oprf+filter"),))] == version
    assert got[("contactmatch_store_seconds_count", ())] >= 1
    assert got[("contactmatch_store_up", ())] == 1
    for secret in ("alice", "bob", ALICE, ALICE[1:], BOB[1:], s.tokens.issue("bob")):
        assert secret not in resp.text


def test_rate_limited_requests_are_counted_by_quota(make: Make) -> None:
    from contactmatch.ratelimit import Quota, RateLimits
    from contactmatch.service import ServiceSettings

    s = make()
    # One bucket discovery is two requests (evaluation, then the bucket).
    limits = RateLimits(requests=Quota(name="requests", capacity=2, period=3600))
    s.service = DiscoveryServer(s.store, s.key, s.data_key, settings=ServiceSettings(limits=limits))
    s.app = create_app(s.service, authenticate=s.tokens)
    with start_blocking_portal() as portal:
        s.http = httpx.Client(base_url="http://cm.test", transport=AppTransport(s.app, portal))
        s.service.register("bob", BOB)
        s.discover("bob", [ALICE], scheme="oprf+bucket")
        with pytest.raises(httpx.HTTPStatusError):
            s.discover("bob", [ALICE], scheme="oprf+bucket")
        got = _samples(s.http.get("/metrics").text)
    assert got[("contactmatch_rate_limited_total", (("quota", "requests"),))] == 1


def test_metrics_and_stats_tokens(make: Make, tmp_path: Path) -> None:
    admin = StaticToken.from_file(_token_file(tmp_path / "admin", ADMIN_TOKEN), operator="admin")
    scraper = StaticToken.from_file(_token_file(tmp_path / "metrics", METRICS_TOKEN))
    s = make(admin=admin, metrics_auth=scraper)
    assert s.http.get("/metrics").status_code == 401
    bad = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert s.http.get("/metrics", headers=bad).status_code == 401
    good = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert s.http.get("/metrics", headers=good).status_code == 200
    assert s.http.get("/v1/stats").status_code == 401
    assert s.http.get("/v1/stats", headers=good).status_code == 401
    assert s.http.get("/v1/stats", headers=bad).status_code == 200
    doc = s.http.get("/openapi.json").json()
    assert "security" in doc["paths"]["/metrics"]["get"]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert METRICS_TOKEN not in repr(scraper)


def test_token_files_must_be_private_and_long_enough(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.write_text(ADMIN_TOKEN)
    loose.chmod(0o644)
    with pytest.raises(InvalidKey, match="group or others"):
        StaticToken.from_file(str(loose))
    with pytest.raises(InvalidKey, match="at least 16"):
        StaticToken.from_file(_token_file(tmp_path / "short", "abc"))
    with pytest.raises(InvalidKey, match="no token file"):
        StaticToken.from_file(str(tmp_path / "missing"))


def test_apps_have_their_own_metric_registries(make: Make) -> None:
    first, second = make(), make()
    first.http.get("/healthz")
    got = _samples(second.http.get("/metrics").text)
    key = ("contactmatch_http_requests_total", (("endpoint", "healthz"), ("status", "200")))
    assert key not in got


# -- logs -----------------------------------------------------------------------------------


def test_no_number_token_or_key_in_any_log_record(
    make: Make,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="contactmatch")
    s = make(verify_number=lambda user, e164, proof: proof == "sms-ok")
    for user, number in (("alice", ALICE), ("bob", BOB)):
        auth = {"Authorization": f"Bearer {s.tokens.issue(user)}"}
        body = {"number": number, "proof": "sms-ok"}
        assert s.http.post("/v1/register", json=body, headers=auth).status_code == 200
    assert s.discover("bob", [ALICE, STRANGER]) == {ALICE: "alice"}
    assert s.discover("bob", [ALICE], scheme="oprf+bucket") == {ALICE: "alice"}
    s.http.get("/metrics")
    s.http.get("/readyz")
    before = s.store.get_users(["alice", "bob"])  # their tokens under the old key
    new = ServerKey.generate()
    oprf = OprfServer(new)
    report = rotate(
        s.store,
        s.data_key,
        lambda numbers: list(oprf.evaluate_tokens([n.encode() for n in numbers]).tokens),
        new.key_id,
    )
    assert report.rekeyed == 2
    s.service.refresh()
    tokens = s.store.get_users(["alice", "bob"])
    # Numbers in every form (E.164, digits, national significant number), bearer tokens.
    secrets = [ALICE, ALICE[1:], ALICE[-10:], BOB, BOB[1:], BOB[-10:], STRANGER[-10:]]
    secrets += [s.tokens.issue("alice"), s.tokens.issue("bob")]
    for key in (s.key, new):
        secrets += [key.private_bytes().hex(), repr(key.private_bytes())]
    secrets += [r.token.hex() for r in [*before, *tokens] if r is not None]
    messages = [r.getMessage() for r in caplog.records]
    args = [repr(r.args) for r in caplog.records]
    assert any("rotation" in m for m in messages)  # the run did log
    assert any("-> 200" in m for m in messages)  # per-request detail at DEBUG
    for text in messages + args:
        for secret in secrets:
            assert secret not in text, (secret, text)


def test_the_start_up_summary_hides_the_store_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from contactmatch.server.serve import log_startup

    caplog.set_level(logging.INFO, logger="contactmatch")
    with open_store(f"sqlite:///{tmp_path}/r.db") as store:
        server = DiscoveryServer(store, ServerKey.generate(), DataKey.generate())
        server.register("alice", ALICE)
        log_startup(server, "postgresql://ops:hunter2secret@db:5432/registry")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "contactmatch.server"]
    assert "hunter2secret" not in line
    assert "postgresql://ops:***@db:5432/registry" in line
    assert server.key_id in line
    assert "1 users" in line
    assert "oprf+filter" in line


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger("contactmatch")
    level, handlers = root.level, list(root.handlers)
    undo = configure_logging("json")
    try:
        logging.getLogger("contactmatch.test").info("hello %s", "world")
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        undo()
    assert (root.level, root.handlers) == (level, handlers)  # undone
    entry = json.loads(line)
    assert entry["message"] == "hello world"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "contactmatch.test"
    assert entry["time"].endswith("Z")
    record = logging.LogRecord("contactmatch.x", logging.ERROR, "f", 1, "boom", None, None)
    try:
        raise ValueError("+989123456789")  # noqa: TRY301
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    formatted = json.loads(JsonLogFormatter().format(record))
    assert formatted["exception"] == "ValueError"
    assert "989123456789" not in json.dumps(formatted)


# -- configuration --------------------------------------------------------------------------


def test_redact_url() -> None:
    assert redact_url("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact_url("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact_url("sqlite:///registry.db") == "sqlite:///registry.db"
    assert redact_url("memory://") == "memory://"
    assert "pw" not in redact_url("redis://:pw@host:notaport/0")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_every_serve_option_has_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert env_name("--data-key") == "CONTACTMATCH_DATA_KEY"
    monkeypatch.setenv("CONTACTMATCH_STORE", "postgresql://u:pw@db/x")
    monkeypatch.setenv("CONTACTMATCH_KEY", "/keys/server.key")
    monkeypatch.setenv("CONTACTMATCH_PORT", "9090")
    monkeypatch.setenv("CONTACTMATCH_WORKERS", "2")
    monkeypatch.setenv("CONTACTMATCH_SCHEME", "oprf+filter, oprf+lookup")
    monkeypatch.setenv("CONTACTMATCH_PREVIOUS_KEY", "/keys/old.key")
    monkeypatch.setenv("CONTACTMATCH_ALLOW_FOREIGN_KEYS", "yes")
    monkeypatch.setenv("CONTACTMATCH_ADMIN_TOKEN_FILE", "/run/admin")
    monkeypatch.setenv("CONTACTMATCH_LOG_FORMAT", "json")
    args = _parse([])  # --key is given by the environment
    assert args.store == "postgresql://u:pw@db/x"
    assert args.key == "/keys/server.key"
    assert (args.port, args.workers) == (9090, 2)
    assert args.schemes == ["oprf+filter", "oprf+lookup"]
    assert args.previous_keys == ["/keys/old.key"]
    assert args.allow_foreign_keys is True
    assert args.admin_token_file == "/run/admin"
    assert args.log_format == "json"
    # Flags win.
    args = _parse(["--port", "8081", "--log-format", "text", "--scheme", "oprf+bucket"])
    assert (args.port, args.log_format, args.schemes) == (8081, "text", ["oprf+bucket"])


def test_the_operations_guide_lists_every_serve_option_and_its_variable() -> None:
    guide = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text(
        encoding="utf-8"
    )
    table = guide[guide.index("## Configuring `serve`") :]
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    flags.remove("--help")
    for flag in flags:
        assert f"| `{flag}" in table, flag
        assert f"`{env_name(flag)}`" in table, flag


@pytest.mark.parametrize(
    ("name", "value"),
    [("CONTACTMATCH_PORT", "99999"), ("CONTACTMATCH_LOG_FORMAT", "xml"),
     ("CONTACTMATCH_ALLOW_FOREIGN_KEYS", "maybe"), ("CONTACTMATCH_WORKERS", "two")],
)  # fmt: skip
def test_a_bad_environment_value_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        _parse(["--key", "k"])
    assert name in capsys.readouterr().err


def test_serve_passes_keys_and_token_files_to_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import contactmatch.server.serve as serve_module

    key_path = tmp_path / "server.key"
    ServerKey.generate().save(key_path)
    seen: dict[str, object] = {}

    def fake_run(store_url: str, key: str, **options: object) -> None:
        seen.update(options, store_url=store_url, key=key)

    monkeypatch.setattr(serve_module, "run", fake_run)
    monkeypatch.setenv("CONTACTMATCH_METRICS_TOKEN_FILE", "/run/metrics")
    argv = ["serve", "--key", str(key_path), "--previous-key", "a.key", "--previous-key",
            "b.key", "--admin-token-file", "/run/admin", "--log-format", "json"]  # fmt: skip
    assert main(argv) == 0
    assert seen["previous_key_paths"] == ("a.key", "b.key")
    assert seen["admin_token_file"] == "/run/admin"
    assert seen["metrics_token_file"] == "/run/metrics"
    assert seen["log_format"] == "json"


def test_previous_keys_serve_a_ring(tmp_path: Path) -> None:
    current, old = ServerKey.generate(), ServerKey.generate()
    current.save(tmp_path / "new.key")
    old.save(tmp_path / "old.key")
    server = build_server(
        f"sqlite:///{tmp_path}/r.db",
        str(tmp_path / "new.key"),
        previous_key_paths=[str(tmp_path / "old.key")],
    )
    try:
        assert server.keys.current.key_id == current.key_id
        assert set(server.keys.key_ids) == {current.key_id, old.key_id}
    finally:
        server.store.close()


def test_worker_configuration_carries_paths_never_keys(tmp_path: Path) -> None:
    config = WorkerConfig.build(
        f"sqlite:///{tmp_path}/r.db",
        str(tmp_path / "server.key"),
        data_key_path=None,
        settings=None,
        max_body=1024,
        token_ttl=60.0,
        authenticate=None,
        admin=None,
        refresh_every=1.0,
        verify_number=None,
        allow_unverified_numbers=False,
        snapshot_dir=None,
        snapshot_every=0.0,
        allow_foreign_keys=False,
        workers=2,
        previous_key_paths=["old.key"],
        admin_token_file="/run/admin",
        metrics_token_file="/run/metrics",
        log_format="json",
    )
    back = WorkerConfig.loads(config.dumps())
    assert back == config
    assert back.previous_key_paths == ["old.key"]
    assert (back.admin_token_file, back.metrics_token_file) == ("/run/admin", "/run/metrics")
    assert back.metrics_dir is None  # serve_workers sets its private directory


# -- keys -----------------------------------------------------------------------------------


def test_api_and_keygen_agree_on_oprf(tmp_path: Path) -> None:
    assert ServerKey.generate().mode is Mode.OPRF
    assert main(["keygen", str(tmp_path / "k")]) == 0
    assert ServerKey.load(tmp_path / "k").mode is Mode.OPRF
    with open_store("memory://") as store:
        server = DiscoveryServer(store, ServerKey.generate(), DataKey.generate())
        assert server.info("oprf+filter")
