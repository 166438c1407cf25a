"""Fixtures shared by several test files."""
import json
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def short_dir():
    """A fresh directory under /tmp: Unix socket paths are limited to ~100 bytes, so data
    dirs that hold an RPC socket must have short paths."""
    d = Path(tempfile.mkdtemp(prefix="lm", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def devnet_root():
    """A fresh directory for a multi-process devnet (`labelmesh devnet ... --root`); the
    devnet is stopped afterwards, and `devnet down` must leave no pid file behind."""
    from .helpers import cli

    d = Path(tempfile.mkdtemp(prefix="lmdev", dir="/tmp"))
    yield d
    cli("devnet", "down", "--root", str(d), check=False, timeout=60)
    pids = json.loads((d / "pids.json").read_text()) if (d / "pids.json").exists() else {}
    shutil.rmtree(d, ignore_errors=True)
    assert not pids, "devnet down left a pid file behind"
