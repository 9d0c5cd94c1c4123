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


# --- benchmarks/run_all.py (`make bench`): a missed goal fails a full run, names the goal --------

RUN_ALL = BENCH_DIR / "run_all.py"
FAKE_BENCH = """
import sys
sys.path.insert(0, {bench_dir!r})
from _common import Report, parse_args

args = parse_args("a fake benchmark")
{crash}
report = Report("{name}", args, title="Fake: speed by size")
report.row(size=1, speed=0.5)
report.goal("fake speed-up vs baseline", {value}, 2.0, at_least=True)
raise SystemExit(report.finish(lambda ax: ax.plot([1, 2], [1, 2], label="speed")))
"""


def _fake_bench(tmp_path: Path, name: str, *, value: float, crash: bool = False) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(
        FAKE_BENCH.format(
            bench_dir=str(BENCH_DIR),
            name=name,
            value=value,
            crash="raise RuntimeError('boom')" if crash else "",
        )
    )
    return path


def _run_all(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN_ALL), "--out", str(tmp_path / "out"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_run_all_fails_and_names_a_missed_goal(tmp_path: Path) -> None:
    missed = _fake_bench(tmp_path, "bench_fake_missed", value=0.5)
    met = _fake_bench(tmp_path, "bench_fake_met", value=3.0)
    proc = _run_all(tmp_path, "--no-plot", missed, met)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = proc.stdout[proc.stdout.index("== summary") :]
    assert "bench_fake_missed: fake speed-up vs baseline = 0.5 (target >= 2)" in summary
    assert "bench_fake_missed.py" in summary
    assert "GOALS MISSED" in summary
    assert "bench_fake_met.py" in summary
    assert "1/1 goals met" in summary
    assert summary.rstrip().endswith(f"Results (JSON, Markdown, PNG): {tmp_path / 'out'}")
    assert "FAIL" in summary.splitlines()[-2]


def test_run_all_passes_when_every_goal_is_met(tmp_path: Path) -> None:
    met = _fake_bench(tmp_path, "bench_fake_met", value=3.0)
    proc = _run_all(tmp_path, met)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
    png = tmp_path / "out" / "bench_fake_met.png"
    assert png.read_bytes().startswith(b"\x89PNG")


def test_run_all_quick_prints_missed_goals_without_failing(tmp_path: Path) -> None:
    missed = _fake_bench(tmp_path, "bench_fake_missed", value=0.5)
    proc = _run_all(tmp_path, "--quick", "--no-plot", missed)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not enforced" in proc.stdout
    assert "fake speed-up vs baseline" in proc.stdout
    doc = json.loads((tmp_path / "out" / "bench_fake_missed.json").read_text())
    assert doc["quick"] is True
    assert doc["title"] == "Fake: speed by size"


def test_run_all_quick_fails_on_a_crash_and_runs_the_rest(tmp_path: Path) -> None:
    crashed = _fake_bench(tmp_path, "bench_fake_crash", value=3.0, crash=True)
    met = _fake_bench(tmp_path, "bench_fake_met", value=3.0)
    proc = _run_all(tmp_path, "--quick", "--no-plot", crashed, met)
    assert proc.returncode == 1
    assert "bench_fake_crash.py" in proc.stdout
    assert "FAILED (exit status 1)" in proc.stdout
    assert (tmp_path / "out" / "bench_fake_met.json").is_file()


# --- `contactmatch bench --plot`: the same PNG as bench_schemes.py, from the same code -----------


def test_cli_bench_writes_the_schemes_plot(tmp_path: Path) -> None:
    from contactmatch.cli import main

    png = tmp_path / "plots" / "schemes.png"
    argv = ["bench", "--registry", "300", "--book", "20", "--schemes", "plain+lookup,hmac+bucket"]
    assert main([*argv, "--json", "--plot", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")


def test_cli_bench_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from contactmatch.cli import main
    from contactmatch.errors import MissingDependency
    from contactmatch.lab.plots import new_figure

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MissingDependency, match=r"contactmatch\[bench\]"):
        new_figure()
    png = tmp_path / "schemes.png"
    assert main(["bench", "--registry", "50", "--book", "5", "--plot", str(png)]) == 2
    assert "pip install 'contactmatch[bench]'" in capsys.readouterr().err
    assert not png.exists()
