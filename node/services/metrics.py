"""Prometheus metrics of a node, served on a loopback HTTP port.

How it works
------------
Each Node owns one ``NodeMetrics`` with its own ``CollectorRegistry`` (several
nodes live in one process in tests, so nothing goes to prometheus_client's
global registry). Almost every value is read from state the node keeps anyway,
at scrape time, by ``NodeCollector``: ingest counters, libp2p counters, store
statistics, sync state per peer, task states, RPC statistics. The hot paths
carry no metric code except three histograms, observed where the event happens:

* ``labelmesh_store_write_seconds``: one durable group commit
  (``StoreWriter.on_commit``);
* ``labelmesh_consensus_seconds``: one consensus computation over a task's set,
  reading and decoding its messages included (``Node.compute_result`` /
  ``prepare_result`` on a cache miss, on the loop or in the worker thread);
* ``labelmesh_finality_seconds``: from a task's deadline to the moment this node
  holds its certificate (protocol clock; ``FinalityService``), for tasks whose
  deadline fell while the node ran.

The endpoint is off unless ``metrics_listen`` (config, ``LABELMESH_METRICS_LISTEN``
or ``--metrics-listen``) names a loopback HOST:PORT. ``serve`` runs in the node's
nursery: a minimal HTTP/1.0 responder (GET or HEAD of ``/metrics``; ``/`` says
where to look), bounded in request size and time, one response per connection.
The metric names and the key queries are in ``docs/metrics.md``.
"""
from __future__ import annotations

import logging
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from protocol.messages import KIND_NAMES

from .. import __version__
from ..config import parse_metrics_listen
from ..errors import ConfigError
from ..storage.layout import SCHEMA_VERSION

log = logging.getLogger("labelmesh.metrics")

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT_S = 10.0

WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONSENSUS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FINALITY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def task_state_counts(node) -> dict[str, int]:
    """Tasks by state: open (before the deadline), closed (past it, not certified
    here yet), certified (this node holds the finality certificate)."""
    now = node.clock()
    out = {"open": 0, "closed": 0, "certified": 0}
    fin = getattr(node, "finality", None)
    for tid, t in list(node.tasks.items()):
        if now <= t.deadline:
            out["open"] += 1
        elif fin is not None and fin.is_certified(tid):
            out["certified"] += 1
        else:
            out["closed"] += 1
    return out


def store_summary(node) -> dict[str, Any]:
    """Schema version, sizes and last arrival number of the node's store."""
    st = node.store.stats()
    return {"schema_version": SCHEMA_VERSION, "used_bytes": st["used_bytes"], "file_bytes": st["file_bytes"],
            "map_size": st["map_size"], "last_seq": st["last_seq"]}


class NodeMetrics:
    """The registry of one node: the scrape-time collector plus three histograms."""

    def __init__(self, node) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.store_write_seconds = Histogram(
            "labelmesh_store_write_seconds", "Duration of one durable group commit (records handed to the "
            "writer thread until fsync'ed)", buckets=WRITE_BUCKETS, registry=self.registry)
        self.consensus_seconds = Histogram(
            "labelmesh_consensus_seconds", "Duration of one consensus computation over a task's annotation set",
            buckets=CONSENSUS_BUCKETS, registry=self.registry)
        self.finality_seconds = Histogram(
            "labelmesh_finality_seconds", "From a task's deadline to this node holding its certificate "
            "(protocol clock)", buckets=FINALITY_BUCKETS, registry=self.registry)
        self.registry.register(NodeCollector(node))
        ProcessCollector(registry=self.registry)
        self.url: str | None = None

    # hooks -------------------------------------------------------------

    def observe_commit(self, records: int, seconds: float) -> None:
        self.store_write_seconds.observe(seconds)

    def observe_consensus(self, seconds: float) -> None:
        self.consensus_seconds.observe(seconds)

    def observe_certified(self, task_id: bytes, now_ms: int) -> None:
        task = self.node.tasks.get(task_id)
        # Only tasks whose deadline fell while this node ran: a restarted node that finds
        # old certificates on disk would otherwise report their age as finality time.
        if task is not None and task.deadline >= self.node.started_at:
            self.finality_seconds.observe(max(0, now_ms - task.deadline) / 1000)

    # exposition --------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format of every metric of this node."""
        return generate_latest(self.registry)

    async def serve(self, listen: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve ``GET /metrics`` on ``listen`` ("127.0.0.1:9464"; port 0 picks one)
        until cancelled. ``task_status.started(url)`` once listening."""
        host, port = parse_metrics_listen(listen)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as e:
            raise ConfigError(f"config field 'metrics_listen': cannot listen on {host}:{port}: {e.strerror}; "
                              "pick a free port (or 0) or turn metrics off with \"\"") from None
        bound = listeners[0].socket.getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}/metrics"
        log.info("metrics served", extra={"url": self.url})
        task_status.started(self.url)
        try:
            await trio.serve_listeners(self._handle, listeners)
        finally:
            self.url = None

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                head = bytearray()
                while b"\n\n" not in head.replace(b"\r\n", b"\n"):
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    head += chunk
                    if len(head) > MAX_REQUEST_HEAD:
                        await stream.send_all(_response(431, b"request header too large\n"))
                        return
                parts = bytes(head).split(b"\n", 1)[0].decode("latin-1").split()
                method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
                if method not in ("GET", "HEAD"):
                    resp = _response(405, b"only GET and HEAD\n", extra=b"Allow: GET, HEAD\r\n")
                elif path == "/metrics":
                    resp = _response(200, self.render(), CONTENT_TYPE_LATEST.encode())
                elif path == "/":
                    resp = _response(200, b"labelmesh node: metrics at /metrics\n")
                else:
                    resp = _response(404, b"not found: metrics are at /metrics\n")
                if method == "HEAD":
                    resp = resp.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                await stream.send_all(resp)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()


_REASONS = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 431: b"Request Header Fields Too Large"}


def _response(code: int, body: bytes, ctype: bytes = b"text/plain; charset=utf-8", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n"
            % (code, _REASONS[code], ctype, len(body), extra)) + body


class NodeCollector:
    """Reads the node's state at scrape time (on the event loop thread, where the
    state lives). A failing section is logged and skipped, never a failed scrape."""

    def __init__(self, node) -> None:
        self.node = node

    def describe(self):
        return []  # metrics appear and disappear with the node's state; no fixed description

    def collect(self):
        for section in (self._identity, self._ingest, self._gossip, self._store, self._sync, self._tasks, self._ledger,
                        self._rpc):
            try:
                yield from section()
            except Exception:  # a scrape must not take anything down
                log.debug("metrics section %s failed", section.__name__, exc_info=True)

    def _identity(self):
        n = self.node
        info = InfoMetricFamily("labelmesh", "Identity of this node")
        info.add_metric([], {"version": __version__, "network": n.genesis.name, "network_id": n.network_id.hex()[:16],
                             "peer_id": n.peer_id})
        yield info
        yield GaugeMetricFamily("labelmesh_uptime_seconds", "Seconds since the node started",
                                value=max(0, n.clock() - n.started_at) / 1000)
        peers = n.p2p.peers() if n.p2p is not None else []
        yield GaugeMetricFamily("labelmesh_peers", "Connected libp2p peers", value=len(peers))

    def _ingest(self):
        c = self.node.counters
        m = CounterMetricFamily("labelmesh_messages_ingested", "Messages through the ingest pipeline from any "
                                "source (RPC, gossip, sync) by outcome", labels=["outcome"])
        for outcome, v in (("accept", c.accepted), ("reject", c.rejected), ("ignore", c.ignored),
                           ("duplicate", c.duplicates)):
            m.add_metric([outcome], v)
        yield m
        from dataclasses import fields
        ev = CounterMetricFamily("labelmesh_node_events", "Other ingest counters of the node (e.g. "
                                 "rate_limited, redundant, dropped, publish_dropped)", labels=["event"])
        for f in fields(c):
            if f.name not in ("accepted", "rejected", "ignored", "duplicates", "published"):
                ev.add_metric([f.name], getattr(c, f.name))
        yield ev
        yield GaugeMetricFamily("labelmesh_orphans", "Messages waiting for their task to arrive",
                                value=self.node.orphan_count)

    def _gossip(self):
        n = self.node
        m = CounterMetricFamily("labelmesh_gossip_messages", "GossipSub messages: in by validation outcome "
                                "(ignore includes duplicates), out = published", labels=["direction", "outcome"])
        stats = n.p2p.stats() if n.p2p is not None and hasattr(n.p2p, "stats") else {}
        if stats:
            m.add_metric(["in", "accept"], stats.get("gossip_accepted", 0))
            m.add_metric(["in", "reject"], stats.get("gossip_rejected", 0))
            m.add_metric(["in", "ignore"], stats.get("gossip_ignored", 0) + stats.get("gossip_duplicates", 0))
        m.add_metric(["out", "published"], n.counters.published)
        yield m
        shown = {"gossip_accepted", "gossip_rejected", "gossip_ignored", "gossip_duplicates", "published"}
        ev = CounterMetricFamily("labelmesh_p2p_events", "Other libp2p adapter counters (bans, dial failures, "
                                 "dropped deliveries, requests)", labels=["event"])
        for k in sorted(set(stats) - shown):
            ev.add_metric([k], stats[k])
        yield ev

    def _store(self):
        n = self.node
        st = n.store.stats()
        for name, doc, v in (
                ("labelmesh_store_used_bytes", "Bytes of the LMDB map in use", st["used_bytes"]),
                ("labelmesh_store_file_bytes", "Size of data.mdb on disk", st["file_bytes"]),
                ("labelmesh_store_map_size_bytes", "Current LMDB map size (grows on demand)", st["map_size"]),
                ("labelmesh_store_max_map_size_bytes", "Limit of the LMDB map size", st["max_map_size"]),
                ("labelmesh_store_last_seq", "Arrival number of the newest stored message", st["last_seq"]),
                ("labelmesh_store_schema_version", "On-disk layout version", SCHEMA_VERSION),
                ("labelmesh_store_queued_records", "Records waiting for a group commit", n.writer.queued_records)):
            yield GaugeMetricFamily(name, doc, value=v)
        kinds = GaugeMetricFamily("labelmesh_messages_stored", "Stored messages by kind", labels=["kind"])
        for k, cnt in n.store.count_by_kind().items():
            kinds.add_metric([KIND_NAMES.get(k, str(k))], cnt)
        yield kinds
        w = n.writer
        yield CounterMetricFamily("labelmesh_store_commits", "Successful group commits", value=w.commits)
        yield CounterMetricFamily("labelmesh_store_failed_commits", "Failed group commits (e.g. disk full)",
                                  value=w.failed_commits)
        yield CounterMetricFamily("labelmesh_store_records_written", "Records in successful group commits "
                                  "(duplicates included)", value=w.records_written)

    def _sync(self):
        n = self.node
        if n.sync is None:
            return
        peers = list(n.sync.peers.values())
        now = n.clock()
        yield GaugeMetricFamily("labelmesh_sync_lag_tasks", "Tasks whose fingerprints differed from a peer's at "
                                "the last session (max over peers; 0 = in sync)",
                                value=max((p.lag_tasks for p in peers), default=0))
        last = max((p.last_sync_ms for p in peers if p.last_sync_ms), default=0)
        if last:
            yield GaugeMetricFamily("labelmesh_sync_last_success_age_seconds", "Seconds since the last completed "
                                    "sync session with any peer", value=max(0, now - last) / 1000)
        for name, doc, attr in (("labelmesh_sync_sessions", "Sync sessions started", "sessions"),
                                ("labelmesh_sync_fetched_messages", "Messages stored thanks to sync", "fetched"),
                                ("labelmesh_sync_served_messages", "Messages served to peers' sync", "served"),
                                ("labelmesh_sync_requests", "Sync requests sent", "requests"),
                                ("labelmesh_sync_errors", "Failed or penalised sync exchanges", "errors")):
            yield CounterMetricFamily(name, doc, value=sum(getattr(p, attr) for p in peers))
        yield GaugeMetricFamily("labelmesh_sync_peers_banned", "Peers banned for sync misbehaviour",
                                value=sum(1 for p in peers if p.banned_until > trio.current_time()))

    def _tasks(self):
        g = GaugeMetricFamily("labelmesh_tasks", "Known tasks by state", labels=["state"])
        for state, v in task_state_counts(self.node).items():
            g.add_metric([state], v)
        yield g
        fin = getattr(self.node, "finality", None)
        if fin is not None:
            yield CounterMetricFamily("labelmesh_finality_fetch_requests", "Fetches of batches pinned by a "
                                      "certificate or a leader's prevote", value=fin.fetch_requests)

    def _ledger(self):
        st = self.node.ledger
        t = st.totals()
        g = GaugeMetricFamily("labelmesh_ledger_credits", "Credits in this node's view of the ledger: the genesis "
                              "supply, and where it is (balances + escrow + burned = supply)", labels=["part"])
        for part in ("supply", "balances", "escrow", "burned"):
            g.add_metric([part], t[part])
        yield g
        yield GaugeMetricFamily("labelmesh_ledger_invariant_ok", "1 if balances + escrow + burned equals the supply "
                                "and nothing is negative here, else 0", value=int(st.check_supply()))
        yield GaugeMetricFamily("labelmesh_ledger_orders_applied", "Debit orders (transfers, escrows) applied here",
                                value=len(st.applied))
        yield GaugeMetricFamily("labelmesh_ledger_validator_evidence", "Slots where a validator co-signed two "
                                "debit orders (equivocation evidence)", value=len(st.get_evidence()))
        keystore = self.node.keystore
        if keystore is not None:
            bal = GaugeMetricFamily("labelmesh_account_balance", "Spendable credits of the node's local accounts",
                                    labels=["account"])
            esc = GaugeMetricFamily("labelmesh_account_escrowed", "Credits of the local accounts held in the escrow "
                                    "of their open tasks", labels=["account"])
            for a in keystore.list():
                pk = bytes.fromhex(a["public_key"])
                bal.add_metric([a["name"]], st.get_balance(pk))
                esc.add_metric([a["name"]], st.get_escrow_of(pk))
            yield bal
            yield esc

    def _rpc(self):
        rpc = getattr(self.node, "rpc", None)
        if rpc is None:
            return
        stats = getattr(rpc, "method_stats", {})
        calls = CounterMetricFamily("labelmesh_rpc_calls", "JSON-RPC calls by method and result code "
                                    "(\"ok\" or the JSON-RPC error code)", labels=["method", "code"])
        dur = SummaryMetricFamily("labelmesh_rpc_call_seconds", "Time spent answering JSON-RPC calls",
                                  labels=["method"])
        per_method: dict[str, list[float]] = {}
        for (method, code), (count, seconds) in sorted(stats.items()):
            calls.add_metric([method, code], count)
            acc = per_method.setdefault(method, [0, 0.0])
            acc[0] += count
            acc[1] += seconds
        for method, (count, seconds) in per_method.items():
            dur.add_metric([method], count_value=count, sum_value=seconds)
        yield calls
        yield dur
        yield GaugeMetricFamily("labelmesh_rpc_connections", "Open RPC client connections", value=rpc.connections)
        yield CounterMetricFamily("labelmesh_rpc_evicted_connections", "Idle RPC clients closed to make room "
                                  "for new ones", value=getattr(rpc, "evicted", 0))

