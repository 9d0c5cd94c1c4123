"""Keep every figure in README.md and docs/ tied to a benchmark run.

The results of full benchmark runs are committed under ``docs/results/`` (each benchmark's
JSON, Markdown and PNG). Docs include a benchmark's tables between markers, which this script
regenerates::

    <!-- results: bench_phone -->            the whole Markdown (tables, goals, notes)
    <!-- results: bench_http part=goals -->  one part: table | goals | notes | params
    ...generated, do not edit...
    <!-- /results -->

Prose may quote a figure (a number with a unit of time, size, rate or ratio) only if a result
file holds it: :func:`unheld_figures` finds those that none does, and ``tests/test_doc_figures.py``
fails on them. Settings written as inline code (```4 MiB```) are values, not measurements, and are
not checked; neither are fenced code blocks.

Usage::

    python benchmarks/docs_figures.py --publish benchmarks/results   # copy a full run in, render
    python benchmarks/docs_figures.py                                # re-render the blocks
    python benchmarks/docs_figures.py --check                        # exit 1 if stale or unheld
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
PARTS = ("all", "params", "table", "goals", "notes")

_BLOCK = re.compile(
    r"(?P<open><!-- results: (?P<bench>[\w-]+)(?: part=(?P<part>\w+))? -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /results -->)",
    re.S,
)
# A figure: a number followed by a unit of time, size, rate or ratio. Percentages and bare
# counts are left out: in these docs they are mostly settings and sizes of a workload.
_UNIT = (
    r"(?:×|x(?![\w])|ms\b|µs\b|us\b|ns\b|s\b|/s\b|MiB\b|KiB\b|GiB\b|MB\b|KB\b|kB\b|GB\b"
    r"|B/user\b|bytes per user\b)"
)
_FIGURE = re.compile(
    r"(?P<approx>(?i:~|≈|about |roughly |nearly |near |around )\s*)?"
    r"(?<![\w.^/-])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)\s?(?P<unit>" + _UNIT + ")"
)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
# The same quantity is often quoted in another unit than the result file's (ms for s, MiB for
# bytes): a figure is held if it equals a result value under one of these scalings.
_SCALES = (1.0, 1e3, 1e-3, 1e6, 1e-6, 1e-9, 2.0**-10, 2.0**-20, 2.0**-30, 100.0)
#: Relative tolerance of figures marked as approximate (``~60 ms``, ``about 11×``).
APPROX = 0.15


@dataclass(frozen=True)
class Figure:
    """One figure quoted in a doc's prose."""

    doc: str
    line: int
    text: str
    value: float
    decimals: int
    approximate: bool

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text.strip()}"


def docs(root: Path = ROOT) -> list[Path]:
    """The documents whose figures must come from results: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def load_results(results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every committed result, by benchmark name (from its JSON)."""
    out = {}
    for path in sorted(results.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out[path.stem] = doc
    return out


def _numbers(obj: Any) -> Iterator[float]:
    if isinstance(obj, bool):
        return
    if isinstance(obj, int | float):
        if math.isfinite(obj):
            yield float(obj)
    elif isinstance(obj, str):
        for m in _NUMBER.finditer(obj):
            yield float(m.group().replace(",", ""))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


def held_values(results: dict[str, dict[str, Any]]) -> list[float]:
    """Every number the result files hold (values, parameters, goal targets, notes)."""
    return sorted({v for doc in results.values() for v in _numbers(doc)})


def _prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines outside fenced code and generated blocks, with inline code removed."""
    inside_fence = inside_block = False
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            inside_fence = not inside_fence
            continue
        if stripped.startswith("<!-- results:"):
            inside_block = True
            continue
        if stripped.startswith("<!-- /results -->"):
            inside_block = False
            continue
        if inside_fence or inside_block:
            continue
        yield i, re.sub(r"`[^`]*`", "", line)


def figures(path: Path) -> list[Figure]:
    """The figures a document's prose quotes."""
    out = []
    for i, line in _prose_lines(path.read_text(encoding="utf-8")):
        for m in _FIGURE.finditer(line):
            num = m.group("num").replace(",", "")
            decimals = len(num.split(".")[1]) if "." in num else 0
            out.append(
                Figure(path.name, i, m.group(), float(num), decimals, m.group("approx") is not None)
            )
    return out


def is_held(fig: Figure, values: list[float]) -> bool:
    """Whether some result value, in some unit, rounds to the figure as the doc wrote it."""
    for scale in _SCALES:
        for v in values:
            x = abs(v) * scale
            if fig.approximate:
                if x and abs(x - fig.value) <= APPROX * x:
                    return True
            elif abs(x - fig.value) <= 0.5 * 10.0**-fig.decimals + 1e-9 * x:
                return True
    return False


def unheld_figures(root: Path = ROOT, results: Path = RESULTS) -> list[Figure]:
    """Figures quoted in README.md or docs/ that no committed result file holds."""
    values = held_values(load_results(results))
    return [f for path in docs(root) for f in figures(path) if not is_held(f, values)]


def _part(markdown: str, part: str) -> str:
    """One part of a benchmark's Markdown, without its ``# name`` heading."""
    body = markdown.split("\n", 2)[2] if markdown.startswith("# ") else markdown
    if part == "all":
        return body.strip() + "\n"
    chunks = [c.strip() for c in body.strip().split("\n\n")]
    params = [c for c in chunks if c.startswith("Parameters:")]
    tables = [c for c in chunks if c.startswith("|")]
    table = [t for t in tables if not t.startswith("| goal | measured")]
    goals = [t for t in tables if t.startswith("| goal | measured")]
    last_table = max((i for i, c in enumerate(chunks) if c.startswith("|")), default=-1)
    notes = chunks[last_table + 1 :]
    picked = {"params": params, "table": table, "goals": goals, "notes": notes}[part]
    return "\n\n".join(picked) + "\n" if picked else ""


def render(text: str, results: Path = RESULTS) -> str:
    """``text`` with every results block regenerated from ``results``."""

    def block(m: re.Match[str]) -> str:
        bench, part = m.group("bench"), m.group("part") or "all"
        if part not in PARTS:
            raise SystemExit(f"unknown part {part!r} for {bench}; one of {', '.join(PARTS)}")
        md = results / f"{bench}.md"
        if not md.is_file():  # left as it is; the tests name the block
            print(f"warning: no committed result for {bench} ({md})", file=sys.stderr)
            return m.group()
        return m.group("open") + _part(md.read_text(encoding="utf-8"), part) + m.group("close")

    return _BLOCK.sub(block, text)


def stale(root: Path = ROOT, results: Path = RESULTS) -> list[str]:
    """Documents whose results blocks differ from what the committed results render."""
    return [
        p.name for p in docs(root) if render(p.read_text("utf-8"), results) != p.read_text("utf-8")
    ]


def publish(source: Path, results: Path = RESULTS) -> list[str]:
    """Copy a full run's JSON, Markdown and PNG files into ``results``; quick runs refused."""
    copied = []
    for js in sorted(source.glob("bench_*.json")):
        doc = json.loads(js.read_text(encoding="utf-8"))
        if doc.get("quick"):
            print(f"skipped {js.name}: a --quick run is a smoke test, not a result")
            continue
        results.mkdir(parents=True, exist_ok=True)
        for ext in (".json", ".md", ".png"):
            src = js.with_suffix(ext)
            if src.is_file():
                shutil.copyfile(src, results / src.name)
        copied.append(js.stem)
    return copied


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--publish", type=Path, metavar="DIR", help="copy a full run's results in")
    p.add_argument("--check", action="store_true", help="exit 1 if a doc is stale or unheld")
    args = p.parse_args(argv)
    if args.publish:
        print("published:", ", ".join(publish(args.publish)) or "nothing")
    if args.check:
        bad = [f"{name}: results blocks are stale (run this script)" for name in stale()]
        bad += [f"{f}: no result file holds this figure" for f in unheld_figures()]
        print("\n".join(bad) or "every figure is held by a committed result")
        return 1 if bad else 0
    for path in docs():
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rendered {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
