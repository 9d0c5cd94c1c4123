"""PNG plots of benchmark results, shared by ``contactmatch bench`` and ``benchmarks/``.

matplotlib is the ``bench`` extra and is imported only when a plot is drawn; without it,
:func:`new_figure` raises :class:`~contactmatch.errors.MissingDependency`. Every figure uses
constrained layout and keeps its legends outside the axes (below them), so a legend never
covers data, and carries a title saying what is measured and with which parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contactmatch.errors import MissingDependency

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "new_figure",
    "plot_schemes",
    "require_matplotlib",
    "save_figure",
    "save_schemes_plot",
    "schemes_title",
]


def require_matplotlib() -> None:
    """Fail early (before a long run) if plots cannot be drawn.

    Raises:
        MissingDependency: matplotlib (the ``bench`` extra) is not installed.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("bench", "matplotlib") from exc


def new_figure(
    ncols: int = 1, *, figsize: tuple[float, float] = (8, 5)
) -> tuple[Figure, list[Axes]]:
    """A figure of ``ncols`` side-by-side axes drawn off-screen (Agg), constrained layout.

    Raises:
        MissingDependency: matplotlib (the ``bench`` extra) is not installed.
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    from matplotlib.figure import Figure

    # A Figure made directly (not via pyplot) is freed with its last reference: no plt.close.
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _legends_below(fig: Figure, axes: Sequence[Axes]) -> None:
    """Replace each axes' legend by one figure legend below all the axes (outside the data)."""
    handles: list[Any] = []
    labels: list[str] = []
    for ax in axes:
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if labels:
        longest = max(len(label) for label in labels)
        per_row = 4 if longest <= 20 else 3 if longest <= 32 else 2
        ncols = min(len(labels), per_row)
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=8)


def save_figure(fig: Figure, path: Path | str, *, title: str) -> Path:
    """Move legends below the axes, set ``title`` and write ``path`` as a PNG; returns it."""
    _legends_below(fig, fig.axes)
    fig.suptitle(title, fontsize=11)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def schemes_title(registry: int, book: int, anonymity: int) -> str:
    """The scheme comparison's title: what is measured and on which workload."""
    return (
        f"Scheme comparison: KiB sent and received per discovery\n"
        f"({registry:,} registered users, phone book of {book:,} contacts, "
        f"bucket anonymity {anonymity})"
    )


def plot_schemes(ax: Axes, rows: Sequence[Mapping[str, Any]]) -> None:
    """Bars of KiB up and down per scheme; ``rows`` have ``scheme``, ``kb_up``, ``kb_down``."""
    names = [str(r["scheme"]) for r in rows]
    xs = list(range(len(names)))
    ax.bar([x - 0.2 for x in xs], [r["kb_up"] for r in rows], width=0.4, label="KiB up")
    ax.bar([x + 0.2 for x in xs], [r["kb_down"] for r in rows], width=0.4, label="KiB down")
    ax.set_xticks(xs, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("KiB per discovery (log scale)")
    ax.set_yscale("log")
    ax.legend()


def save_schemes_plot(rows: Sequence[Mapping[str, Any]], path: Path | str, *, title: str) -> Path:
    """Write the scheme comparison's PNG (as ``benchmarks/bench_schemes.py`` does).

    Raises:
        MissingDependency: matplotlib (the ``bench`` extra) is not installed.
    """
    fig, (ax,) = new_figure()
    plot_schemes(ax, rows)
    return save_figure(fig, path, title=title)
