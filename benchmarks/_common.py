"""Shared harness for the benchmarks: arguments, timing, goals, and JSON/Markdown/PNG output.

Goals are *ratios against a baseline measured in the same run* (the machine is noisy, two
cores), never absolute times. ``--quick`` shrinks every workload so the test suite can run each
benchmark as a smoke test; goals are still computed and printed but only ``--check`` turns a
missed goal into a non-zero exit status (``run_all.py`` passes it on full runs only: a quick
run's sizes are too small for its ratios to mean anything).

Plots are drawn by :mod:`contactmatch.lab.plots` (also used by ``contactmatch bench``): a title
saying what is measured and with which parameters, legends below the axes, never over data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from contactmatch.lab.plots import new_figure, save_figure

RESULTS = Path(__file__).resolve().parent / "results"
#: ``run_all.py`` sets this to a file to which each report appends the path of its JSON.
MANIFEST_ENV = "CONTACTMATCH_BENCH_MANIFEST"
# Piped output (CI logs, `make bench > file`) gets a wide console so tables are not truncated.
console = Console(width=None if sys.stdout.isatty() else 160)


def parse_args(description: str, **extra: tuple[type, Any, str]) -> argparse.Namespace:
    """Common flags plus benchmark-specific ones given as ``name=(type, default, help)``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny workload: a smoke test, not a figure")
    p.add_argument("--check", action="store_true", help="exit 1 if any goal is missed")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for JSON/Markdown/PNG")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    for name, (typ, default, help_) in extra.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=default, help=help_)
    return p.parse_args()


def best_of(fn: Callable[[], object], *, repeat: int = 5, number: int = 1) -> float:
    """Best wall time of ``repeat`` runs of ``number`` calls: the least noisy estimate of cost."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar; yields ``advance(n)``."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@dataclass
class Goal:
    """One target: ``value`` must be >= ``target`` (at_least) or <= ``target``."""

    name: str
    value: float
    target: float
    at_least: bool

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.at_least else self.value <= self.target


@dataclass
class Report:
    """Collects rows and goals of one benchmark and writes them out in three forms.

    ``title`` heads the plot and the Markdown: what is measured and with which key parameters
    (sizes as the run used them, so a quick run's title says its small sizes).
    """

    name: str
    args: argparse.Namespace
    title: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def row(self, **values: Any) -> None:
        for k in values:
            if k not in self.columns:
                self.columns.append(k)
        self.rows.append(values)

    def goal(self, name: str, value: float, target: float, *, at_least: bool) -> Goal:
        g = Goal(name, float(value), float(target), at_least)
        self.goals.append(g)
        return g

    def note(self, text: str) -> None:
        self.notes.append(text)

    def _fmt(self, v: Any) -> str:
        if isinstance(v, float):
            if v == 0 or 0.01 <= abs(v) < 1e6:
                return f"{v:,.3f}".rstrip("0").rstrip(".")
            return f"{v:.3g}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    def markdown(self) -> str:
        lines = [f"# {self.name}", ""]
        if self.title:
            lines += [self.title.replace("\n", " "), ""]
        if self.params:
            lines.append(
                "Parameters: " + ", ".join(f"{k}={self._fmt(v)}" for k, v in self.params.items())
            )
            lines.append("")
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines.extend(
            "| " + " | ".join(self._fmt(r.get(c, "")) for c in self.columns) + " |"
            for r in self.rows
        )
        if self.goals:
            lines += ["", "| goal | measured | target | met |", "|---|---|---|---|"]
            for g in self.goals:
                op = ">=" if g.at_least else "<="
                lines.append(
                    f"| {g.name} | {self._fmt(g.value)} | {op} {self._fmt(g.target)} | "
                    f"{'yes' if g.met else 'NO'} |"
                )
        lines += ["", *self.notes] if self.notes else []
        return "\n".join(lines) + "\n"

    def print(self) -> None:
        t = Table(title=f"{self.name}: {self.title}" if self.title else self.name)
        for c in self.columns:
            t.add_column(c, justify="right" if c != self.columns[0] else "left")
        for r in self.rows:
            t.add_row(*(self._fmt(r.get(c, "")) for c in self.columns))
        console.print(t)
        if self.goals:
            g_t = Table(title="goals (ratios measured in this run)")
            for c in ("goal", "measured", "target", "met"):
                g_t.add_column(c)
            for g in self.goals:
                op = ">=" if g.at_least else "<="
                g_t.add_row(
                    g.name,
                    self._fmt(g.value),
                    f"{op} {self._fmt(g.target)}",
                    "[green]yes[/]" if g.met else "[red]NO[/]",
                )
            console.print(g_t)
        for n in self.notes:
            console.print(n)

    def finish(self, plot: Callable[[Any], None] | None = None) -> int:
        """Print, write ``<out>/<name>.{json,md,png}``; return the process exit status.

        ``plot(ax)`` draws on one axes; the title and the legend's place (below the axes) are
        set here, so every benchmark's figure follows the same rules.
        """
        self.print()
        out: Path = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        doc = {
            "benchmark": self.name,
            "title": self.title or self.name,
            "quick": bool(self.args.quick),
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "params": self.params,
            "rows": self.rows,
            "goals": [asdict(g) | {"met": g.met} for g in self.goals],
            "notes": self.notes,
        }
        json_path = out / f"{self.name}.json"
        json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        (out / f"{self.name}.md").write_text(self.markdown())
        if plot is not None and not self.args.no_plot:
            fig, (ax,) = new_figure()
            plot(ax)
            save_figure(fig, out / f"{self.name}.png", title=self.plot_title())
        if manifest := os.environ.get(MANIFEST_ENV):
            with open(manifest, "a", encoding="utf-8") as f:
                f.write(f"{json_path.resolve()}\n")
        missed = [g for g in self.goals if not g.met]
        return 1 if (self.args.check and missed) else 0

    def plot_title(self) -> str:
        """The figure's title; a quick run says so, as its figures are not results."""
        title = self.title or self.name
        return f"{title}\n[--quick: smoke-test sizes, not a result]" if self.args.quick else title
