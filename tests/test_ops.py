"""Running a node for real: configuration, accounts, logs, metrics, status, backup and
restore. In-process nodes (fake protocol clock, no network) driven through the real
CLI (`node.cli.main`, run in a worker thread since it blocks on the RPC socket), plus
one multi-process test of the whole newcomer path (marked devnet)."""
from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import urllib.request
from functools import partial
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from node import cli
from node.config import CONFIG_FILE, NodeConfig, load_config, resolve_config
from node.app import Node
from node.errors import ConfigError
from node.keystore import Keystore
from node.logs import scrub, setup_logging
from protocol.genesis import make_genesis

from .helpers import T0, key, pk
from . import helpers
from .helpers import FakeClock, poll, wait_for

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = 1000
ACCOUNTS = {"val": VALIDATOR, "alice": 1, "ann1": 51, "ann2": 52, "ann3": 53}


# ------------------------------------------------------------------ harness

def genesis():
    return make_genesis("ops", T0, [(pk(VALIDATOR), 1)], [], [(pk(1), 10**9)],
                        {"grace_period_ms": 1000, "round_timeout_ms": 2000})


def make_data_dir(dd: Path, g, **cfg) -> Path:
    """What `labelmesh init` leaves: config, genesis, node key, accounts."""
    dd.mkdir(mode=0o700, parents=True, exist_ok=True)
    (dd / CONFIG_FILE).write_text(NodeConfig(validator_account="val", **cfg).to_toml())
    (dd / "genesis.json").write_text(g.to_json())
    (dd / "node.key").write_text(os.urandom(32).hex())
    ks = Keystore(dd)
    for name, n in ACCOUNTS.items():
        if name not in {a["name"] for a in ks.list()}:
            ks.create(name, seed=bytes(key(n)))
    return dd


async def start_ops_node(nursery, dd: Path, g, clock, metrics_listen="127.0.0.1:0", rpc=True) -> Node:
    """A validator node with keystore, RPC socket and metrics (tests.helpers.run_node)."""
    return await helpers.run_node(nursery, dd, g, clock, keystore=Keystore(dd),
                                    rpc_socket=dd / "node.sock" if rpc else None, validator_key=key(VALIDATOR),
                                    finality_tick_s=0.02, metrics_listen=metrics_listen)


async def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`labelmesh ARGV` in a worker thread (it blocks on the node's socket); (code, out, err)."""
    capsys.readouterr()
    code = await trio.to_thread.run_sync(partial(cli.main, [str(a) for a in argv]))
    out, err = capsys.readouterr()
    return code, out, err


async def scrape(url: str) -> dict:
    """GET /metrics over a plain TCP stream; {(name, labels...): value} of every sample."""
    m = re.match(r"http://([\d.]+):(\d+)(/.*)", url)
    body = await http_get(m.group(1), int(m.group(2)), m.group(3))
    assert body.startswith(b"HTTP/1.0 200"), body[:100]
    text = body.split(b"\r\n\r\n", 1)[1].decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


async def http_get(host: str, port: int, path: str, method: str = "GET") -> bytes:
    with trio.fail_after(10):
        s = await trio.open_tcp_stream(host, port)
        await s.send_all(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await s.receive_some(65536):
            data += chunk
        await s.aclose()
    return data


async def post_and_label(capsys, dd: Path, items=6) -> str:
    f = dd.parent / f"{dd.name}-items.jsonl"
    f.write_text("".join(json.dumps(f"item number {i}") + "\n" for i in range(items)))
    code, out, err = await run_cli(capsys, "task", "post", f, "--labels", "cat,dog", "--duration", "5",
                                   "--bounty", "900", "--account", "alice", "--data-dir", dd, "--json")
    assert code == 0, err
    tid = json.loads(out)["task_id"]
    for n, name in enumerate(("ann1", "ann2", "ann3")):
        pairs = [str(x) for i in range(items) for x in (i, "cat" if (i + (n == 2)) % 2 == 0 else "dog")]
        code, out, err = await run_cli(capsys, "label", tid, *pairs, "--account", name, "--data-dir", dd)
        assert code == 0, err
    return tid


# ------------------------------------------------------------------ 1. configuration

def test_config_precedence_and_sources(short_dir, monkeypatch):
    make_data_dir(short_dir, genesis(), log_level="warning", metrics_listen="127.0.0.1:9464",
                  log_levels={"sync": "debug", "rpc": "info"})
    env = {"LABELMESH_METRICS_LISTEN": "127.0.0.1:9999", "LABELMESH_LOG_LEVELS": "rpc=error,libp2p=info",
           "LABELMESH_BOOTSTRAP": "/ip4/127.0.0.1/tcp/1/p2p/x,/ip4/127.0.0.1/tcp/2/p2p/y",
           "LABELMESH_PASSPHRASE": "not a config field", "LABELMESH_DATA_DIR": "neither"}
    cfg, src = resolve_config(short_dir, {"log_level": "debug", "metrics_listen": None}, env)
    assert cfg.log_level == "debug" and src["log_level"] == "flag --log-level"           # flag > file
    assert cfg.metrics_listen == "127.0.0.1:9999" and src["metrics_listen"] == "env LABELMESH_METRICS_LISTEN"
    assert cfg.bootstrap == ["/ip4/127.0.0.1/tcp/1/p2p/x", "/ip4/127.0.0.1/tcp/2/p2p/y"]
    assert cfg.log_levels == {"sync": "debug", "rpc": "error", "libp2p": "info"}       # merged per component
    assert src["log_levels"] == "file + env LABELMESH_LOG_LEVELS"
    assert src["validator_account"] == "file" and src["rpc_socket"] == "file"
    cfg, src = resolve_config(short_dir, {"metrics_listen": ""}, env)                  # "" given = off
    assert cfg.metrics_listen == "" and src["metrics_listen"] == "flag --metrics-listen"
    (short_dir / CONFIG_FILE).write_text("log_format = \"json\"\n")
    cfg, src = resolve_config(short_dir, {}, {})
    assert cfg.log_format == "json" and src["log_format"] == "file"
    assert cfg.listen == ["/ip4/127.0.0.1/tcp/0"] and src["listen"] == "default"


@pytest.mark.parametrize("text, env, words", [
    ('metrics_listen = "0.0.0.0:9464"\n', {}, ["'metrics_listen'", "loopback", "config.toml"]),
    ('metrics_listen = "9464"\n', {}, ["'metrics_listen'", "HOST:PORT"]),
    ('log_levels = {sync = "loud"}\n', {}, ["'log_levels'", "'sync'", "debug, info"]),
    ('listen = "/ip4/127.0.0.1/tcp/1"\n', {}, ["'listen'", "list of multiaddr"]),
    ('colour = "blue"\n', {}, ["unknown field 'colour'", "known fields"]),
    ('log_level = \n', {}, ["not valid TOML"]),
    ('', {"LABELMESH_LOG_FORMAT": "xml"}, ["'log_format'", "text or json", "env LABELMESH_LOG_FORMAT"]),
    ('', {"LABELMESH_LOG_LEVELS": "sync"}, ["LABELMESH_LOG_LEVELS", "component=level"]),
    ('follow_domains = "radiology"\n', {}, ["'follow_domains'", "list of 1..1024 domain names"]),
    ('follow_domains = []\n', {}, ["'follow_domains'", "list of 1..1024"]),
    ('follow_domains = ["*", "radiology"]\n', {}, ["'follow_domains'", "keep one or the other"]),
    ('follow_domains = ["radiology"]\nvalidator_account = "validator"\n', {}, ["'follow_domains'", "validators follow"]),
    ('retain_batches_days = -1\n', {}, ["'retain_batches_days'", "0..36500"]),
    ('retain_batches_days = "forever"\n', {}, ["'retain_batches_days'", "0..36500"]),
])
def test_config_errors_name_the_field_and_the_fix(short_dir, text, env, words):
    short_dir.joinpath(CONFIG_FILE).write_text(text)
    with pytest.raises(ConfigError) as e:
        resolve_config(short_dir, {}, env)
    for w in words:
        assert w in str(e.value)


def test_init_config_round_trips(short_dir):
    cfg = NodeConfig(log_levels={"sync": "debug", "libp2p.pubsub": "info"}, metrics_listen="localhost:0",
                     bootstrap=["/ip4/127.0.0.1/tcp/4001/p2p/abc"])
    short_dir.joinpath(CONFIG_FILE).write_text(cfg.to_toml())
    assert load_config(short_dir) == cfg
    text = short_dir.joinpath(CONFIG_FILE).read_text()
    assert "# Prometheus /metrics" in text  # every field is commented in the file


async def test_config_show_cli(short_dir, capsys, monkeypatch):
    make_data_dir(short_dir, genesis())
    monkeypatch.setenv("LABELMESH_LOG_FORMAT", "json")
    code, out, err = await run_cli(capsys, "config", "show", "--data-dir", short_dir, "--log-level", "sync=debug",
                                   "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["values"]["log_format"] == "json" and d["sources"]["log_format"] == "env LABELMESH_LOG_FORMAT"
    assert d["values"]["log_levels"] == {"sync": "debug"} and d["sources"]["log_levels"].endswith("flag --log-level")
    code, out, err = await run_cli(capsys, "config", "show", "--data-dir", short_dir, "-v")
    assert code == 0 and "metrics_listen" in out and "env LABELMESH_LOG_FORMAT" in out and "loopback only" in out
    code, out, err = await run_cli(capsys, "config", "show", "--data-dir", short_dir, "--metrics-listen", "10.0.0.1:1")
    assert code == 2 and out == "" and err.count("\n") == 1 and "flag --metrics-listen" in err


# ------------------------------------------------------------------ 2. accounts

async def test_account_verbs_never_print_keys_unless_exported(short_dir, capsys):
    dd = short_dir / "dd"
    code, out, err = await run_cli(capsys, "account", "new", "carol", "--data-dir", dd, "--json")
    assert code == 0, err
    carol = json.loads(out)["public_key"]
    seed = json.loads((dd / "accounts" / "carol.json").read_text())["seed"]
    assert stat.S_IMODE(os.stat(dd / "accounts" / "carol.json").st_mode) == 0o600
    shown = []
    for argv in (["account", "list"], ["account", "list", "--json"], ["account", "show", "carol"],
                 ["account", "show", "carol", "--json"]):
        code, out, err = await run_cli(capsys, *argv, "--data-dir", dd)
        assert code == 0, err
        assert carol in out
        shown.append(out + err)
    assert not any(seed in s for s in shown)
    # export: to stdout with a warning on stderr, or to a new 0600 file
    code, out, err = await run_cli(capsys, "account", "export", "carol", "--data-dir", dd)
    assert code == 0 and seed in out and "WARNING" in err and seed not in err
    exp = out
    code, out, err = await run_cli(capsys, "account", "export", "carol", "--out", short_dir / "c.json", "--data-dir", dd)
    assert code == 0 and seed not in out + err
    assert stat.S_IMODE(os.stat(short_dir / "c.json").st_mode) == 0o600
    code, out, err = await run_cli(capsys, "account", "export", "carol", "--out", short_dir / "c.json", "--data-dir", dd)
    assert code == 2 and "exists" in err
    # import elsewhere: from the file, and a bare seed from stdin
    other = short_dir / "other"
    code, out, err = await run_cli(capsys, "account", "import", "carol", short_dir / "c.json", "--data-dir", other)
    assert code == 0 and carol in out and seed not in out + err
    assert Keystore(other).public_key("carol").hex() == carol
    third = short_dir / "third"
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(json.loads(exp)["seed"] + "\n")
    try:
        code, out, err = await run_cli(capsys, "account", "import", "c2", "--data-dir", third)
    finally:
        sys.stdin = old_stdin
    assert code == 0 and Keystore(third).public_key("c2").hex() == carol
    # one-line errors
    bad = short_dir / "bad.json"
    bad.write_text(json.dumps({**json.loads(exp), "public_key": "00" * 32}))
    for argv, words in ((["account", "import", "x", bad], "does not match"),
                        (["account", "import", "carol", short_dir / "c.json"], "already here"),
                        (["account", "new", "carol"], "already exists"),
                        (["account", "new", "bad name!"], "bad account name"),
                        (["account", "show", "nobody"], "no account named"),
                        (["account", "export", "nobody"], "no account named")):
        code, out, err = await run_cli(capsys, *argv, "--data-dir", other)
        assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


async def test_encrypted_accounts(short_dir, capsys, monkeypatch):
    monkeypatch.setenv("LABELMESH_PASSPHRASE", "correct horse")
    code, out, err = await run_cli(capsys, "account", "new", "enc", "--data-dir", short_dir, "--json")
    assert code == 0 and json.loads(out)["encrypted"] is True, err
    doc = json.loads((short_dir / "accounts" / "enc.json").read_text())
    assert "seed" not in doc and "encrypted" in doc
    code, out, err = await run_cli(capsys, "account", "list", "--data-dir", short_dir)
    assert code == 0 and "encrypted" in out
    code, out, err = await run_cli(capsys, "account", "export", "enc", "--data-dir", short_dir)
    assert code == 0, err
    seed = json.loads(out)["seed"]
    monkeypatch.delenv("LABELMESH_PASSPHRASE")
    code, out, err = await run_cli(capsys, "account", "export", "enc", "--data-dir", short_dir)
    assert code == 2 and "LABELMESH_PASSPHRASE" in err and err.count("\n") == 1 and seed not in out + err
    code, out, err = await run_cli(capsys, "account", "import", "enc2", "--encrypt", "--data-dir", short_dir / "x")
    assert code == 2 and "LABELMESH_PASSPHRASE" in err  # no terminal to ask on


# ------------------------------------------------------------------ 4. logs

@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level,
             {n: l.level for n, l in logging.root.manager.loggerDict.items() if isinstance(l, logging.Logger)},
             logging.getLogger("libp2p").propagate)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for n, lvl in saved[2].items():
        logging.getLogger(n).setLevel(lvl)
    logging.getLogger("libp2p").propagate = saved[3]


def test_levels_per_component_and_libp2p_through_our_handler(restore_logging):
    buf = io.StringIO()
    setup_logging("info", "json", stream=buf, levels={"sync": "debug", "libp2p.pubsub": "info", "p2p": "warning"})
    assert logging.getLogger("labelmesh.sync").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("labelmesh.rpc").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("node.p2p").isEnabledFor(logging.INFO)
    assert logging.getLogger("libp2p.pubsub.gossipsub").isEnabledFor(logging.INFO)       # override
    assert not logging.getLogger("libp2p.network.swarm").isEnabledFor(logging.INFO)      # held at WARNING
    logging.getLogger("labelmesh.sync").debug("synced %d", 3, extra={"peer": "p1"})
    logging.getLogger("libp2p.network.swarm").warning("dial failed")
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert {"logger": "labelmesh.sync", "msg": "synced 3", "peer": "p1", "level": "debug"}.items() <= lines[0].items()
    assert lines[1]["logger"] == "libp2p.network.swarm" and lines[1]["level"] == "warning"
    buf2 = io.StringIO()
    setup_logging("info", "text", stream=buf2, levels={"libp2p": "debug"})  # a second setup replaces the first
    assert not logging.getLogger("labelmesh.sync").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("libp2p.network.swarm").isEnabledFor(logging.DEBUG)
    logging.getLogger("labelmesh.node").info("hello", extra={"task": "ab12"})
    assert buf.getvalue().count("\n") == 2 and re.search(r"INFO +labelmesh\.node: hello task=ab12", buf2.getvalue())


def test_scrub():
    seed = "ab" * 32
    assert seed not in scrub(f"key {seed}") and "abababababab…" in scrub(f"key {seed}")
    assert "xxxxxxxxxx" not in scrub(repr(b"x" * 100))
    assert scrub("task 0123456789abcdef ok") == "task 0123456789abcdef ok"  # 16-digit id prefixes stay
    assert len(scrub("y" * 50_000)) < 2100


async def test_no_key_or_payload_in_any_log_line(short_dir, capsys, restore_logging, nursery):
    """Everything at DEBUG, libp2p included, through a whole task's life: no seed, no node
    key, no raw message and no item text reaches the log; every line is JSON."""
    buf = io.StringIO()
    setup_logging("debug", "json", stream=buf, levels={"libp2p": "debug"})
    g = genesis()
    dd = make_data_dir(short_dir / "dd", g)
    clock = FakeClock()
    node = await start_ops_node(nursery, dd, g, clock)
    tid = await post_and_label(capsys, dd)
    await run_cli(capsys, "rpc", "annotations_submit", json.dumps({"raw": "00" * 300}), "--data-dir", dd)
    await run_cli(capsys, "account", "export", "ann1", "--data-dir", dd)
    await helpers.advance(clock, node.tasks[bytes.fromhex(tid)].deadline + 5_000, step=200)
    await wait_for(lambda: node.finality.is_certified(bytes.fromhex(tid)), 20)
    raws = [r.hex() for r in node.store.get_many(node.store.task_message_ids(bytes.fromhex(tid)))]
    # a library that logs message bytes at DEBUG (py-libp2p does) is scrubbed too
    logging.getLogger("libp2p.pubsub").debug("received %s from peer", raws[0])
    logging.getLogger("libp2p.pubsub").debug("received %r", bytes.fromhex(raws[1]))
    log = buf.getvalue()
    assert len(log.splitlines()) > 5
    for line in log.splitlines():
        json.loads(line)
    secrets = [bytes(key(n)).hex() for n in ACCOUNTS.values()] + [(dd / "node.key").read_text().strip()]
    for s in secrets:
        assert s not in log and s[:32] not in log
    for raw in raws:
        assert raw[:64] not in log
    assert "item number" not in log
    assert re.search(r'"msg": "received [0-9a-f]{12}\\u2026 from peer"', log)


# ------------------------------------------------------------------ 3 + 5. metrics and status

async def test_metrics_and_status_of_a_running_node(short_dir, capsys, nursery):
    g = genesis()
    dd = make_data_dir(short_dir / "dd", g)
    clock = FakeClock()
    node = await start_ops_node(nursery, dd, g, clock)
    other = await start_ops_node(nursery, make_data_dir(short_dir / "o", g), g, clock, rpc=False)
    assert node.metrics.url and other.metrics.url and node.metrics.url != other.metrics.url

    m = await scrape(node.metrics.url)
    assert m[("labelmesh_tasks", ("state", "open"))] == 0
    assert m[("labelmesh_peers",)] == 0
    assert ("labelmesh_info", ("network", "ops"), ("network_id", g.network_id.hex()[:16]), ("peer_id", ""),
            ("version", "0.1.0")) in m
    assert m[("labelmesh_store_schema_version",)] == 1

    tid = await post_and_label(capsys, dd)
    await run_cli(capsys, "rpc", "no_such_method", "--data-dir", dd)
    await run_cli(capsys, "rpc", "task_get", '{"task_id": "zz"}', "--data-dir", dd)
    code, out, _ = await run_cli(capsys, "status", "--data-dir", dd, "--json")
    s = json.loads(out)
    assert code == 0 and s["tasks_by_state"] == {"open": 1, "closed": 0, "certified": 0}
    assert s["metrics_url"] == node.metrics.url and s["store"]["schema_version"] == 1

    await helpers.advance(clock, node.tasks[bytes.fromhex(tid)].deadline + 5_000, step=200)
    await wait_for(lambda: node.finality.is_certified(bytes.fromhex(tid)), 20)
    code, out, err = await run_cli(capsys, "consensus", tid, "--data-dir", dd)
    assert code == 0, err

    m = await scrape(node.metrics.url)
    assert m[("labelmesh_tasks", ("state", "certified"))] == 1
    assert m[("labelmesh_tasks", ("state", "open"))] == 0
    assert m[("labelmesh_messages_stored", ("kind", "batch"))] == 3
    assert m[("labelmesh_messages_ingested_total", ("outcome", "accept"))] >= 4
    assert m[("labelmesh_rpc_calls_total", ("code", "ok"), ("method", "task_post"))] == 1
    assert m[("labelmesh_rpc_calls_total", ("code", "ok"), ("method", "annotations_submit"))] == 3
    assert m[("labelmesh_rpc_calls_total", ("code", "-32601"), ("method", "(unknown)"))] == 1
    assert m[("labelmesh_rpc_calls_total", ("code", "-32602"), ("method", "task_get"))] == 1
    assert m[("labelmesh_rpc_call_seconds_count", ("method", "task_post"))] == 1
    assert m[("labelmesh_store_write_seconds_count",)] >= 4
    assert m[("labelmesh_store_commits_total",)] >= 4
    assert m[("labelmesh_consensus_seconds_count",)] >= 1
    assert m[("labelmesh_finality_seconds_count",)] == 1
    assert m[("labelmesh_finality_seconds_sum",)] >= 1.0  # deadline + grace at least, in protocol time
    assert m[("labelmesh_store_used_bytes",)] > 0 and ("process_resident_memory_bytes",) in m
    assert any(k[0] == "labelmesh_node_events_total" for k in m)  # the node's other counters, by name
    # a second node in the same process has its own registry
    o = await scrape(other.metrics.url)
    assert o[("labelmesh_tasks", ("state", "certified"))] == 0 and ("labelmesh_rpc_calls_total",) not in o

    # the HTTP endpoint: only GET/HEAD of /metrics
    host, port = re.match(r"http://([\d.]+):(\d+)", node.metrics.url).groups()
    assert (await http_get(host, int(port), "/nope")).startswith(b"HTTP/1.0 404")
    assert (await http_get(host, int(port), "/metrics", "POST")).startswith(b"HTTP/1.0 405")
    head = await http_get(host, int(port), "/metrics", "HEAD")
    assert head.startswith(b"HTTP/1.0 200") and head.endswith(b"\r\n\r\n")

    # status: human table, with this node's accounts' rewards and reputation
    code, out, err = await run_cli(capsys, "status", "--data-dir", dd)
    assert code == 0, err
    assert "certified 1" in out and "ops" in out and node.metrics.url in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("          ")}
    assert set(rows) == set(ACCOUNTS)
    code, out, _ = await run_cli(capsys, "status", "--data-dir", dd, "--json")
    accts = {a["name"]: a for a in json.loads(out)["accounts"]}
    assert sum(accts[a]["reward"] for a in ("ann1", "ann2", "ann3")) > 0 and accts["val"]["reward"] == 0
    assert accts["ann1"]["reputation"] is not None
    # --watch: bounded frames, each clearing the screen
    code, out, err = await run_cli(capsys, "status", "--data-dir", dd, "--watch", "0.01", "--iterations", "3")
    assert code == 0, err
    assert out.count("\x1b[H\x1b[2J") == 3 and out.count("certified 1") == 3
    code, out, err = await run_cli(capsys, "status", "--data-dir", dd, "--watch", "0.01", "--iterations", "2", "--json")
    assert [json.loads(x)["tasks_by_state"]["certified"] for x in out.splitlines()] == [1, 1]


async def test_status_without_a_node(short_dir, capsys):
    code, out, err = await run_cli(capsys, "status", "--data-dir", short_dir)
    assert code == 3 and out == "" and err.count("\n") == 1 and "labelmesh run" in err
    code, out, err = await run_cli(capsys, "status", "--data-dir", short_dir, "--watch", "0.01", "--iterations", "2")
    assert code == 0 and out.count("node not reachable") == 2  # --watch waits for the node to come back


def test_metrics_listen_port_in_use_is_one_line(short_dir):
    import socket
    make_data_dir(short_dir, genesis())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "node.cli", "run", "--data-dir", str(short_dir),
                            "--metrics-listen", f"127.0.0.1:{port}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert r.returncode == 2, r.stderr
    err = [x for x in r.stderr.splitlines() if x.startswith("labelmesh:")]
    assert len(err) == 1 and "metrics_listen" in err[0] and str(port) in err[0]
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------ 6. backup and restore

async def test_hot_backup_while_writing_then_restore(short_dir, capsys, nursery):
    from protocol.messages import AnnotationBatch, sign_message

    g = genesis()
    dd = make_data_dir(short_dir / "dd", g)
    clock = FakeClock()
    node = await start_ops_node(nursery, dd, g, clock, metrics_listen="")
    tid = bytes.fromhex(await post_and_label(capsys, dd))
    stop = trio.Event()
    written = []

    async def keep_writing():  # other annotators keep submitting while the backup runs
        n = 0
        while not stop.is_set():
            k = key(200 + n)
            b = AnnotationBatch(annotator=bytes(k.verify_key), task_id=tid, created_at=clock.now,
                                labels=((n % 6, n % 2),))
            v, mid = await node.ingest(sign_message(b, k, g.network_id).raw, "rpc")
            assert v.ok
            written.append(mid)
            n += 1

    async with trio.open_nursery() as w:
        w.start_soon(keep_writing)
        await wait_for(lambda: len(written) >= 5)
        code, out, err = await run_cli(capsys, "backup", short_dir / "bk", "--data-dir", dd, "--json")
        await wait_for(lambda: len(written) >= 10)  # writes go on after the snapshot
        stop.set()
    assert code == 0, err
    man = json.loads(out)
    assert man["messages"] == json.loads((short_dir / "bk" / "backup.json").read_text())["messages"]
    assert stat.S_IMODE(os.stat(short_dir / "bk").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(short_dir / "bk" / "store" / "data.mdb").st_mode) == 0o600
    assert {"config.toml", "genesis.json", "node.key", "accounts/ann1.json"} <= set(man["files"])

    code, out, err = await run_cli(capsys, "restore", short_dir / "bk", "--data-dir", short_dir / "rs", "--json")
    assert code == 0, err
    assert json.loads(out)["messages"] == man["messages"]
    restored = Node(short_dir / "rs", g, p2p_factory=None, clock=clock)
    try:
        # one consistent snapshot: exactly the first N messages the original stored, in order
        got = [mid for _, mid, _ in restored.store.iter_since(0, 100_000)]
        want = [mid for _, mid, _ in node.store.iter_since(0, 100_000)][: len(got)]
        assert len(got) == man["messages"] and got == want
        assert node.store.count() > len(got)  # the node kept writing after the snapshot
        ids = restored.store.task_message_ids(tid)
        assert restored.task_result(tid).result_root == node.compute_result(tid, restored.task_pinnable_ids(tid)).result_root
        assert len(ids) >= 4
    finally:
        restored.store.close()

    # a second backup, with nothing written meanwhile: the restored node reports the same roots
    code, out, err = await run_cli(capsys, "backup", short_dir / "bk2", "--data-dir", dd)
    assert code == 0 and "it holds the node's keys" in out, err
    code, _, err = await run_cli(capsys, "restore", short_dir / "bk2", "--data-dir", short_dir / "rs2")
    assert code == 0, err
    code, out, _ = await run_cli(capsys, "rpc", "consensus_get", json.dumps({"task_id": tid.hex(), "items": False}),
                                 "--data-dir", dd)
    before = json.loads(out)
    restored = Node(short_dir / "rs2", g, p2p_factory=None, clock=clock)
    try:
        res = restored.task_result(tid)
        assert (res.set_root.hex(), res.result_root.hex()) == (before["set_root"], before["result_root"])
        assert restored.store.count() == node.store.count()
    finally:
        restored.store.close()


async def test_backup_and_restore_refusals(short_dir, capsys, nursery):
    g = genesis()
    dd = make_data_dir(short_dir / "dd", g)
    node = await start_ops_node(nursery, dd, g, FakeClock(), metrics_listen="")
    (short_dir / "full").mkdir()
    (short_dir / "full" / "x").write_text("x")
    for dest, words in ((short_dir / "full", "not empty"), (dd / "bk", "inside the data dir")):
        code, out, err = await run_cli(capsys, "backup", dest, "--data-dir", dd)
        assert code == 2 and words in err and err.count("\n") == 1, err
    code, out, err = await run_cli(capsys, "rpc", "backup_create", '{"dest": "relative/dir"}', "--data-dir", dd)
    assert code == 2 and "absolute path" in err
    assert not (dd / "bk").exists()
    code, _, err = await run_cli(capsys, "backup", short_dir / "ok", "--data-dir", dd)
    assert code == 0, err
    for src, target, words in ((short_dir / "full", short_dir / "r1", "not a labelmesh backup"),
                               (short_dir / "ok", short_dir / "full", "not empty"),
                               (short_dir / "ok", short_dir / "ok" / "in", "outside the backup")):
        code, out, err = await run_cli(capsys, "restore", src, "--data-dir", target)
        assert code == 2 and words in err and err.count("\n") == 1, err
    man = json.loads((short_dir / "ok" / "backup.json").read_text())
    (short_dir / "ok" / "backup.json").write_text(json.dumps({**man, "messages": 5}))
    code, out, err = await run_cli(capsys, "restore", short_dir / "ok", "--data-dir", short_dir / "r2")
    assert code == 2 and "damaged" in err and not (short_dir / "r2").exists()
    assert node.store.count() == 0


async def test_backup_of_a_stopped_node(short_dir, capsys):
    g = genesis()
    dd = make_data_dir(short_dir / "dd", g)
    async with trio.open_nursery() as n:
        node = await start_ops_node(n, dd, g, FakeClock(), metrics_listen="")
        await post_and_label(capsys, dd)
        count = node.store.count()
        n.cancel_scope.cancel()
    import socket
    stale = socket.socket(socket.AF_UNIX)  # a node that died leaves its socket file behind
    stale.bind(str(dd / "node.sock"))
    stale.close()
    code, out, err = await run_cli(capsys, "backup", short_dir / "bk", "--data-dir", dd, "--json")
    assert code == 0, err
    assert json.loads(out)["messages"] == count == 6  # task, 3 batches, the bounty's escrow order and its vote
    code, out, err = await run_cli(capsys, "restore", short_dir / "bk", "--data-dir", short_dir / "rs", "--json")
    assert code == 0 and json.loads(out)["messages"] == 6, err


# ------------------------------------------------------------------ 7. service file, completion

def test_systemd_unit_and_completion(capsys):
    unit = (ROOT / "docs" / "labelmesh.service").read_text()
    assert re.search(r"^Restart=on-failure$", unit, re.M)
    assert re.search(r"^ExecStart=\S*labelmesh run --data-dir ", unit, re.M)
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "complete -F _labelmesh labelmesh" in script and "backup" in script and "--metrics-listen" in script


@pytest.mark.parametrize("verb", [["config", "show"], ["account", "new"], ["account", "list"], ["account", "show"],
                                  ["account", "export"], ["account", "import"], ["backup"], ["restore"],
                                  ["completion"], ["status"], ["run"]])
def test_help_of_operator_verbs(verb, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*verb, "--help"])
    assert e.value.code == 0 and "usage: labelmesh" in capsys.readouterr().out


# ------------------------------------------------------------------ the newcomer path, for real

def _cli(*args, timeout=240, check=True, env=None):
    r = subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"labelmesh {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


_wait = functools.partial(poll, interval=0.2)


class Daemon:
    """`labelmesh run` in a subprocess; its stdout "ready" line tells the metrics URL."""

    def __init__(self, dd: Path, *extra):
        self.out = open(dd.parent / f"{dd.name}.out", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--data-dir", str(dd), *extra],
                                     cwd=ROOT, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        self.ready = _wait(self._ready, 60, f"{dd} to start")

    def _ready(self):
        assert self.proc.poll() is None, open(self.out.name).read()
        for line in open(self.out.name):
            if line.startswith('{"event": "ready"'):
                return json.loads(line)
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.close()


@pytest.mark.devnet
def test_newcomer_joins_devnet_watches_backs_up_and_restores():
    """README + docs/operations.md, step by step: join a devnet, watch it (status --watch,
    /metrics), back it up while it runs, restore it and start from the copy."""
    root = Path(tempfile.mkdtemp(prefix="lmnew", dir="/tmp"))
    daemons = []
    try:
        _cli("devnet", "up", "-n", "2", "--root", root / "net")
        n0 = root / "net" / "node-0"
        info0 = json.loads(_cli("rpc", "node_info", "--data-dir", n0).stdout)
        boot = [a for a in info0["listen_addrs"] if "/p2p/" in a][0]
        items = root / "items.jsonl"
        items.write_text('"a"\n"b"\n"c"\n')
        tid = json.loads(_cli("task", "post", items, "--labels", "x,y", "--duration", "3600", "--account",
                              "requester", "--data-dir", n0, "--json").stdout)["task_id"]
        # 1. join: init with the network's genesis and a bootstrap address, run with metrics on
        me = root / "me"
        _cli("init", "--data-dir", me, "--genesis", n0 / "genesis.json", "--listen", "/ip4/127.0.0.1/tcp/0",
             "--bootstrap", boot)
        d = Daemon(me, "--metrics-listen", "127.0.0.1:0")
        daemons.append(d)

        def joined():
            s = json.loads(_cli("status", "--data-dir", me, "--json").stdout)
            return s["peer_count"] >= 1 and s["tasks"] == 1
        _wait(joined, 90, "the newcomer to connect and receive the task")
        _cli("label", tid, "0", "x", "1", "y", "--account", "default", "--data-dir", me)

        def reached_node0():
            c0 = json.loads(_cli("rpc", "consensus_get", json.dumps({"task_id": tid, "items": False}),
                                 "--data-dir", n0).stdout)
            return c0["batches"] == 1
        _wait(reached_node0, 90, "the newcomer's labels to reach node 0")
        # 2. watch it
        r = _cli("status", "--data-dir", me, "--watch", "0.2", "--iterations", "2")
        assert r.stdout.count("\x1b[H\x1b[2J") == 2 and "open 1" in r.stdout and "peers     " in r.stdout
        url = d.ready["metrics"]
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        m = {(s.name, *sorted(s.labels.items())): s.value
             for f in text_string_to_metric_families(text) for s in f.samples}
        assert m[("labelmesh_peers",)] >= 1 and m[("labelmesh_tasks", ("state", "open"))] == 1
        assert m[("labelmesh_messages_stored", ("kind", "batch"))] == 1
        # 3. back it up while it runs
        man = json.loads(_cli("backup", root / "bk", "--data-dir", me, "--json").stdout)
        assert man["messages"] == 2
        before = json.loads(_cli("rpc", "consensus_get", json.dumps({"task_id": tid, "items": False}),
                                 "--data-dir", me).stdout)
        d.stop()
        # 4. restore it, start from the copy: same messages, same roots
        _cli("restore", root / "bk", "--data-dir", root / "me2")
        d2 = Daemon(root / "me2")
        daemons.append(d2)
        assert d2.ready["peer_id"] == d.ready["peer_id"]
        after = json.loads(_cli("rpc", "consensus_get", json.dumps({"task_id": tid, "items": False}),
                                "--data-dir", root / "me2").stdout)
        assert (after["set_root"], after["result_root"]) == (before["set_root"], before["result_root"])
        assert json.loads(_cli("status", "--data-dir", root / "me2", "--json").stdout)["messages"]["stored"] == 2
    finally:
        for d in daemons:
            d.stop()
        _cli("devnet", "down", "--root", root / "net", check=False, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
