"""``benchmarks/bench_http.py`` end to end at a tiny size: a real ``contactmatch serve``.

2,000 registered users, 100-contact books, two seconds per phase, both worker counts when
``serve`` has ``--workers``: the bench must finish, write its JSON, Markdown and PNG, measure
first syncs and re-syncs for every worker count and the per-request breakdown, and see no
failed request. Its goals (CPU
ratios, scaling) are not asserted: timing belongs in benchmarks, never in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_http.py"


def _serve_has_workers() -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "contactmatch.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return "--workers" in help_text


@pytest.mark.slow
def test_bench_http_tiny_run_has_no_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable, str(BENCH),
            "--users", "2000",
            "--book", "100",
            "--books", "2",
            "--seconds", "2",
            "--concurrency", "4",
            "--workers", "1,2",
            "--out", str(out),
            "--cache", str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for ext in ("json", "md", "png"):
        assert (out / f"bench_http.{ext}").stat().st_size > 0, ext

    doc = json.loads((out / "bench_http.json").read_text())
    assert doc["quick"] is False
    assert doc["params"]["users"] == 2000
    syncs = [r for r in doc["rows"] if r["sync"] in ("first", "re-sync")]
    workers = [1, 2] if _serve_has_workers() else [1]
    assert sorted((r["workers"], r["sync"]) for r in syncs) == sorted(
        (w, kind) for w in workers for kind in ("first", "re-sync")
    )
    # The per-request breakdown at 1 worker: info, whole filter, 304, evaluate, lookup.
    requests = [r for r in doc["rows"] if str(r["sync"]).startswith("request:")]
    assert len(requests) == 5
    for r in syncs + requests:
        assert r["syncs"] > 0, r
        assert r["errors"] == 0, r
        assert r["server_cpu_ms_per_sync"] >= 0, r
    # The peer and the floor sit beside the measured rows.
    baselines = {r["sync"] for r in doc["rows"] if r["workers"] == "-"}
    assert "floor: bare scalar mults" in baselines
    errors = [g for g in doc["goals"] if g["name"] == "errors (all phases)"]
    assert errors
    assert errors[0]["value"] == 0
    assert errors[0]["met"] is True
