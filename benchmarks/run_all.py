"""Run every benchmark (``make bench``), then say which goals were missed; exit 1 if any.

Each ``bench_*.py`` runs as its own process, one after another (they measure the machine; two
at once would measure each other), and a failing one does not stop the rest. Full runs pass
``--check``; afterwards the goals are read back from the JSON reports each run wrote (their
paths come through the manifest file named by ``CONTACTMATCH_BENCH_MANIFEST``, see
``_common.Report.finish``) and every missed goal is listed with its benchmark.

``--quick`` (``make bench QUICK=1``) runs every benchmark at smoke-test sizes, writing to
``results/quick/`` so that full results are not overwritten. Quick sizes are too small for
the goals' ratios to mean anything: missed goals are printed but do not fail the run; only a
benchmark that crashes does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MANIFEST_ENV = "CONTACTMATCH_BENCH_MANIFEST"  # the same name as in _common.py


@dataclass
class Outcome:
    """One benchmark process: its exit status, the reports it wrote, the goals it missed."""

    bench: Path
    status: int
    seconds: float
    reports: list[Path] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    goals: int = 0


def run_one(bench: Path, out: Path, *, quick: bool, no_plot: bool) -> Outcome:
    """Run ``bench`` in a child process and read back the goals of the reports it wrote."""
    cmd = [sys.executable, str(bench), "--out", str(out)]
    cmd += ["--quick"] if quick else ["--check"]
    cmd += ["--no-plot"] if no_plot else []
    with tempfile.NamedTemporaryFile("r", suffix=".manifest", delete=False) as manifest:
        path = Path(manifest.name)
    try:
        t0 = time.perf_counter()
        status = subprocess.call(cmd, env=os.environ | {MANIFEST_ENV: str(path)})
        outcome = Outcome(bench, status, time.perf_counter() - t0)
        lines = path.read_text(encoding="utf-8").splitlines()
    finally:
        path.unlink(missing_ok=True)
    for line in dict.fromkeys(lines):
        report = Path(line)
        if not report.is_file():  # removed since (a benchmark's own clean-up): nothing to read
            continue
        outcome.reports.append(report)
        doc = json.loads(report.read_text(encoding="utf-8"))
        for g in doc.get("goals", []):
            outcome.goals += 1
            if not g["met"]:
                op = ">=" if g["at_least"] else "<="
                outcome.missed.append(
                    f"{doc['benchmark']}: {g['name']} = {g['value']:.4g} (target {op} "
                    f"{g['target']:.4g})"
                )
    return outcome


def summary(outcomes: list[Outcome], *, quick: bool) -> tuple[list[str], int]:
    """The summary's lines and the exit status of the whole run."""
    lines = [
        "",
        "== summary" + (" (--quick: smoke-test sizes; goals not enforced)" if quick else ""),
    ]
    failed = False
    for o in outcomes:
        goals = f"{o.goals - len(o.missed)}/{o.goals} goals met" if o.goals else "no goals"
        enforced = o.missed and not quick
        if enforced:
            verdict = "GOALS MISSED" + (f" (exit status {o.status})" if o.status > 1 else "")
        elif o.status != 0:
            verdict = f"FAILED (exit status {o.status})"
        elif not o.reports:
            verdict = "FAILED (wrote no report)"
        else:
            verdict = "ok"
        failed = failed or verdict != "ok"
        lines.append(f"{o.bench.name:28} {verdict:28} {goals:18} {o.seconds:7.1f} s")
    missed = [m for o in outcomes for m in o.missed]
    if missed:
        lines.append("")
        lines.append(
            "Goals missed at quick sizes (not enforced: quick sizes are a smoke test):"
            if quick
            else "Goals missed:"
        )
        lines += [f"  - {m}" for m in missed]
    lines.append("")
    lines.append("FAIL" if failed else "PASS")
    return lines, 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes; goals not enforced")
    p.add_argument("--out", type=Path, help="results directory (results/, or results/quick/)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("benches", nargs="*", type=Path, help="benchmarks to run (all bench_*.py)")
    args = p.parse_args(argv)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    benches = args.benches or sorted(HERE.glob("bench_*.py"))
    outcomes = []
    for bench in benches:
        print(f"== {bench.name}{' --quick' if args.quick else ''}", flush=True)
        outcomes.append(run_one(bench, out, quick=args.quick, no_plot=args.no_plot))
    lines, status = summary(outcomes, quick=args.quick)
    print("\n".join(lines))
    print(f"Results (JSON, Markdown, PNG): {out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
