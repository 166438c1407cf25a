"""README's "Your first task, on the devnet" runs as written, on a fresh devnet: the block is
read from README.md itself, so the test breaks when README drifts from the code. Also the
devnet's refusal to replace an existing devnet directory without --fresh."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .helpers import cli

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.devnet


def readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## " + re.escape(title) + r"\n.*?```sh\n(.*?)```", text, re.S | re.M)
    assert m, f"README has no sh block under '## {title}'"
    return m.group(1)


def test_readme_first_task_runs_as_written_and_up_refuses_to_wipe():
    block = readme_block("Your first task, on the devnet")
    assert "labelmesh label $TASK 0 cat 1 dog" in block and "--account" not in block.split("label $TASK")[1][:40]
    tmp = Path(tempfile.mkdtemp(prefix="lmrd", dir="/tmp"))
    net = tmp / "devnet"
    # the same commands, with this test's devnet directory instead of the repository's .devnet/
    script = (block.replace("scripts/devnet up", f"{ROOT}/scripts/devnet up --root {net}")
                   .replace("scripts/devnet down", f"{ROOT}/scripts/devnet down --root {net}")
                   .replace(".devnet/", f"{net}/")
                   .replace('"$PWD/.venv/bin:', f'"{Path(sys.executable).parent}:'))
    lines = [l for l in script.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    # run each line in one bash (set -e: the first failing command fails the test), echoing
    # a marker before each so the output can be attributed
    body = "set -euo pipefail\n" + "".join(f"echo '>>> {i}'\n{l}\n" for i, l in enumerate(lines))
    env = {k: v for k, v in os.environ.items() if k != "LABELMESH_DATA_DIR"}
    try:
        r = subprocess.run(["bash", "-c", body], cwd=tmp, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, f"README block failed:\n{r.stdout[-6000:]}\n{r.stderr[-4000:]}"
        out = {}
        for chunk in r.stdout.split(">>> ")[1:]:
            i, _, text = chunk.partition("\n")
            out[lines[int(i)]] = text

        def of(prefix):
            return next(v for k, v in out.items() if k.startswith(prefix))

        assert "export PATH=" in of(f"{ROOT}/scripts/devnet up")  # up says how to get labelmesh on PATH
        assert "accepted (2 labels" in of("labelmesh label $TASK 0 cat")
        assert "accepted (1 labels" in of("labelmesh label $TASK 2 bird")
        show = of("labelmesh task show")
        assert "deadline" in show and "(in " in show and "you        default" in show
        assert re.search(r"^\s+0\s+[12]/3\s+cat", show, re.M), show
        cons = of("labelmesh consensus")  # node 1's vote on item 2 may still be on its way: items 0 and 1
        assert re.search(r"^\s+0\s+cat\s", cons, re.M) and re.search(r"^\s+1\s+dog\s", cons, re.M), cons
        assert "agreement" in cons and "equivocations: none" in cons
        exported = json.loads((tmp / "labels.json").read_text())
        assert [t["data"]["text"] for t in exported] == ["a photo of a cat", "a photo of a dog", "a photo of a bird"]
        assert "nodes" in of(f"{ROOT}/scripts/devnet down")

        # 8. a second `up` refuses to wipe what the first left (accounts, tasks), unless --fresh
        assert (net / "node-0" / "accounts" / "default.json").exists()
        r = cli("devnet", "up", "-n", "1", "--root", str(net), check=False, timeout=120)
        assert r.returncode == 1 and "--fresh" in r.stderr and "already holds a devnet" in r.stderr, r.stderr
        assert (net / "node-0" / "accounts" / "default.json").exists() and (net / "node-4").exists()
        cli("devnet", "up", "-n", "1", "--fresh", "--root", str(net), timeout=180)
        assert not (net / "node-4").exists()
    finally:
        cli("devnet", "down", "--root", str(net), check=False, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
