"""The discrete-event engine: one process, a fake clock, a heap of events.

How it works
------------
Simulated time is seconds from 0 (protocol time is ``GENESIS_MS`` + that, shifted by each
node's clock offset). Events, in time order (ties by insertion order, so a run is a pure
function of its seed):

* ``heartbeat`` every ``heartbeat_s``: churn transitions, GossipSub mesh maintenance of the
  nodes whose mesh changed, folding settled messages into the store digests, IHAVE control
  overhead, and the sync sessions due before the next heartbeat (``syncsim``);
* ``flush``: a node's publisher takes a token and publishes what waits in its queue, one
  bundle per topic; the pubsub message is flooded at once (``net.Network.flood``), which
  fixes when every node stores each envelope;
* ``deliver``: an attestation reaches a validator (or, with ``observers="full"``, any
  node), whose ``protocol.finality.TaskFinality`` takes it (``on_attestation``);
* ``vtick``: a validator ticks a task's finality machine (``on_tick``) on its 0.25 s tick
  grid at round boundaries and after each delivery; what it returns is signed, stored,
  fed back and published, exactly as node/services/finality.py does;
* sync sessions, GETs and landings (``syncsim``); workload callbacks (``call``).

Nodes hold no per-node copies of messages (``state.Holdings``); validators hold real
TaskFinality machines; results and reputation come from ``protocol.tally`` and
``protocol.reputation`` (``results.Results``).
"""
from __future__ import annotations

import heapq
import math
import random
import time

import numpy as np

from protocol.bundle import group_envelopes, payload_of
from protocol.finality import TaskFinality
from protocol.messages import (
    KIND_ATTESTATION, KIND_BATCH, KIND_GOLD, KIND_NAMES, KIND_TASK, PHASE_PRECOMMIT, PHASE_PREVOTE, Attestation,
    compute_round_start, sign_message,
)

from .config import SimConfig
from .net import INF, Mesh, Network, Topology
from .results import Results, compute_proposal
from .state import Holdings
from .syncsim import SyncModel
from .world import GENESIS_MS, KIND_TOPIC, TOPIC_NAMES, Task, World

LAT_BIN_S = 0.001          # latency histograms: 1 ms bins
LAT_BINS = 600_000         # up to 600 s


class Sim:
    (EV_HEARTBEAT, EV_FLUSH, EV_DELIVER, EV_VTICK, EV_SYNC, EV_SYNC_GET, EV_SYNC_LAND, EV_FETCH_LAND,
     EV_CALL) = range(9)

    def __init__(self, cfg: SimConfig, workload):
        self.cfg = cfg.validate()
        n = self.n = cfg.nodes
        self.rng = np.random.Generator(np.random.PCG64(cfg.seed))
        self.prng = random.Random(cfg.seed)
        self.world = World(cfg)
        self.topo = Topology(cfg, self.rng, self.prng)
        self.net = Network(cfg, self.topo, self.rng)
        self.meshes = [Mesh(self.topo) for _ in TOPIC_NAMES]
        self.hold = Holdings(n, settle_lag=cfg.sync_hot_s + 1.0)
        self.results = Results(self.world)
        self.sync = SyncModel(self)
        self.workload = workload
        self.up = np.ones(n, dtype=bool)
        self.up_version = 0
        self.down_at = np.full(n, INF)
        self._churn: dict[int, list[tuple[int, bool]]] = {}
        self._next_down: list[list[float]] = [[] for _ in range(n)]
        self.down_intervals: list[list[tuple[float, float]]] = [[] for _ in range(n)]
        self.dirty: set[int] = set(range(n))
        # publishers: token bucket and queue per node
        self.tokens = np.full(n, float(cfg.publish_burst))
        self.stamp = np.zeros(n)
        self.queue: list[list[int]] = [[] for _ in range(n)]
        self.flush_at = np.full(n, -1.0)
        self.unpublished: set[int] = set()
        # finality: (node, task) -> machine; validators are nodes 0..V-1
        self.V = cfg.validators
        self.fins: dict[tuple[int, int], TaskFinality] = {}
        self.snapshots: dict[tuple[int, int], frozenset] = {}
        self.cert_time: dict[tuple[int, int], float] = {}
        self.tick_phase = self.rng.uniform(0.0, cfg.finality_tick_s, n)
        self._pending_ticks: set[tuple[int, int, float]] = set()
        self.pending_gold: dict[int, list[int]] = {}
        self.parked: dict[tuple[int, int], list[int]] = {}   # (node, task) -> messages waiting for the task
        # figures
        self.heap: list = []
        self.seq = 0
        self.now = 0.0
        self.events = 0
        self.gossip_sent = np.zeros(n)
        self.gossip_recv = np.zeros(n)
        self.bytes_by_kind: dict[str, float] = {k: 0.0 for k in KIND_NAMES.values()}
        self.last_rx = np.full((len(TOPIC_NAMES), n), -INF)
        self.lat_hist = np.zeros(LAT_BINS, dtype=np.int64)
        self._lat_buf: list[np.ndarray] = []
        self.lat_all: list[float] = []          # per message: submission -> last node that stored it by gossip
        self.lat_all_kind: list[int] = []
        self.repair_lat: list[float] = []
        self.repaired_by_kind: dict[str, int] = {k: 0 for k in KIND_NAMES.values()}
        self.pubsub_messages = 0
        self.copies = 0
        self.first_receipts = 0
        self.via_gossip = 0
        self.missed_by_gossip = 0
        self.adopted = 0
        self.precommits: set[int] = set()
        self.pc_rows: dict[int, np.ndarray] = {}    # precommit -> arrival row once settled (observer figures)
        self.pc_late: dict[tuple[int, int], float] = {}
        self.labels = 0
        self.load_end = cfg.duration_s
        self.stopped_at = None
        self.finished = False
        self.wall = {}

    # ------------------------------------------------------------------ plumbing

    def schedule(self, t: float, kind: int, a=None, b=None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))

    def call(self, t: float, fn, arg=None) -> None:
        self.schedule(t, self.EV_CALL, fn, arg)

    def node_ms(self, v: int, t: float) -> int:
        return GENESIS_MS + int(round((t + self.topo.clock_offset[v]) * 1000))

    def sim_time(self, v: int, ms: int) -> float:
        return (ms - GENESIS_MS) / 1000.0 - self.topo.clock_offset[v]

    def up_during(self, v: int, a: float, b: float) -> bool:
        """Was v up for the whole of [a, b] (by the churn plan)?"""
        return not any(d < b and u > a for d, u in self.down_intervals[v])

    def validator_of(self, v: int) -> bytes | None:
        return self.world.validator_pk[v] if v < self.V else None

    # ------------------------------------------------------------------ run

    def run(self) -> "Sim":
        t0 = time.perf_counter()
        with np.errstate(over="ignore"):
            self._plan_churn()
            self.schedule(0.0, self.EV_HEARTBEAT)
            self.workload.start(self)
            handlers = [self._heartbeat, self._flush, self._deliver, self._vtick, self._sync, self._sync_get,
                        self._sync_land, self._fetch_land, self._call]
            end = self.load_end + self.cfg.drain_s
            heap = self.heap
            while heap:
                t, _, kind, a, b = heapq.heappop(heap)
                if t > end or self.finished:
                    break
                self.now = t
                self.events += 1
                handlers[kind](t, a, b)
            self._flush_lat()
            self.stopped_at = self.now
        self.wall["run_s"] = time.perf_counter() - t0
        return self

    def _call(self, t, fn, arg) -> None:
        fn(t, arg)

    # ------------------------------------------------------------------ churn

    def _plan_churn(self) -> None:
        cfg = self.cfg
        if cfg.churn <= 0:
            return
        hb = cfg.heartbeat_s
        mean_down = cfg.churn_down_s
        mean_up = mean_down * (1 - cfg.churn) / cfg.churn
        for v in range(self.n):
            t = self.rng.exponential(mean_up)
            while t < self.load_end:
                d = self.rng.exponential(mean_down)
                t_down = math.ceil(t / hb)
                t_up = math.ceil((t + d) / hb)
                if t_up <= t_down:
                    t_up = t_down + 1
                if t_up * hb >= self.load_end:
                    t_up = math.ceil(self.load_end / hb)    # everyone is back for the drain
                self._churn.setdefault(t_down, []).append((v, False))
                self._churn.setdefault(t_up, []).append((v, True))
                self._next_down[v].append(t_down * hb)
                self.down_intervals[v].append((t_down * hb, t_up * hb))
                t = t_up * hb + self.rng.exponential(mean_up)
        for v in range(self.n):
            if self._next_down[v]:
                self.down_at[v] = self._next_down[v][0]

    def _go_down(self, v: int, t: float) -> None:
        self.up[v] = False
        self.up_version += 1
        for mesh in self.meshes:
            self.dirty.update(mesh.drop_node(v))
        self.queue[v].clear()            # queued envelopes are stored; sync spreads them
        self.sync.fetching[v].clear()
        nd = self._next_down[v]
        if nd and nd[0] <= t:
            nd.pop(0)
        self.down_at[v] = INF

    def _go_up(self, v: int, t: float) -> None:
        self.up[v] = True
        self.up_version += 1
        self.dirty.add(v)
        nd = self._next_down[v]
        self.down_at[v] = nd[0] if nd else INF
        if self.cfg.sync:
            self.sync.connect(v, t)
        if v < self.V:
            for k in range(len(self.world.tasks)):
                self._schedule_tick(v, k, t)
        for k in self.pending_gold.pop(v, []):
            self.reveal_gold(t, k)

    # ------------------------------------------------------------------ heartbeat

    def _heartbeat(self, t: float, _a, _b) -> None:
        cfg = self.cfg
        tick = int(round(t / cfg.heartbeat_s))
        for v, goes_up in self._churn.pop(tick, ()):
            if goes_up and not self.up[v]:
                self._go_up(v, t)
            elif not goes_up and self.up[v]:
                self._go_down(v, t)
        if self.dirty:
            order = sorted(self.dirty)
            self.prng.shuffle(order)
            self.dirty = set()
            for v in order:
                if not self.up[v]:
                    continue
                for mesh in self.meshes:
                    touched = mesh.maintain(v, t, self.up, cfg, self.prng)
                    self.dirty.update(touched)
                    if len(mesh.peers[v]) < cfg.d_low:
                        self.dirty.add(v)
                    ctrl = len(touched) * cfg.ctrl_overhead
                    self.gossip_sent[v] += ctrl
                    for u in touched:
                        self.gossip_recv[u] += cfg.ctrl_overhead
        self.hold.settle(t, keep=self.unpublished, on_settle=self.on_settle)
        self._ihave_overhead(t)
        if cfg.sync:
            self.sync.on_heartbeat(t)
        if t >= self.load_end and self._converged(t):
            self.finished = True
            return
        self.schedule(t + cfg.heartbeat_s, self.EV_HEARTBEAT)

    def on_settle(self, m: int, row: np.ndarray) -> None:
        if m in self.precommits:
            self.pc_rows[m] = row

    def _ihave_overhead(self, t: float) -> None:
        """Per heartbeat, each node with ids in its gossip window sends one IHAVE control
        RPC to each gossip target (the ids themselves are counted per message, in flood)."""
        cfg = self.cfg
        horizon = t - cfg.gossip_window * cfg.heartbeat_s
        for ti, mesh in enumerate(self.meshes):
            active = (self.last_rx[ti] > horizon) & self.up
            if not active.any():
                continue
            _, ge = mesh.arrays(self.up, self.up_version)
            if not len(ge.src):
                continue
            nn = np.bincount(ge.src, minlength=self.n).astype(float)
            count = np.minimum(np.maximum(cfg.d_lazy, np.floor(cfg.gossip_factor * nn)), nn)
            self.gossip_sent += active * count * cfg.ctrl_overhead
            q = np.where(nn > 0, count / np.maximum(nn, 1), 0.0)
            w = (active * q)[ge.src] * cfg.ctrl_overhead
            self.gossip_recv += np.bincount(ge.dst, weights=w, minlength=self.n)

    def _converged(self, t: float) -> bool:
        """After the load: every task past grace and certified by every validator, nothing
        in flight, every node up with the same store."""
        w = self.world
        grace = self.cfg.grace_period_ms / 1000.0
        end = self.load_end + self.cfg.drain_s
        due = [k for k, tk in enumerate(w.tasks) if tk.deadline_s + grace < end]   # others stay open
        if any(t < w.tasks[k].deadline_s + grace + 1.0 for k in due):
            return False
        if self.hold.inflight or self.unpublished or not self.up.all():
            return False
        for k in due:
            for v in range(self.V):
                f = self.fins.get((v, k))
                if f is None or f.certificate is None:
                    return False
        cnt, dig = self.hold.digests(t)
        return bool((cnt == cnt[0]).all() and (dig == dig[0]).all())

    # ------------------------------------------------------------------ publishing

    def submit(self, v: int, signed, task: int, t: float) -> int:
        """Node v takes a message it signed or was given (stored at t) and queues it for gossip."""
        m = len(self.world.msgs)
        row = np.full(self.n, INF)
        row[v] = t
        msg = self.world.register(signed, task, v, t, self.hold.add_message(task, signed.compute_id(self.world.network_id), row))
        assert msg.m == m
        self.world.check(signed, self.node_ms(v, t))
        if msg.kind == KIND_BATCH:
            self.labels += len(signed.body.labels)
        self.unpublished.add(m)
        self.queue[v].append(m)
        if self.flush_at[v] < 0:
            self._refill(v, t)
            at = t if self.tokens[v] >= 1 - 1e-9 else t + max(1e-6, (1 - self.tokens[v]) / self.cfg.publish_rate_per_s)
            self.flush_at[v] = at
            self.schedule(at, self.EV_FLUSH, v)
        return m

    def _refill(self, v: int, t: float) -> None:
        cfg = self.cfg
        self.tokens[v] = min(cfg.publish_burst, self.tokens[v] + (t - self.stamp[v]) * cfg.publish_rate_per_s)
        self.stamp[v] = t

    def _flush(self, t: float, v: int, _b) -> None:
        self.flush_at[v] = -1.0
        q = self.queue[v]
        if not self.up[v]:
            self.unpublished.difference_update(q)
            q.clear()
            return
        if not q:
            return
        msgs = self.world.msgs
        self._refill(v, t)
        by_kind: dict[int, list[int]] = {}
        for m in q:
            by_kind.setdefault(msgs[m].kind, []).append(m)
        runs = []
        for kind in sorted(by_kind):           # task announcements first
            ms = by_kind[kind]
            raws = [msgs[m].raw for m in ms]
            index = {msgs[m].raw: m for m in ms}
            for run in group_envelopes(raws, self.cfg.max_payload_bytes):
                runs.append((kind, [index[r] for r in run], run))
        published: set[int] = set()
        for kind, ms, raws in runs:
            if self.tokens[v] < 1 - 1e-9:
                break
            self.tokens[v] = max(0.0, self.tokens[v] - 1)
            self._publish(v, kind, ms, raws, t)
            published.update(ms)
        self.queue[v] = [m for m in q if m not in published]
        if self.queue[v]:
            at = t + max(1e-6, (1 - self.tokens[v]) / self.cfg.publish_rate_per_s)
            self.flush_at[v] = at
            self.schedule(at, self.EV_FLUSH, v)

    def _publish(self, v: int, kind: int, ms: list[int], raws: list[bytes], t: float) -> None:
        w, hold = self.world, self.hold
        payload = len(payload_of(raws))
        readies = []
        for m in ms:
            msg = w.msgs[m]
            readies.append(np.zeros(self.n) if msg.kind == KIND_TASK else hold.ready_row(w.tasks[msg.task].m))
        ready = readies[0] if len(readies) == 1 else np.maximum.reduce(readies)
        topic = KIND_TOPIC[kind]
        fl = self.net.flood(self.meshes[topic], self.up, self.up_version, v, t, payload, len(ms), ready, self.down_at)
        self.pubsub_messages += 1
        self.gossip_sent += fl.sent_bytes
        self.gossip_recv += fl.recv_bytes
        self.bytes_by_kind[KIND_NAMES[kind]] += float(fl.sent_bytes.sum())
        self.copies += fl.copies
        self.via_gossip += fl.via_gossip
        got = np.isfinite(fl.received)
        self.first_receipts += int(got.sum()) - 1
        self.last_rx[topic] = np.maximum(self.last_rx[topic], np.where(got, fl.received, -INF))
        for m, rdy in zip(ms, readies):
            msg = w.msgs[m]
            self.unpublished.discard(m)
            # a copy that arrives before its task is parked and stored (not forwarded) when the
            # task arrives (node/core/node.py _park_orphan / _adopt_orphans)
            # (stored once validated: a node stores before it forwards)
            took = np.subtract(fl.validated, fl.received, out=np.zeros(self.n), where=np.isfinite(fl.received))
            stored = np.where(rdy <= fl.received, fl.validated,
                              np.where(np.isfinite(fl.received), np.maximum(rdy, fl.received) + took, INF))
            if msg.kind != KIND_TASK:
                for u in np.flatnonzero(np.isfinite(fl.received) & ~np.isfinite(rdy)).tolist():
                    self.parked.setdefault((u, msg.task), []).append(m)
            row = hold.merge_row(m, stored)     # unpublished messages are kept in flight
            lat = row - msg.t_submit
            others = np.isfinite(lat)
            others[msg.origin] = False
            self._lat_buf.append(lat[others])
            self.missed_by_gossip += int((self.up & ~np.isfinite(row)).sum())
            self.lat_all.append(float(lat[others].max()) if others.any() else 0.0)
            self.lat_all_kind.append(msg.kind)
            if msg.kind == KIND_ATTESTATION:
                att = msg.signed.body
                if att.phase == PHASE_PRECOMMIT:
                    self.precommits.add(m)
                targets = range(self.n) if self.cfg.observers == "full" else range(self.V)
                for u in targets:
                    if u != msg.origin and row[u] < INF:
                        self.schedule(float(row[u]), self.EV_DELIVER, u, m)
            elif msg.kind == KIND_TASK and self.V:
                # validators that get the task start ticking it at grace end
                for u in range(self.V):
                    if row[u] < INF:
                        self._schedule_tick(u, msg.task, float(row[u]))
        if len(self._lat_buf) >= 256:
            self._flush_lat()

    def _flush_lat(self) -> None:
        if self._lat_buf:
            lat = np.concatenate(self._lat_buf)
            idx = np.minimum((lat / LAT_BIN_S).astype(np.int64), LAT_BINS - 1)
            self.lat_hist += np.bincount(idx, minlength=LAT_BINS)
            self._lat_buf = []

    # ------------------------------------------------------------------ storing outside gossip

    def store(self, v: int, m: int, t: float, source: str) -> bool:
        """v stores m at t through sync or a fetch; False if it had it."""
        if not self.hold.deliver(m, v, t):
            return False
        msg = self.world.msgs[m]
        self.repaired_by_kind[KIND_NAMES[msg.kind]] += 1
        self.repair_lat.append(t - msg.t_submit)
        if msg.kind == KIND_ATTESTATION:
            if m in self.pc_rows:
                self.pc_late[(m, v)] = t
            if v < self.V or self.cfg.observers == "full":
                self._deliver(t, v, m)
        elif msg.kind == KIND_TASK:
            for p in self.parked.pop((v, msg.task), ()):
                if self.hold.deliver(p, v, t):
                    self._adopted(v, p, t)
            if v < self.V:
                self._schedule_tick(v, msg.task, t)
        return True

    def _adopted(self, v: int, m: int, t: float) -> None:
        msg = self.world.msgs[m]
        self.adopted += 1
        if msg.kind == KIND_ATTESTATION and (v < self.V or self.cfg.observers == "full"):
            if m in self.pc_rows:
                self.pc_late[(m, v)] = t
            self._deliver(t, v, m)

    # ------------------------------------------------------------------ finality

    def machine(self, v: int, k: int) -> TaskFinality:
        f = self.fins.get((v, k))
        if f is None:
            task = self.world.tasks[k]
            f = self.fins[(v, k)] = TaskFinality(task.tid, self.world.validators, self.validator_of(v),
                                                 task.deadline_ms, self.world.params)
        return f

    def _deliver(self, t: float, v: int, m: int) -> None:
        if not self.up[v]:
            return
        msg = self.world.msgs[m]
        f = self.machine(v, msg.task)
        had = f.certificate is not None
        f.on_attestation(msg.signed)
        if not had and f.certificate is not None:
            self._certified(v, msg.task, t)
        if v < self.V and f.certificate is None:
            self._schedule_tick(v, msg.task, t)

    def _certified(self, v: int, k: int, t: float) -> None:
        f = self.fins[(v, k)]
        self.cert_time[(v, k)] = t
        self.results.note_certificate(k, f.certificate, f.certified_batch_ids)

    def _schedule_tick(self, v: int, k: int, t: float) -> None:
        """The next tick of v's finality loop at or after t, not before round 0 starts."""
        cfg = self.cfg
        task = self.world.tasks[k]
        start = self.sim_time(v, task.deadline_ms + cfg.grace_period_ms)
        t = max(t, start)
        ph, step = self.tick_phase[v], cfg.finality_tick_s
        t = ph + math.ceil((t - ph) / step - 1e-9) * step
        key = (v, k, round(t, 6))
        if key in self._pending_ticks:
            return
        self._pending_ticks.add(key)
        self.schedule(t, self.EV_VTICK, v, k)

    def _vtick(self, t: float, v: int, k: int) -> None:
        self._pending_ticks.discard((v, k, round(t, 6)))
        if not self.up[v]:
            return
        w, cfg = self.world, self.cfg
        task = w.tasks[k]
        if not self.hold.holds(task.m, v, t):
            return
        f = self.machine(v, k)
        now_ms = self.node_ms(v, t)
        if now_ms < task.deadline_ms + cfg.grace_period_ms:
            self._schedule_tick(v, k, t)
            return
        if f.certificate is not None:
            self._fetch_missing(v, k, f, t)
            return
        self._fetch_missing(v, k, f, t)
        proposal = self._proposal(v, k, f, t)
        for it in f.on_tick(now_ms, proposal):
            created = max(now_ms, compute_round_start(task.deadline_ms, it.round, w.params))
            att = Attestation(validator=w.validator_pk[v], task_id=task.tid, created_at=created, round=it.round,
                              phase=it.phase, set_root=it.set_root, result_root=it.result_root,
                              batch_ids=it.batch_ids if it.phase == PHASE_PREVOTE else ())
            signed = sign_message(att, w.validator_keys[v], w.network_id)
            self.submit(v, signed, k, t)
            had = f.certificate is not None
            f.on_attestation(signed)           # stored, then fed back (node/services/finality.py)
            if not had and f.certificate is not None:
                self._certified(v, k, t)
        if f.certificate is None:
            # next round boundary the machine cares about: start + T/5, + 2T/5, next round
            T = w.params.round_timeout_ms
            r = max(f.round, 0)
            s = compute_round_start(task.deadline_ms, r, w.params)
            nxt = next(b for b in (s + T // 5, s + 2 * T // 5, s + T) if b > now_ms)
            self._schedule_tick(v, k, self.sim_time(v, nxt))

    def _proposal(self, v: int, k: int, f: TaskFinality, t: float):
        w = self.world
        task = w.tasks[k]
        pin = np.asarray(task.pinnable, dtype=np.int64)
        held = [w.msgs[m].mid for m in pin[self.hold.held_mask(pin, v, t)].tolist()] if len(pin) else []
        snap_ids = self.snapshots.get((v, k))
        if snap_ids is None:
            snap_ids = self.snapshots[(v, k)] = frozenset(held)
        snap = self._reputation_mask(v, k, t)
        return compute_proposal(self.results, k, f, snap_ids, held,
                                lambda i: self.hold.holds(w.by_mid[i], v, t) if i in w.by_mid else False, snap)

    def _reputation_mask(self, v: int, k: int, t: float) -> int:
        """Tasks in k's window that validator v has certified and can reproduce now."""
        window = self.results.window_mask(k)
        mask, x, bits = 0, 0, window
        while bits:
            if bits & 1:
                f = self.fins.get((v, x))
                if f is not None and f.certificate is not None:
                    ids = f.certified_batch_ids
                    if ids is not None and all(self.hold.holds(self.world.by_mid[i], v, t) for i in ids):
                        mask |= 1 << x
            bits >>= 1
            x += 1
        return mask

    def _fetch_missing(self, v: int, k: int, f: TaskFinality, t: float) -> None:
        """node/services/finality.py _fetch_missing: batches a polka, the certificate or the leader
        lists that v lacks are fetched from a peer that holds them."""
        w = self.world
        holds = lambda i: i in w.by_mid and self.hold.holds(w.by_mid[i], v, t)
        want = f.missing_batch_ids(holds)
        if f.round >= 0:
            lv = f.get_leader_value(f.round)
            if lv is not None:
                want |= {i for i in (f.get_batch_ids(lv[0]) or ()) if not holds(i)}
        ms = [w.by_mid[i] for i in sorted(want) if i in w.by_mid and w.by_mid[i] not in self.sync.fetching[v]]
        if not ms:
            return
        for u in self.topo.conns[v]:
            if not self.up[u]:
                continue
            have = [m for m in ms if self.hold.holds(m, u, t)]
            if have:
                self.sync.fetching[v].update(have)
                for when, got in self.sync.get(v, u, have, t):
                    self.schedule(when, self.EV_FETCH_LAND, v, got)
                ms = [m for m in ms if m not in have]
                if not ms:
                    break

    def _fetch_land(self, t: float, v: int, ms: list[int]) -> None:
        self.sync.fetching[v].difference_update(ms)
        if self.up[v]:
            for m in ms:
                self.store(v, m, t, "fetch")

    # ------------------------------------------------------------------ sync events

    def _sync(self, t, ei, catchup) -> None:
        self.sync.run_session(ei, t, catchup)

    def _sync_get(self, t, ei, want) -> None:
        self.sync.run_get(ei, t, want)

    def _sync_land(self, t, ei, arg) -> None:
        ms, last = arg
        self.sync.land(ei, t, ms, last)

    # ------------------------------------------------------------------ gold

    def reveal_gold(self, t: float, k: int) -> None:
        """The requester's node reveals the task's gold at the deadline (or when it is back)."""
        task: Task = self.world.tasks[k]
        if task.gold is None:
            return
        o = task.origin
        if not self.up[o]:
            self.pending_gold.setdefault(o, []).append(k)
            return
        requester = task.requester_index
        signed = self.world.make_gold(task, requester, max(self.node_ms(o, t), task.deadline_ms))
        task.gold = None
        self.submit(o, signed, k, t)
