"""The command line: normalize, --version, --help, demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contactmatch import __version__
from contactmatch.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "normalize" in out
    assert "demo" in out


def test_normalize_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "numbers.txt"
    f.write_text("0912 345 6789\n+98 912 345 6789\n021 8877 6655\nabc\n", encoding="utf-8")
    assert main(["normalize", str(f), "--region", "IR"]) == 0
    cap = capsys.readouterr()
    assert cap.out.splitlines() == ["+989123456789", "+989123456789"]
    assert "entry 3" in cap.err
    assert "not_mobile" in cap.err
    assert "02188776655" not in cap.err  # rejects are masked
    assert "2 of 4 entries normalised" in cap.err


def test_normalize_all_types_and_unique(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "numbers.txt"
    f.write_text("0912 345 6789\n+98 912 345 6789\n021 8877 6655\n", encoding="utf-8")
    assert main(["normalize", str(f), "--region", "IR", "--all-types", "--unique"]) == 0
    assert capsys.readouterr().out.splitlines() == ["+989123456789", "+982188776655"]


def test_normalize_vcard_drops_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "book.vcf"
    f.write_text(
        "BEGIN:VCARD\nVERSION:3.0\nFN:Secret Name\nTEL:0912 345 6789\nEND:VCARD\n",
        encoding="utf-8",
    )
    assert main(["normalize", str(f), "--region", "IR"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "+989123456789\n"
    assert "Secret" not in cap.out + cap.err


def test_missing_file_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["normalize", str(tmp_path / "nope.txt")]) == 2
    assert "error" in capsys.readouterr().err


def test_malformed_vcard_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "book.vcf"
    f.write_text("BEGIN:VCARD\nTEL:0912 345 6789\n", encoding="utf-8")
    assert main(["normalize", str(f)]) == 2
    assert "END:VCARD" in capsys.readouterr().err


def test_console_script_reads_stdin() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "contactmatch.cli", "normalize", "-", "--region", "IR"],
        input="۰۹۱۲ ۳۴۵ ۶۷۸۹\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == "+989123456789\n"
