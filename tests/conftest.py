"""Fixtures shared by several test files."""
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
