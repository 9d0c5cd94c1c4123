"""Every benchmark also runs as a smoke test (``--quick``): it must finish and write its JSON.

Goals are not asserted here: timing belongs in benchmarks, never in tests (noisy 2-core CI).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
BENCHES = sorted(p for p in BENCH_DIR.glob("bench_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES, ids=[p.stem for p in BENCHES])
def test_benchmark_runs_quick(bench: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(bench), "--quick", "--no-plot", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = list(tmp_path.glob("*.json"))
    assert reports, "benchmark wrote no JSON report"
    for r in reports:
        doc = json.loads(r.read_text())
        assert doc["quick"] is True
        assert doc["rows"], f"{r.name} has no rows"
