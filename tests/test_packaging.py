"""The distribution: ``python -m build`` makes an sdist and a wheel (built from that sdist)
that install into a fresh virtual environment and run, with the right metadata and data.

Slow (a build in an isolated environment, a venv, an install): about a minute.
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from contactmatch import __version__

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run(*args: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build", reason="needs the dev group's build (pip install --group dev)")
    out = tmp_path_factory.mktemp("dist")
    # The default: an sdist, then the wheel built from the sdist (so the sdist is complete).
    run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_wheel_metadata_and_contents(dist: Path) -> None:
    wheel = only(dist, f"contactmatch-{__version__}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"contactmatch-{__version__}.dist-info"
        meta = email.parser.Parser().parsestr(zf.read(f"{info}/METADATA").decode())

    assert "contactmatch/py.typed" in names
    assert "contactmatch/data/numbering_plan_ir.json" in names
    assert any(n.startswith(info) and n.endswith("/LICENSE") for n in names), names

    extras = set(meta.get_all("Provides-Extra") or [])
    assert extras == {"postgres", "redis", "client", "server", "bench", "cluster"}
    requires = [r.replace("'", '"') for r in meta.get_all("Requires-Dist") or []]
    assert not [r for r in requires if 'extra == "dev"' in r], requires
    assert not [r for r in requires if r.startswith(("pytest", "mypy", "ruff", "build"))]
    assert any(r.startswith("stamina") and 'extra == "client"' in r for r in requires), requires

    classifiers = meta.get_all("Classifier") or []
    assert "License :: OSI Approved :: Apache Software License" in classifiers
    assert "Development Status :: 3 - Alpha" in classifiers
    urls = {u.split(",", 1)[0] for u in meta.get_all("Project-URL") or []}
    assert urls >= {"Homepage", "Documentation", "Changelog", "Issues"}


def test_sdist_contents(dist: Path) -> None:
    sdist = only(dist, f"contactmatch-{__version__}.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for name in [
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "pyproject.toml",
        "src/contactmatch/py.typed",
        "src/contactmatch/data/numbering_plan_ir.json",
    ]:
        assert name in names, name


def test_wheel_installs_and_runs_in_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    wheel = only(dist, "*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    bin_ = tmp_path / "venv" / "bin"
    run(bin_ / "python", "-m", "pip", "install", "--quiet", wheel)

    # Outside the source tree, so it is the installed package that is imported.
    smoke = (
        "import sys, contactmatch\n"
        "from contactmatch.lab.plan import load_plan\n"
        "assert contactmatch.normalize('+1 202 555 0143') == '+12025550143'\n"
        "assert load_plan() is not None  # the numbering plan, read from the package data\n"
        "assert 'httpx' not in sys.modules and 'starlette' not in sys.modules\n"
        "print(contactmatch.__version__, contactmatch.__file__)\n"
    )
    out = run(bin_ / "python", "-c", smoke, cwd=tmp_path)
    version, location = out.split()
    assert version == __version__
    assert Path(location).is_relative_to(tmp_path / "venv")
    assert run(bin_ / "contactmatch", "--version", cwd=tmp_path).strip() == (
        f"contactmatch {__version__}"
    )
