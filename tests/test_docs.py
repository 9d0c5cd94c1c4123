"""Code in the docs runs: the README's and the API guide's examples execute as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md"])
def test_examples_run(doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may create a registry file in the working directory
    blocks = python_blocks(ROOT / doc)
    assert blocks
    namespace: dict[str, object] = {}
    for code in blocks:
        exec(compile(code, doc, "exec"), namespace)
    result = namespace["result"]
    assert result.matches  # type: ignore[attr-defined]


def test_make_commands_in_the_docs_are_makefile_targets() -> None:
    # Every `make X` a reader is told to run (README and docs/) must exist in the Makefile.
    targets = set(
        re.findall(r"^([A-Za-z][\w.-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    )
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    told = {
        (doc.name, target)
        for doc in docs
        # Commands only: `make X` in inline code, or a line of a code block starting with it.
        for target in re.findall(
            r"(?:`|^)make ([a-z][\w-]*)", doc.read_text(encoding="utf-8"), re.M
        )
    }
    assert ("README.md", "test") in told  # the README does tell readers how to run the tests
    assert {(doc, t) for doc, t in told if t not in targets} == set()
