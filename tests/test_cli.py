"""The command line: every command's wiring, its errors (never a traceback) and its output."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from contactmatch import __version__
from contactmatch.cli import main
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode


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
    # The file's name is kept (not its directory), and no traceback.
    assert capsys.readouterr().err == "contactmatch: error: No such file or directory: nope.txt\n"


@pytest.mark.parametrize(
    "data",
    [b"\x00\x01\x02\xff\xfe binary \x89PNG\r\n", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\xff"],
    ids=["binary", "gzip"],
)
def test_binary_input_gets_the_library_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes
) -> None:
    from contactmatch.contacts import read_contacts
    from contactmatch.errors import InvalidContactCard

    f = tmp_path / "book.bin"
    f.write_bytes(data)
    with pytest.raises(InvalidContactCard) as exc:
        read_contacts(data)
    assert main(["normalize", str(f)]) == 2
    assert capsys.readouterr().err == f"contactmatch: error: {exc.value}\n"


def test_binary_stdin_is_a_clean_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "contactmatch.cli", "normalize", "-"],
        input=b"\xff\xfe\x00\x00garbage",
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == b"contactmatch: error: contact input is not UTF-8\n"


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


def _mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_a_private_key_and_prints_only_its_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "server.key"
    assert main(["keygen", str(path)]) == 0
    key = ServerKey.load(path)
    assert _mode_of(path) == 0o600
    assert key.mode is Mode.OPRF
    out = capsys.readouterr().out
    assert out == f"wrote OPRF key {key.key_id} to {path} (mode 0600)\n"
    assert key.private_bytes().hex() not in out
    # An existing key is never replaced without --force.
    assert main(["keygen", str(path)]) == 2
    assert "server.key" in capsys.readouterr().err
    assert ServerKey.load(path).key_id == key.key_id
    assert main(["keygen", str(path), "--force", "--mode", "voprf"]) == 0
    replaced = ServerKey.load(path)
    assert (replaced.mode, _mode_of(path)) == (Mode.VOPRF, 0o600)
    assert replaced.key_id != key.key_id
    with pytest.raises(SystemExit) as exc:
        main(["keygen", str(tmp_path / "other.key"), "--mode", "rsa"])
    assert exc.value.code == 2
    assert not (tmp_path / "other.key").exists()


def test_ctrl_c_exits_130_and_says_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import contactmatch.maintenance

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(contactmatch.maintenance, "vacuum", interrupted)
    assert main(["vacuum", "--store", "memory://"]) == 130
    assert capsys.readouterr().err == "contactmatch: interrupted\n"


def test_ctrl_c_says_how_to_resume_where_resuming_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import contactmatch.bulk

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(contactmatch.bulk, "import_file", interrupted)
    monkeypatch.setattr(contactmatch.bulk, "rotate_on_cluster", interrupted)
    key = tmp_path / "new.key"
    ServerKey.generate(Mode.OPRF).save(key)
    common = ["--store", "memory://", "--data-key", str(tmp_path / "d")]
    assert main(["import", "in.csv", *common, "--key", str(key)]) == 130
    assert capsys.readouterr().err == "contactmatch: interrupted; run again to resume\n"
    assert main(["rotate", *common, "--new-key", str(key)]) == 130
    assert capsys.readouterr().err == "contactmatch: interrupted; run again to resume\n"


@pytest.mark.parametrize("port", ["0", "65536", "-1", "http", "80.5"])
def test_a_bad_port_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], port: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--key", str(tmp_path / "k"), "--port", port])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: contactmatch serve")
    assert "--port" in err
    assert "Traceback" not in err


def test_serve_options_exist_without_the_server_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``[server]`` the options still parse, and the handler names the fix."""
    for module in ("uvicorn", "starlette"):
        monkeypatch.setitem(sys.modules, module, None)  # "not installed" to find_spec
    key = tmp_path / "server.key"
    ServerKey.generate(Mode.OPRF).save(key)
    argv = ["serve", "--store", "memory://", "--key", str(key), "--port", "8081"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err
    assert err.startswith("contactmatch: error: ")
    assert "pip install 'contactmatch[server]'" in err
    assert "uvicorn is not installed" in err or "starlette is not installed" in err


def test_serve_help_states_the_worker_refresh_default(capsys: pytest.CaptureFixture[str]) -> None:
    from contactmatch.server.serve import WORKER_REFRESH_EVERY

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"{WORKER_REFRESH_EVERY:g} s with --workers > 1" in help_text


def test_bench_tables_keep_every_value_whole_when_piped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A narrow "terminal" that rich would fit the table into; a pipe gets it whole anyway.
    monkeypatch.setenv("COLUMNS", "40")
    schemes = ["sha256+lookup", "oprf+bucket", "voprf+filter"]
    argv = ["bench", "--registry", "300", "--book", "60", "--schemes", ",".join(schemes)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    rows = [line for line in out.splitlines() if any(s in line for s in schemes)]
    assert len(rows) == len(schemes)  # one line per scheme: nothing folded
    for scheme, row in zip(schemes, rows, strict=True):
        assert scheme in row
        assert len([c for c in row.split("│") if c.strip()]) == 7  # every column on the line


def test_bench_json_reports_the_same_runs(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--registry", "300", "--book", "60", "--schemes", "hmac+lookup,oprf+filter"]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["registered"], doc["contacts"]) == (300, 60)
    assert [s["scheme"] for s in doc["schemes"]] == ["hmac+lookup", "oprf+filter"]
    for s in doc["schemes"]:
        assert s["agrees"] is True
        assert s["matches"] == 18  # 30% of the book
        assert s["bytes_up"] > 0
        assert s["rounds"] >= 1


def test_bench_refuses_an_unknown_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--schemes", "rot13+lookup"]) == 2
    assert capsys.readouterr().err.startswith("contactmatch: error: ")


def test_demo_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--users", "600", "--contacts", "100", "--dir", str(tmp_path), "--json"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert (doc["users"], doc["contacts"], doc["registered_in_book"]) == (600, 100, 30)
    assert doc["ok"] is True
    assert {(r["flow"], r["sync"]) for r in doc["runs"]} == {
        (flow, sync) for flow in ("oprf+filter", "oprf+bucket") for sync in ("first", "re-sync")
    }
    assert all(r["matches"] == 30 and r["to_invite"] == 70 for r in doc["runs"])
    assert (tmp_path / "registry.db").exists()


def test_demo_table_and_a_book_larger_than_the_registry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--users", "10", "--contacts", "1000"]) == 2
    assert "registered" in capsys.readouterr().err
    assert main(["demo", "--users", "300", "--contacts", "50"]) == 0
    out = capsys.readouterr().out
    assert "Discovery over HTTP: 50 contacts, 15 registered" in out
    assert "yes" in out
    assert "NO" not in out
