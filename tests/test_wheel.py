"""A wheel of the project holds every package and runs: built offline from a copy of
this tree (``pip wheel --no-build-isolation``, with the setuptools of the test extra), installed
with ``pip --target`` into a temporary directory (the dependencies are the ones already
installed), and ``labelmesh --help`` run from there."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "node", "devtools")


def _source_files() -> set[str]:
    """Every .py file of the packages and every asset of the web UI (node/web/static/),
    relative to the repository (as in a wheel)."""
    return ({str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
             if "__pycache__" not in p.parts}
            | {str(p.relative_to(ROOT)) for p in (ROOT / "node" / "web" / "static").rglob("*") if p.is_file()})


def test_wheel_holds_every_package_and_its_labelmesh_runs(tmp_path):
    # build from a copy (setuptools writes build/ into the tree it builds)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    r = subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(dist.glob("labelmesh-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "node").rglob("__init__.py")}
    assert {"node/net", "node/storage", "node/core", "node/services", "node/rpc", "node/rpc/methods",
            "node/cli", "node/policy"} <= packages  # the map of README "How it is built"
    missing = sorted(_source_files() - names)
    assert missing == [], f"the wheel lacks {missing}"
    assert not any(n.startswith("tests/") for n in names)
    # the license ships in the wheel and its metadata names the one of pyproject.toml
    lic = [n for n in names if n.endswith("/LICENSE") and ".dist-info/" in n]
    assert lic, sorted(n for n in names if ".dist-info/" in n)
    z = zipfile.ZipFile(wheels[0])
    assert z.read(lic[0]).decode().startswith("MIT License")
    metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License: MIT" in metadata or "License-Expression: MIT" in metadata, metadata[:800]

    site = tmp_path / "site"
    r = subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheels[0])],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site), "LABELMESH_DATA_DIR": str(tmp_path / "dd")}
    r = subprocess.run([sys.executable, "-c", "import node, devtools, protocol; print(node.__file__, node.__version__)"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    where, version = r.stdout.split()
    assert Path(where).is_relative_to(site), where  # the wheel's code, not this tree's
    assert version != "0+unknown"
    r = subprocess.run([str(site / "bin" / "labelmesh"), "--help"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for verb in ("init", "run", "status", "task", "consensus", "aggregate", "devnet"):  # devnet: the plugin verb
        assert f"    {verb}" in r.stdout, r.stdout
    r = subprocess.run([str(site / "bin" / "labelmesh"), "--version"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"labelmesh {version}", r.stdout + r.stderr
