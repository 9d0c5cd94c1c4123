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


def test_normalize_csv_export_shows_digits_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A CSV export read as lines: each reject is a whole line, the contact's name included.
    f = tmp_path / "export.csv"
    f.write_text(
        "Name,Phone\n"
        "Shirin Ebadi,0912 345 6789\n"
        "Forough Farrokhzad,+98 21 8877 6655\n"
        "Zahra Kazemi,0912 345 678\n"
        "Kian 2,+98 21 8877 6655\n",
        encoding="utf-8",
    )
    assert main(["normalize", str(f), "--region", "IR"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "+989123456789\n"
    for fragment in ("Nam", "Phone", "Shi", "For", "Farrokhzad", "Zah", "Kazemi", "Kia", "0912"):
        assert fragment not in cap.err
    assert cap.err.splitlines() == [
        "entry 1: not_a_number",  # no digit at all: no mask
        "entry 3 (+98********55): not_mobile",  # international: calling code and two digits
        "entry 4 (********78): invalid_for_region",  # national: two digits
        "entry 5 (***********55): not_a_number",  # a digit before the "+": not international
        "1 of 5 entries normalised, 4 rejected",
    ]


def test_normalize_refuses_a_file_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "latin1.txt"
    f.write_bytes("Zoë,0912 345 6789\n".encode("latin-1"))
    assert main(["normalize", str(f), "--region", "IR"]) == 2  # a clean error, no traceback
    err = capsys.readouterr().err
    assert "not UTF-8" in err
    assert "Zo" not in err


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


def test_vacuum_command_expires_rate_state_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from contactmatch.stores import open_store

    url = f"sqlite:///{tmp_path}/v.db"
    with open_store(url) as store:
        store.take("n:" + "ab" * 16, "eval", 5.0, capacity=10.0, refill_per_s=1.0, now=1.0)
    assert main(["vacuum", "--store", url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rate_state_expired"] == 1  # drained long ago (time 1.0 + 5 s)
