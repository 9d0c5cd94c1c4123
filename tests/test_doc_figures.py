"""Every figure in README.md and docs/ comes from a committed benchmark result.

``benchmarks/docs_figures.py`` renders the docs' results blocks from ``docs/results/`` and finds
prose figures that no result file holds; these tests fail on either, and check that the checker
itself catches what it should (a made-up figure, a stale block, a quick run).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_figures", ROOT / "benchmarks" / "docs_figures.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_figures"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


figs = _load()


def test_results_are_committed_full_runs() -> None:
    results = figs.load_results()
    assert results, "docs/results/ holds no benchmark result"
    assert [name for name, doc in results.items() if doc.get("quick")] == []
    for name in results:
        assert (figs.RESULTS / f"{name}.md").is_file()


def test_results_blocks_are_up_to_date() -> None:
    assert figs.stale() == [], "run: python benchmarks/docs_figures.py"


def test_every_figure_in_the_docs_is_held_by_a_result_file() -> None:
    unheld = [str(f) for f in figs.unheld_figures()]
    assert unheld == [], "figures that no file in docs/results/ holds:\n" + "\n".join(unheld)


def test_every_results_block_names_a_committed_result() -> None:
    for path in figs.docs():
        for m in figs._BLOCK.finditer(path.read_text(encoding="utf-8")):
            assert (figs.RESULTS / f"{m.group('bench')}.md").is_file(), (path.name, m.group())
            assert (m.group("part") or "all") in figs.PARTS


# The checker, on a small made-up tree: it must catch what it exists to catch.


def _tree(tmp_path: Path, prose: str) -> tuple[Path, Path]:
    root, results = tmp_path / "root", tmp_path / "root" / "docs" / "results"
    results.mkdir(parents=True)
    doc = {
        "benchmark": "bench_x",
        "quick": False,
        "params": {"users": 1_000_000},
        "rows": [{"case": "a", "ms": 79.93, "per_s": 11736.4, "bytes": 2_893_824}],
        "goals": [{"name": "ratio", "value": 1.245, "target": 1.25, "at_least": False}],
        "notes": ["the floor was 64.2 ms"],
    }
    (results / "bench_x.json").write_text(json.dumps(doc))
    (results / "bench_x.md").write_text(
        "# bench_x\n\nParameters: users=1,000,000\n\n| case | ms |\n|---|---|\n| a | 79.93 |\n"
        "\n| goal | measured | target | met |\n|---|---|---|---|\n| ratio | 1.245 | <= 1.25 | yes |"
        "\n\nthe floor was 64.2 ms\n"
    )
    (root / "README.md").write_text(prose)
    return root, results


@pytest.mark.parametrize(
    "prose",
    [
        "It takes 79.9 ms, 80 ms, 0.08 s; 11,736/s; 1.245× (goal ≤ 1.25×); 2.76 MiB; 2.9 MB.",
        "About 11,000/s; ~64 ms; the floor 64.2 ms. A setting: `4 MiB`.",
        "```\n$ time run\n12.3 s\n```\n",
    ],
)
def test_checker_accepts_figures_a_result_holds(tmp_path: Path, prose: str) -> None:
    root, results = _tree(tmp_path, prose)
    assert figs.unheld_figures(root, results) == []


@pytest.mark.parametrize(
    ("prose", "culprit"),
    [
        ("It runs at 14.7× the speed.", "14.7×"),
        ("Start-up takes 15.5 s.", "15.5 s"),
        ("A sync costs 79.8 ms here.", "79.8 ms"),  # one decimal too far from 79.93
        ("about 40 ms", "about 40 ms"),  # approximate, but 50 % off
        ("It used 843 B/user.", "843 B/user"),
    ],
)
def test_checker_finds_a_figure_no_result_holds(tmp_path: Path, prose: str, culprit: str) -> None:
    root, results = _tree(tmp_path, prose)
    assert [f.text.strip() for f in figs.unheld_figures(root, results)] == [culprit]


def test_blocks_render_from_results_and_stale_ones_are_found(tmp_path: Path) -> None:
    root, results = _tree(
        tmp_path,
        "Intro.\n\n<!-- results: bench_x part=goals -->\nold\n<!-- /results -->\n\n"
        "<!-- results: bench_x -->\n<!-- /results -->\n",
    )
    assert figs.stale(root, results) == ["README.md"]
    rendered = figs.render((root / "README.md").read_text(), results)
    (root / "README.md").write_text(rendered)
    assert figs.stale(root, results) == []
    goals = rendered.split("<!-- results: bench_x part=goals -->\n")[1].split("<!--")[0]
    assert goals.startswith("| goal | measured")
    assert "| a | 79.93 |" not in goals
    assert "| a | 79.93 |" in rendered
    assert "the floor was 64.2 ms" in rendered
    # Figures inside generated blocks are the results themselves: never reported.
    assert figs.unheld_figures(root, results) == []


def test_publish_refuses_a_quick_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name, quick in (("bench_full", False), ("bench_quick", True)):
        (run / f"{name}.json").write_text(json.dumps({"benchmark": name, "quick": quick}))
        (run / f"{name}.md").write_text(f"# {name}\n")
    dest = tmp_path / "results"
    assert figs.publish(run, dest) == ["bench_full"]
    assert sorted(p.name for p in dest.iterdir()) == ["bench_full.json", "bench_full.md"]
