"""The `labelmesh` CLI: user errors are one line and a non-zero exit, never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, input=None):
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, input=input)


def one_line_error(r):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("verb", [["status"], ["rpc", "node_info"], ["consensus", "00" * 32],
                                  ["label", "00" * 32, "0", "a"], ["rewards"], ["reputation"]])
def test_no_node_running(tmp_path, verb):
    r = cli(*verb, "--data-dir", str(tmp_path / "none"))
    assert "no node is running" in one_line_error(r)


@pytest.mark.parametrize("env, says", [
    ({"LABELMESH_P2P_TUNING": "gossip_degree=x"}, "LABELMESH_P2P_TUNING: gossip_degree must be an integer"),
    ({"LABELMESH_P2P_TUNING": "seed=1"}, "LABELMESH_P2P_TUNING: expected field=number pairs"),
    ({"LABELMESH_P2P_TUNING": "publish_rate_per_s=0"}, "P2PConfig.publish_rate_per_s: must be > 0"),
    ({"LABELMESH_GOSSIP_LIMITS": "nope=1"}, "LABELMESH_GOSSIP_LIMITS: expected field=number pairs"),
    ({"LABELMESH_GOSSIP_LIMITS": "origin_message_burst=0"}, "origin_message_burst must be >= 1"),
])
def test_run_refuses_bad_tuning_variables_in_one_line(tmp_path, env, says):
    dd = tmp_path / "n"
    assert cli("init", "--data-dir", str(dd)).returncode == 0
    r = subprocess.run([sys.executable, "-m", "node.cli", "run", "--data-dir", str(dd)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert r.returncode == 2
    assert says in one_line_error(r)


def test_init_then_errors(tmp_path):
    dd = tmp_path / "n"
    r = cli("init", "--data-dir", str(dd), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["network_id"]) == 64 and len(out["public_key"]) == 64
    assert (dd / "node.key").stat().st_mode & 0o077 == 0
    assert (dd / "accounts" / "default.json").stat().st_mode & 0o077 == 0
    assert "already initialised" in one_line_error(cli("init", "--data-dir", str(dd)))
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert "genesis" in one_line_error(cli("init", "--data-dir", str(tmp_path / "m"), "--genesis", str(bad)))
    (dd / "config.toml").write_text("listen = 5\n")
    assert "listen" in one_line_error(cli("run", "--data-dir", str(dd)))


def test_rpc_params_must_be_json(tmp_path):
    r = cli("rpc", "node_info", "{oops", "--data-dir", str(tmp_path))
    assert "PARAMS must be a JSON object" in one_line_error(r)


def test_help_everywhere():
    for verb in [[], ["init"], ["run"], ["status"], ["rpc"], ["task", "post"], ["label"], ["consensus"],
                 ["aggregate"], ["rewards"], ["reputation"], ["export"], ["certificate"], ["devnet"]]:
        r = cli(*verb, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout, verb
