"""Registry snapshots: round trip, refusal of every corrupt/truncated/foreign file, atomic writes
under kill -9, and the directory helpers."""

from __future__ import annotations

import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from contactmatch.errors import ContactMatchError, InvalidInput
from contactmatch.registry import (
    RegistryTable,
    SnapshotError,
    load,
    newest,
    persist,
    prune,
    save,
    snapshot_path,
    write_in,
)
from contactmatch.registry import snapshot as snap
from contactmatch.registry._columns import COLUMNS

KEY = "oprf-k1"
STORE = "postgresql://registry@db.example/contacts"


def _table(n: int, seed: int = 3) -> RegistryTable:
    rng = np.random.default_rng(seed)
    tokens = [bytes(r) for r in rng.integers(0, 256, (n, 32), dtype=np.uint8)]
    # Ids of several lengths, so the sealed column has runs of different widths.
    uids = [f"u{i}" + "x" * (i % 5) for i in range(n)]
    return RegistryTable.build(uids, tokens, key_id=KEY)


def _same(a: RegistryTable, b: RegistryTable) -> None:
    assert len(a) == len(b)
    assert np.array_equal(a.sorted_hashes(), b.sorted_hashes())
    for bits in (0, 3, 9):
        x, y = a.bucket(range(1 << bits), bits), b.bucket(range(1 << bits), bits)
        assert x.sealed == y.sealed
        assert np.array_equal(x.fingerprints, y.fingerprints)
        assert np.array_equal(x.counts, y.counts)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("snap") / "r.snap"
    save(_table(1500), path, seq=41, store_id=STORE)
    return path, path.read_bytes()


def test_round_trip_maps_the_columns(tmp_path: Path) -> None:
    table = _table(3000)
    path = save(table, tmp_path / "a.snap", seq=12, store_id=STORE)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded, seq = load(path, key_id=KEY, store_id=STORE)
    assert seq == 12
    _same(table, loaded)
    assert loaded.user_salt == table.user_salt
    assert loaded.has_users(["u7xx", "u8xxx", "nobody"]).tolist() == [True, True, False]
    for name, _ in COLUMNS:
        col = getattr(loaded.base, name)
        assert not col.flags.writeable
        view = col.base
        assert isinstance(view, memoryview), name
        assert isinstance(view.obj, mmap.mmap), name
    # A loaded table takes changes in its overlay, and saves them compacted.
    loaded.apply([("u1x", b"new token"), ("fresh", b"another")], ["u2xx"])
    table.apply([("u1x", b"new token"), ("fresh", b"another")], ["u2xx"])
    _same(table, loaded)
    again, seq = load(
        save(loaded, tmp_path / "b.snap", seq=13, store_id=STORE), key_id=KEY, store_id=STORE
    )
    assert seq == 13
    assert again.overlay_size == 0
    _same(table, again)


def test_persist_rebases_onto_a_mapped_file(tmp_path: Path) -> None:
    table = _table(2000)
    table.compact_at = None
    table.apply([("u1x", b"moved"), ("late", b"comer")], ["u3xxx"])
    snap_ = persist(tmp_path, table, name="oprf", seq=5, store_id=STORE)
    assert snap_.seq == 5
    assert snap_.path == snapshot_path(tmp_path, name="oprf", seq=5)
    assert snap_.table.overlay_size == 0
    assert snap_.table.compact_at is None
    view = snap_.table.base.h.base
    assert isinstance(view, memoryview)
    assert isinstance(view.obj, mmap.mmap)
    _same(table, snap_.table)


def test_empty_table_round_trips(tmp_path: Path) -> None:
    path = save(RegistryTable.empty(key_id=KEY), tmp_path / "e.snap", seq=0, store_id=STORE)
    loaded, seq = load(path, key_id=KEY, store_id=STORE)
    assert (len(loaded), seq) == (0, 0)
    assert loaded.bucket([0], 0).counts.tolist() == [0]


def _regions(data: bytes) -> dict[str, tuple[int, int]]:
    """Every region of a snapshot file, by name, as ``[start, end)``."""
    fixed = snap._FIXED
    fields = fixed.unpack_from(data, 0)
    header_len, key_len, store_len = fields[3], fields[9], fields[10]
    names = ["magic", "version", "flags", "header_len", "seq", "rows", "sealed_bytes"]
    names += ["salt", "user_salt", "key_len", "store_len", "ncols", "reserved"]
    sizes = [8, 2, 2, 4, 8, 8, 8, 16, 16, 2, 2, 2, 2]
    out, at = {}, 0
    for name, size in zip(names, sizes, strict=True):
        out[f"header.{name}"] = (at, at + size)
        at += size
    out["header.key_id"] = (at, at + key_len)
    out["header.store_id"] = (at + key_len, at + key_len + store_len)
    at += key_len + store_len
    ends = []
    for name, _ in COLUMNS:
        _, off, size, _ = snap._ENTRY.unpack_from(data, at)
        for part, lo, hi in (
            ("name", 0, 8),
            ("offset", 8, 16),
            ("size", 16, 24),
            ("digest", 24, 56),
        ):
            out[f"table.{name}.{part}"] = (at + lo, at + hi)
        at += snap._ENTRY.size
        if size:
            out[f"column.{name}"] = (off, off + size)
        ends.append((name, off + size))
    out["header.digest"] = (at, at + 32)
    first = snap._ENTRY.unpack_from(data, fixed.size + key_len + store_len)[1]
    if first > header_len:
        out["padding.header"] = (header_len, first)
    offsets = [
        snap._ENTRY.unpack_from(data, fixed.size + key_len + store_len + i * snap._ENTRY.size)[1]
        for i in range(len(COLUMNS))
    ]
    for (name, end), nxt in zip(ends, offsets[1:], strict=False):
        if nxt > end:
            out[f"padding.{name}"] = (end, nxt)
    return out


def test_regions_cover_the_file(written: tuple[Path, bytes]) -> None:
    _, data = written
    spans = sorted(_regions(data).values())
    assert spans[0][0] == 0
    assert spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in pairwise(spans))


def _flip_cases(data: bytes) -> list[tuple[str, int]]:
    return [
        (name, at)
        for name, (lo, hi) in _regions(data).items()
        for at in sorted({lo, (lo + hi) // 2, hi - 1})
    ]


def test_any_flipped_byte_is_refused(written: tuple[Path, bytes], tmp_path: Path) -> None:
    _, data = written
    cases = _flip_cases(data)
    assert len(cases) > 80
    for name, at in cases:
        bad = bytearray(data)
        bad[at] ^= 0x20
        path = tmp_path / "bad.snap"
        path.write_bytes(bytes(bad))
        with pytest.raises(SnapshotError):  # noqa: PT012 - the fail names the accepted byte
            load(path, key_id=KEY, store_id=STORE)
            pytest.fail(f"a flipped byte in {name} at {at} was accepted")
        if not name.startswith("column."):
            # Everything but the column bodies is checked even without the full pass.
            with pytest.raises(SnapshotError):
                load(path, key_id=KEY, store_id=STORE, verify=False)


def test_truncated_or_extended_files_are_refused(
    written: tuple[Path, bytes], tmp_path: Path
) -> None:
    _, data = written
    path = tmp_path / "cut.snap"
    for size in sorted({0, 1, 7, 60, 100, 300, len(data) // 2, len(data) - 64, len(data) - 1}):
        path.write_bytes(data[:size])
        with pytest.raises(SnapshotError):
            load(path, key_id=KEY, store_id=STORE)
    for tail in (b"\0", b"\0" * 64, b"junk"):
        path.write_bytes(data + tail)
        with pytest.raises(SnapshotError, match="truncated or has trailing"):
            load(path, key_id=KEY, store_id=STORE)


def test_foreign_files_are_refused(written: tuple[Path, bytes]) -> None:
    path, _ = written
    with pytest.raises(SnapshotError) as err:
        load(path, key_id="oprf-k2", store_id=STORE)
    assert "'oprf-k1'" in str(err.value)
    assert "'oprf-k2'" in str(err.value)
    with pytest.raises(SnapshotError) as err:
        load(path, key_id=KEY, store_id="sqlite:///other.db")
    # A store id may be a URL with a password in it: never echoed.
    assert "db.example" not in str(err.value)
    assert "other.db" not in str(err.value)
    assert isinstance(err.value, ContactMatchError)


def _resealed(data: bytes, patch: dict[int, bytes]) -> bytes:
    """The file with header bytes patched and the header digest recomputed."""
    out = bytearray(data)
    for at, raw in patch.items():
        out[at : at + len(raw)] = raw
    header_len = struct.unpack_from("<I", out, 12)[0]
    out[header_len - 32 : header_len] = snap._digest(memoryview(bytes(out[: header_len - 32])))
    return bytes(out)


def test_unknown_versions_and_foreign_magic(written: tuple[Path, bytes], tmp_path: Path) -> None:
    _, data = written
    path = tmp_path / "v.snap"
    path.write_bytes(_resealed(data, {8: struct.pack("<H", 2)}))
    with pytest.raises(SnapshotError, match="format version 2; this library reads 1"):
        load(path, key_id=KEY, store_id=STORE)
    path.write_bytes(_resealed(data, {10: struct.pack("<H", 1)}))
    with pytest.raises(SnapshotError, match="features"):
        load(path, key_id=KEY, store_id=STORE)
    path.write_bytes(b"SQLite format 3\0" + data[16:])
    with pytest.raises(SnapshotError, match="not a registry snapshot"):
        load(path, key_id=KEY, store_id=STORE)


def test_unreadable_paths_are_snapshot_errors(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError):
        load(tmp_path / "missing.snap", key_id=KEY, store_id=STORE)
    with pytest.raises(SnapshotError):
        load(tmp_path, key_id=KEY, store_id=STORE)
    with pytest.raises(SnapshotError):
        save(_table(10), tmp_path / "no-such-dir" / "x.snap", seq=1, store_id=STORE)


@pytest.mark.parametrize(
    ("seq", "store_id"), [(-1, STORE), (2**64, STORE), (1, ""), (1, 3), ("1", STORE)]
)
def test_save_checks_its_arguments(tmp_path: Path, seq: object, store_id: object) -> None:
    with pytest.raises(InvalidInput):
        save(_table(5), tmp_path / "x.snap", seq=seq, store_id=store_id)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_newest_skips_bad_files_and_prune_keeps_the_newest(tmp_path: Path) -> None:
    assert newest(tmp_path, name="oprf", key_id=KEY, store_id=STORE) is None
    tables = {seq: _table(200 + seq, seed=seq) for seq in (5, 9, 30)}
    for seq, table in tables.items():
        write_in(tmp_path, table, name="oprf", seq=seq, store_id=STORE)
    write_in(tmp_path, _table(50), name="hmac", seq=99, store_id=STORE)
    # The newest is corrupt; a temp file of a crashed writer looks newer still.
    top = snapshot_path(tmp_path, name="oprf", seq=30)
    raw = bytearray(top.read_bytes())
    raw[-1] ^= 1
    top.write_bytes(bytes(raw))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".oprf-{40:020d}.snap.{int(dead.stdout)}.abcd1234.tmp"
    stale.write_bytes(b"half a file")
    mine = tmp_path / f".oprf-{41:020d}.snap.{os.getpid()}.abcd1234.tmp"
    mine.write_bytes(b"being written")
    rejected: list[tuple[Path, SnapshotError]] = []
    found = newest(
        tmp_path,
        name="oprf",
        key_id=KEY,
        store_id=STORE,
        on_reject=lambda p, e: rejected.append((p, e)),
    )
    assert found is not None
    assert (found.seq, found.path) == (9, snapshot_path(tmp_path, name="oprf", seq=9))
    _same(found.table, tables[9])
    assert [p for p, _ in rejected] == [top]
    gone = prune(tmp_path, name="oprf", keep=2)
    assert sorted(gone) == sorted([snapshot_path(tmp_path, name="oprf", seq=5), stale])
    assert mine.exists()  # its writer (this process) is alive
    assert snapshot_path(tmp_path, name="hmac", seq=99).exists()
    found = newest(tmp_path, name="hmac", key_id=KEY, store_id=STORE)
    assert found is not None
    assert found.seq == 99


def test_a_renamed_file_is_caught_by_its_sequence(tmp_path: Path) -> None:
    write_in(tmp_path, _table(20), name="oprf", seq=3, store_id=STORE)
    os.replace(
        snapshot_path(tmp_path, name="oprf", seq=3), snapshot_path(tmp_path, name="oprf", seq=8)
    )
    rejected: list[Path] = []
    assert (
        newest(
            tmp_path,
            name="oprf",
            key_id=KEY,
            store_id=STORE,
            on_reject=lambda p, e: rejected.append(p),
        )
        is None
    )
    assert rejected == [snapshot_path(tmp_path, name="oprf", seq=8)]


@pytest.mark.parametrize("name", ["", "-x", "a/b", "x" * 65, "..", "a b"])
def test_snapshot_names_are_checked(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput):
        snapshot_path(tmp_path, name=name, seq=1)
    with pytest.raises(InvalidInput):
        prune(tmp_path, name=name)


def test_prune_keeps_at_least_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        prune(tmp_path, name="oprf", keep=0)


# --- kill -9 while writing ---------------------------------------------------------------------
_WRITER = textwrap.dedent(
    """
    import sys
    from contactmatch.registry import load, save
    table, _ = load(sys.argv[1], key_id=sys.argv[3], store_id=sys.argv[4])
    print("ready", flush=True)
    while True:
        save(table, sys.argv[2], seq=7, store_id=sys.argv[4])
    """
)


@pytest.mark.slow
def test_kill_9_while_writing_leaves_the_old_file_or_nothing(tmp_path: Path) -> None:
    source = save(_table(150_000), tmp_path / "source.snap", seq=1000, store_id=STORE)
    work = tmp_path / "work"
    work.mkdir()
    target = snapshot_path(work, name="oprf", seq=7)
    rnd = random.Random(2026)
    existed = False
    for _ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(source), str(target), KEY, STORE],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        if target.exists():
            table, seq = load(target, key_id=KEY, store_id=STORE)
            assert (seq, len(table)) == (7, 150_000)
            existed = True
        else:
            assert not existed, "a complete snapshot disappeared"
        # Temp files may be left behind; they are never taken for snapshots.
        assert [p.name for p in work.iterdir() if not p.name.startswith(".")] in ([], [target.name])
    assert existed
    found = newest(work, name="oprf", key_id=KEY, store_id=STORE)
    assert found is not None
    assert found.path == target
    prune(work, name="oprf", keep=1)
    assert [p.name for p in work.iterdir()] == [target.name]
