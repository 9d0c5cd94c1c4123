"""Bulk import and key rotation: exactly once, on this process and on a Dask LocalCluster.

The reference is :meth:`DiscoveryServer.register_many` of the same file: whatever engine,
partition size, crash or killed worker, the store must end up with the same registrations.
"""

from __future__ import annotations

import gzip
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from contactmatch.atrest import DataKey
from contactmatch.bulk import DaskEngine, LocalEngine, import_file, rotate_on_cluster
from contactmatch.bulk._source import read_partitions
from contactmatch.errors import InvalidInput, InvalidKey
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.rotation import rotate
from contactmatch.service import DiscoveryServer
from contactmatch.stores import BaseStore, open_store
from tests.services import PG_BASE, REDIS_BASE, drop_redis_prefix

S = TypeVar("S")
R = TypeVar("R")


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Stores several processes (the workers) can share."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def dask2() -> Iterator[DaskEngine]:
    """One LocalCluster of 2 worker processes for the module (start-up costs seconds)."""
    engine = DaskEngine("local:2")
    try:
        yield engine
    finally:
        engine.close()


class Keys:
    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.key = ServerKey.generate(Mode.OPRF)
        self.key_path = d / "oprf.key"
        self.key.save(self.key_path)
        self.data_key = DataKey.generate()
        self.data_path = d / "data.key"
        self.data_key.save(self.data_path)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def make_rows(n: int, seed: int = 7) -> list[tuple[str, str]]:
    """``n`` rows with some repeated numbers and user ids, in mixed written forms."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        digits = f"{rnd.randrange(10**7):07d}"
        form = rnd.choice(["+98912{}", "0912{}", "0098912{}", "+98 912 {}"])
        rows.append((f"u{i:06d}", form.format(digits)))
    for i in range(0, n, 97):  # the same number again, further down
        rows.append((f"dup{i}", rows[i][1]))
    rows.append(("u000003", "+989121234567"))  # a user id again
    rows.append(("bad id!", "+989121234568"))
    rows.append(("u-short", "+98912"))
    rows.append(("u-letters", "call me"))
    return rows


def write_file(path: Path, rows: Iterable[tuple[str, str]], *, header: bool, gz: bool) -> Path:
    text = ("user_id,number\n" if header else "") + "".join(f"{u},{n}\n" for u, n in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def reference(rows: list[tuple[str, str]], keys: Keys, url: str) -> dict[str, tuple[Any, ...]]:
    """What register_many makes of the same rows (valid, first-seen ids only: it raises on
    a repeated id, and it needs valid user ids)."""
    from contactmatch.stores.base import check_user_id

    seen: set[str] = set()
    ok: list[tuple[str, str]] = []
    from contactmatch.phone import normalize_many

    normal = normalize_many([n for _, n in rows], "IR").numbers
    for (uid, number), e164 in zip(rows, normal, strict=True):
        try:
            check_user_id(uid)
        except InvalidInput:
            continue
        if e164 is None or uid in seen:
            continue
        seen.add(uid)
        ok.append((uid, number))
    with open_store(url) as store:
        server = DiscoveryServer(store, keys.key, keys.data_key)
        server.register_many(ok, region="IR")
        return snapshot(store, keys.data_key)


def snapshot(store: BaseStore, data_key: DataKey) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    after = None
    while page := store.scan_users(after, 1000):
        for u in page:
            number = data_key.open_number(u.number_ct, u.wrapped_key, u.user_id, u.token)
            out[u.user_id] = (u.token, u.key_id, u.discoverability, number)
        after = page[-1].user_id
    return out


@pytest.fixture
def ref_url(store_url: str, tmp_path: Path, pg_schemas: Callable[[], str]) -> Iterator[str]:
    """A second, empty store of the same kind, for the reference; dropped afterwards."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/reference.db"
    elif store_url.startswith("postgresql"):
        yield f"{PG_BASE}?schema={pg_schemas()}"
    else:
        tag = "r" + uuid.uuid4().hex[:12]
        yield f"{REDIS_BASE}?prefix={tag}"
        drop_redis_prefix(tag)


# -- reading ---------------------------------------------------------------------------------


def test_reader_header_gzip_bad_lines(tmp_path: Path) -> None:
    body = b"number,user_id\n+989121111111,a1\n\n,\nonlyonefield\n\xff,\xfe\n" + b"x" * 5000 + b"\n"
    p = tmp_path / "f.csv.gz"
    p.write_bytes(gzip.compress(body))
    (part,) = list(read_partitions(p, 100))
    assert part.user_ids == ["a1"]
    assert part.raws == ["+989121111111"]
    assert part.lines == [2]
    assert [(r.line, r.reason) for r in part.rejected] == [
        (4, "bad_user_id"),
        (5, "malformed_line"),
        (6, "not_utf8"),
        (7, "line_too_long"),
    ]


def test_reader_partitions_depend_on_the_file_alone(tmp_path: Path) -> None:
    rows = make_rows(50)
    p = write_file(tmp_path / "f.csv", rows, header=False, gz=False)
    parts = list(read_partitions(p, 16))
    assert [len(x.lines) + len(x.rejected) for x in parts] == [16, 16, 16, len(rows) - 48]
    assert parts[0].lines[0] == 1


def test_damaged_gzip_is_a_typed_error(tmp_path: Path) -> None:
    p = tmp_path / "f.gz"
    p.write_bytes(gzip.compress(b"u1,+989121111111\n" * 1000)[:-40])
    with pytest.raises(InvalidInput, match="damaged"):
        list(read_partitions(p, 10))


# -- import equals register_many --------------------------------------------------------------


@pytest.mark.parametrize("form", ["header", "gzip-no-header"])
def test_local_import_equals_register_many(
    store_url: str, ref_url: str, keys: Keys, tmp_path: Path, form: str
) -> None:
    header, gz = form == "header", form != "header"
    rows = make_rows(1500)
    src = write_file(tmp_path / "in.csv", rows, header=header, gz=gz)
    report = import_file(
        src, store_url, keys.key_path, keys.data_path, region="IR", partition_size=200,
        report_path=tmp_path / "rej.csv",
    )  # fmt: skip
    with open_store(store_url) as s:
        got = snapshot(s, keys.data_key)
    assert got == reference(rows, keys, ref_url)
    assert report.imported == len(got)
    assert report.reasons["duplicate"] == len(range(0, 1500, 97))
    assert report.reasons["duplicate_user"] == 1
    assert report.lines == len(rows)
    assert report.imported + report.rejected == report.lines
    text = (tmp_path / "rej.csv").read_text()
    assert text.count("\n") == report.rejected + 1
    for _, number in rows:  # the report never holds a number in full
        digits = "".join(c for c in number if c.isdigit())
        assert len(digits) < 9 or digits not in text.replace("*", "")
    again = import_file(
        src, store_url, keys.key_path, keys.data_path, region="IR", partition_size=200
    )
    assert (again.imported, again.resumed) == (0, again.partitions)


def test_dask_import_equals_register_many(
    store_url: str, ref_url: str, keys: Keys, tmp_path: Path, dask2: DaskEngine
) -> None:
    rows = make_rows(3000)
    src = write_file(tmp_path / "in.csv", rows, header=True, gz=False)
    report = import_file(
        src, store_url, keys.key_path, keys.data_path, region="IR", partition_size=250,
        engine=dask2,
    )  # fmt: skip
    assert report.workers == 2
    with open_store(store_url) as s:
        assert snapshot(s, keys.data_key) == reference(rows, keys, ref_url)


def test_worker_killed_mid_import(store_url: str, ref_url: str, keys: Keys, tmp_path: Path) -> None:
    """kill -9 of a worker process while partitions are in flight: Dask's nanny restarts it,
    the scheduler reruns its tasks, and the store ends up as register_many leaves it."""
    rows = make_rows(16000, seed=3)
    src = write_file(tmp_path / "in.csv", rows, header=True, gz=False)
    # A cluster of its own: after the third kill of one shared cluster's workers, its nanny
    # sometimes never brought the worker back, and the tests after it would run on one.
    dask2 = DaskEngine("local:2")
    try:
        _kill_a_worker_mid_import(store_url, ref_url, keys, src, rows, dask2=dask2)
    finally:
        dask2.close()


def _kill_a_worker_mid_import(
    store_url: str,
    ref_url: str,
    keys: Keys,
    src: Path,
    rows: list[tuple[str, str]],
    *,
    dask2: DaskEngine,
) -> None:
    client = dask2.client
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["report"] = import_file(
                src, store_url, keys.key_path, keys.data_path, region="IR",
                partition_size=200, engine=dask2,
            )  # fmt: skip
        except BaseException as exc:  # surfaced below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    victim = None
    deadline = time.monotonic() + 60
    with open_store(store_url) as s:
        while time.monotonic() < deadline and victim is None:
            if s.count_users() >= 200:  # a partition in
                pids = client.run(os.getpid)
                victim = next(iter(pids.values()))
                os.kill(victim, signal.SIGKILL)
            time.sleep(0.02)
    worker.join(120)
    assert victim is not None, "the import finished before a worker could be killed"
    assert "error" not in outcome, outcome.get("error")
    with open_store(store_url) as s:
        assert snapshot(s, keys.data_key) == reference(rows, keys, ref_url)


def test_importer_killed_and_rerun(
    store_url: str, ref_url: str, keys: Keys, tmp_path: Path
) -> None:
    """SIGKILL of `contactmatch import` midway, then the same command again: it resumes."""
    rows = make_rows(6000, seed=5)
    src = write_file(tmp_path / "in.csv", rows, header=True, gz=False)
    cmd = [
        sys.executable, "-m", "contactmatch.cli", "import", str(src), "--store", store_url,
        "--key", str(keys.key_path), "--data-key", str(keys.data_path), "--region", "IR",
        "--partition-size", "300",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    with open_store(store_url) as s:
        while time.monotonic() < deadline and s.count_users() < 1000:
            time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    with open_store(store_url) as s:
        partial = s.count_users()
    assert 0 < partial < 5900, "kill it midway"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "partitions were already done" in rerun.stdout
    resumed = int(rerun.stdout.split(";")[1].split()[0])
    assert resumed >= 1
    with open_store(store_url) as s:
        assert snapshot(s, keys.data_key) == reference(rows, keys, ref_url)


def test_ctrl_c_exits_130_and_says_how_to_resume(keys: Keys, tmp_path: Path) -> None:
    rows = make_rows(20000, seed=11)
    src = write_file(tmp_path / "in.csv", rows, header=True, gz=False)
    url = f"sqlite:///{tmp_path}/r.db"
    cmd = [
        sys.executable, "-m", "contactmatch.cli", "import", str(src), "--store", url,
        "--key", str(keys.key_path), "--data-key", str(keys.data_path), "--region", "IR",
        "--partition-size", "500",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open_store(url) as s:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and s.count_users() == 0:
            time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert b"interrupted; run again to resume" in err
    assert b"Traceback" not in err


# -- keys -------------------------------------------------------------------------------------


class Recording:
    """An engine that pickles every task (function and spec) as a cluster would ship it."""

    threads: int | None = 1
    dashboard: str | None = None
    workers = 1

    def __init__(self) -> None:
        self.shipped: list[bytes] = []
        self.inner = LocalEngine()

    def map_unordered(self, fn: Callable[[S], R], specs: Iterable[S]) -> Iterator[R]:
        import cloudpickle

        def ship(spec: S) -> S:
            self.shipped.append(cloudpickle.dumps((fn, spec)))
            loaded: tuple[Callable[[S], R], S] = pickle.loads(self.shipped[-1])
            return loaded[1]

        for spec in specs:
            yield fn(ship(spec))

    def close(self) -> None:
        self.inner.close()


def test_task_graph_holds_no_key_bytes(keys: Keys, tmp_path: Path) -> None:
    src = write_file(tmp_path / "in.csv", make_rows(400), header=True, gz=False)
    url = f"sqlite:///{tmp_path}/r.db"
    eng = Recording()
    import_file(src, url, keys.key_path, keys.data_path, region="IR", partition_size=100,
                engine=eng)  # fmt: skip
    new = Keys(tmp_path / "new")
    rotate_on_cluster(url, keys.data_path, new.key_path, engine=eng, batch_size=100)
    assert len(eng.shipped) > 8
    secrets = [
        keys.key_path.read_bytes(),
        keys.data_path.read_bytes(),
        new.key_path.read_bytes(),
        keys.key.private_bytes(),
        new.key.private_bytes(),
        *(k.secret for k in keys.data_key._keys.values()),
    ]
    for blob in eng.shipped:
        for secret in secrets:
            assert secret not in blob


def test_worker_with_another_key_refuses(keys: Keys, tmp_path: Path) -> None:
    from contactmatch.bulk._tasks import Target, WriteSpec, write_partition

    url = f"sqlite:///{tmp_path}/r.db"
    spec = WriteSpec(
        index=0,
        target=Target(url, str(keys.key_path), str(keys.data_path), "0" * 16, "dk-x"),
        region="IR",
        discoverability="everyone",
        mark="import:x:0",
        user_ids=["a"],
        raws=["+989121111111"],
    )
    with pytest.raises(InvalidKey, match="same key"):
        write_partition(spec)


def test_store_under_another_key_is_refused(keys: Keys, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    with open_store(url) as s:
        DiscoveryServer(s, keys.key, keys.data_key).register("someone", "+989121111111")
    other = Keys(tmp_path / "o")
    src = write_file(tmp_path / "in.csv", make_rows(10), header=True, gz=False)
    with pytest.raises(InvalidKey, match="OPRF key"):
        import_file(src, url, other.key_path, keys.data_path, region="IR")
    with pytest.raises(InvalidKey, match="data key"):
        import_file(src, url, keys.key_path, other.data_path, region="IR")


# -- rotation on the cluster --------------------------------------------------------------------


def test_rotation_on_cluster_equals_rotation_in_process(
    store_url: str, ref_url: str, keys: Keys, tmp_path: Path, dask2: DaskEngine
) -> None:
    rows = make_rows(1200)
    src = write_file(tmp_path / "in.csv", rows, header=True, gz=False)
    for url in (store_url, ref_url):
        import_file(src, url, keys.key_path, keys.data_path, region="IR", partition_size=500)
    new = Keys(tmp_path / "new")
    from contactmatch.oprf import OprfServer

    oprf = OprfServer(new.key)

    def tokens(numbers: Sequence[str]) -> list[bytes]:
        return list(oprf.evaluate_tokens([n.encode() for n in numbers]).tokens)

    with open_store(ref_url) as s:
        plain = rotate(s, keys.data_key, tokens, new.key.key_id, batch_size=100)
        want = snapshot(s, keys.data_key)
    done = rotate_on_cluster(store_url, keys.data_path, new.key_path, engine=dask2, batch_size=100)
    assert done.report.rekeyed == plain.rekeyed == len(want)
    with open_store(store_url) as s:
        got = snapshot(s, keys.data_key)
        assert s.get_checkpoint(f"rotate:{new.key.key_id}") is None
    assert got == want
    assert {v[1] for v in got.values()} == {new.key.key_id}


def test_missing_cluster_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from contactmatch.errors import MissingDependency

    real = importlib.import_module

    def no_dask(name: str, *a: Any, **k: Any) -> Any:
        if name == "distributed":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_dask)
    with pytest.raises(MissingDependency, match=r"contactmatch\[cluster\]"):
        DaskEngine("local:2")


def test_bad_cluster_spec(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="local:N"):
        DaskEngine("local:two")
