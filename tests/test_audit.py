"""The attack lab: hash reversal, the leakage report, quota scaling and `contactmatch audit`."""

from __future__ import annotations

import argparse
import math
import random
import re

import pytest

from contactmatch.cli.audit import add_audit_arguments, audit_command
from contactmatch.errors import InvalidInput
from contactmatch.keys import ServerKey
from contactmatch.lab import leakage_report, reverse_sha256
from contactmatch.oprf import Mode
from contactmatch.ratelimit import DAY, RateLimits, scale_limits
from contactmatch.schemes import make_server_tokens, scheme_names

PREFIX, DIGITS = "+9891200", 5
KEY = ServerKey.derive(b"\x05" * 32, b"audit-test", Mode.OPRF)


@pytest.fixture(scope="module")
def victims() -> list[str]:
    rng = random.Random(3)
    return [f"{PREFIX}{i:0{DIGITS}d}" for i in rng.sample(range(10**DIGITS), 50)]


def test_sha256_tokens_are_reversed(victims: list[str]) -> None:
    tokens = make_server_tokens("sha256").tokens(victims)
    outside = make_server_tokens("sha256").tokens(["+989350000000"])
    rep = reverse_sha256([*tokens, *outside], [PREFIX], digits=DIGITS, block=30_000)
    assert rep.found == dict(zip(tokens, victims, strict=True))
    assert rep.candidates == 10**DIGITS
    assert rep.tokens == len(victims) + 1
    assert rep.hashes_per_s > 0
    assert rep.seconds_for(10**9) == pytest.approx(10**9 / rep.hashes_per_s)
    # The report's repr is loggable: no number in it.
    assert not any(v in repr(rep) for v in victims)


@pytest.mark.parametrize("token", ["hmac", "oprf"])
def test_keyed_tokens_resist_reversal(victims: list[str], token: str) -> None:
    tokens = make_server_tokens(token, KEY).tokens(victims)
    rep = reverse_sha256(tokens, [PREFIX], digits=DIGITS)
    assert rep.found == {}
    assert rep.candidates == 10**DIGITS


def test_reversal_counts_progress_over_several_prefixes() -> None:
    seen: list[int] = []
    prefixes = ["+98912000", "+98935000"]
    tokens = make_server_tokens("sha256").tokens(["+989350000123"])
    rep = reverse_sha256(tokens, prefixes, digits=4, block=3_000, progress=seen.append)
    assert sum(seen) == rep.candidates == 2 * 10**4
    assert list(rep.found.values()) == ["+989350000123"]


@pytest.mark.parametrize(
    ("prefixes", "digits"),
    [(["98912"], 7), (["+0912"], 7), (["+98x12"], 7), (["+98912"], 13), (["+98"], 2)],
)
def test_reversal_rejects_bad_ranges(prefixes: list[str], digits: int) -> None:
    with pytest.raises(InvalidInput):
        reverse_sha256([], prefixes, digits=digits)


def test_leakage_report_covers_every_scheme_and_states_the_bounds() -> None:
    lim = RateLimits()
    text = leakage_report(lim)
    for name in scheme_names():
        assert f"`{name}`" in text
    ev = lim.evaluations
    assert f"{ev.bound(DAY):,.0f}" in text
    assert f"{ev.refill_per_s * DAY:,.0f}" in text
    assert f"{lim.global_evaluations.refill_per_s * DAY:,.0f}" in text
    assert "min(A ×" in text
    # Other quotas, other figures: the words follow the settings.
    scaled = leakage_report(scale_limits(lim, 0.5))
    assert f"{ev.bound(DAY) * 0.5:,.0f}" in scaled
    assert scaled != text


def test_scale_limits_scales_numbers_not_time() -> None:
    lim = RateLimits()
    half = scale_limits(lim, 0.5)
    for name in ("evaluations", "new_tokens", "new_buckets", "global_evaluations"):
        q, h = getattr(lim, name), getattr(half, name)
        assert (h.name, h.period) == (q.name, q.period)
        assert h.capacity == q.capacity * 0.5
    assert half.requests == lim.requests
    assert half.max_items == round(lim.max_items * 0.5)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(InvalidInput):
            scale_limits(lim, bad)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="contactmatch audit")
    add_audit_arguments(parser)
    return audit_command(parser.parse_args(argv))


def test_audit_command_runs_every_attack_small(capsys: pytest.CaptureFixture[str]) -> None:
    status = run_cli(
        [
            "--accounts", "2", "5", "--days", "2", "--registry", "200", "--plan", "20000",
            "--book", "200", "--resyncs", "1", "--prefix", "+98912000", "--digits", "4",
        ]
    )  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    for expected in ("hmac+lookup", "oprf+filter", "oprf+bucket", "sha256", "learned"):
        assert expected in out
    # Counts and rates only: no phone number is ever printed.
    assert not re.search(r"\+?98912\d{7}", out)


def test_audit_command_runs_one_attack(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--leakage"]) == 0
    out = capsys.readouterr().out
    assert "sha256+filter" in out
    assert "scraper accounts" not in out


SMALL = [
    "--accounts", "2", "--days", "2", "--registry", "200", "--plan", "20000",
    "--book", "200", "--resyncs", "1", "--prefix", "+98912000", "--digits", "4",
]  # fmt: skip


def test_audit_json_is_the_same_report(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert run_cli([*SMALL, "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert set(doc) == {"leakage", "enumeration", "normal_user", "hash_reversal"}
    assert set(doc["leakage"]["schemes"]) == set(scheme_names())
    assert "sha256+filter" in doc["leakage"]["offline"]
    (sweep,) = doc["enumeration"]
    assert (sweep["scheme"], sweep["accounts"], len(sweep["rows"])) == ("hmac+lookup", 2, 2)
    assert sweep["rows"][-1]["learned_total"] <= sweep["rows"][-1]["cumulative_bound"]
    assert [r["scheme"] for r in doc["normal_user"]] == ["oprf+filter", "oprf+bucket"]
    assert all(r["all_correct"] and not r["ever_rate_limited"] for r in doc["normal_user"])
    found = {r["token_function"]: r["found"] for r in doc["hash_reversal"]}
    assert found["hmac"] == found["oprf"] == 0
    assert found["sha256"] > 0
    # Counts and rates only: no phone number is ever printed, not even in JSON.
    assert not re.search(r"\+?98912\d{7}", out)


def test_the_numbering_plan_is_data() -> None:
    from contactmatch.lab.plan import load_plan
    from contactmatch.phone import normalize

    plan = load_plan()
    assert (plan.country, plan.calling_code, plan.subscriber_digits) == ("IR", "98", 7)
    assert (plan.swept, plan.scrapers, plan.others) == ("+98912", "+98935", "+98919")
    assert plan.mobile_numbers == 10**9
    assert "Communications Regulatory Authority" in plan.source
    for prefix in plan.prefixes():
        number = plan.number(prefix, 1_234_567)
        assert normalize(number, mobile_only=True) == number  # every range is a mobile range
