"""How the commands print: rich tables that never truncate, JSON reports, progress on stderr.

The library returns reports and calls back with progress; everything that draws lives here.
Progress bars go to stderr so that stdout holds only the report (a table, Markdown, or JSON
with ``--json``) and can be piped; they are transient, and drawn only on a terminal (a log
gets no bar residue, not even a blank line). A pipe has no width to fit, so a table printed to
one is given its natural width: every row stays on one line with every value whole, for grep,
diff and CI logs. On a terminal, cells that do not fit fold onto more lines; none is cut short.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID
    from rich.table import Table

__all__ = [
    "Bar",
    "new_table",
    "print_markdown",
    "print_table",
    "progress_bar",
    "stdout_console",
    "write_json",
]

#: Width a table is measured in before printing it to a pipe (wider than any report's row).
_MEASURE_WIDTH = 10_000


def stdout_console() -> Console:
    """The report's console: its width is the terminal's, or rich's default for a pipe."""
    from rich.console import Console

    return Console(width=None)


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def new_table(title: str, columns: Sequence[str], *, left: Sequence[str] = ()) -> Table:
    """A table whose cells fold instead of being cut with an ellipsis.

    Args:
        title: shown above the table.
        columns: column headers; numbers are right-aligned.
        left: the headers of text columns (left-aligned).
    """
    from rich.table import Table

    table = Table(title=title)
    for name in columns:
        table.add_column(
            name, justify="left" if name in left else "right", overflow="fold", no_wrap=False
        )
    return table


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` whole: folded to a terminal, at its natural width to a pipe."""
    if not console.is_terminal:
        wide = console.options.update_width(_MEASURE_WIDTH)
        needed = console.measure(table, options=wide).maximum
        console.width = max(console.width, needed)
    console.print(table)


def print_markdown(console: Console, text: str) -> None:
    """Render Markdown on a terminal; write it as it is to a pipe (it is already readable,
    and its tables keep every cell whole)."""
    if console.is_terminal:
        from rich.markdown import Markdown

        console.print(Markdown(text))
    else:
        console.file.write(text if text.endswith("\n") else text + "\n")


def write_json(doc: Any) -> None:
    """Write a ``--json`` report to stdout (strict JSON: no NaN or infinity)."""
    sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr; yields ``advance(n)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = _stderr_console()
    with Progress(
        "[bold]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


class Bar:
    """Progress bars on stderr for the bulk commands, one per stage the library reports.

    ``update(stage, done, total)`` is the callback ``import_file`` and ``rotate_on_cluster``
    take; the library never sees rich.
    """

    def __init__(self, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        console = _stderr_console()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.label = label
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, stage: str, done: int, total: int | None) -> None:
        task = self.tasks.get(stage)
        if task is None:
            task = self.tasks[stage] = self.progress.add_task(f"{self.label}: {stage}", total=total)
        self.progress.update(task, completed=done, total=total)
