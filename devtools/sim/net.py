"""The network model: who is connected, GossipSub meshes, and how one gossip message floods.

How it works
------------
*Links.* Each node has an egress delay ``delay[v]`` (what ``tc netem delay`` on its
interface adds), so a packet from u to v takes ``delay[u]`` (+ jitter) and a pair's RTT is
``delay[u] + delay[v]``. A message of ``b`` wire bytes also waits ``b / bandwidth`` per copy
already queued on the sender's uplink. Packet loss does not drop messages (libp2p runs on
TCP): a message one of whose packets is lost arrives one RTT + ``rto_min_ms`` later.
``drop`` is the other kind of loss, a copy py-libp2p itself throws away (a full peer
queue): it never arrives, and IHAVE/IWANT or sync must repair it.

*Connections* are a static graph (who dialed whom); a connection is live while both ends
are up. *Meshes*, one per topic as in GossipSub, are symmetric subsets of the live
connections kept between ``d_low`` and ``d_high`` (target ``d``) by heartbeat maintenance
(graft random non-mesh peers, prune random extra ones with a backoff); they change only at
heartbeats, which is what makes the flood below exact within a heartbeat.

*A flood* (``Network.flood``) is the cascade of one pubsub message, computed at once as a
shortest-arrival problem on the mesh (vectorized label-correcting iterations with numpy):
a node that stores the message at ``A[v]`` forwards it at ``A[v] + processing`` to every
mesh peer except the one it came from and the origin, unless that peer's IDONTWANT came
first; copies to a node that is down by then are lost. Then the IHAVE/IWANT pass: at each of
the next ``gossip_window`` heartbeats (per-node phase) a node advertises the id to
``max(d_lazy, gossip_factor * non-mesh peers)`` random non-mesh peers; a peer that does not
hold the message when the IHAVE arrives asks for it (IWANT) and gets it one round trip
later. Improvements are fed back into the mesh iteration until nothing changes. Every copy,
duplicate, IHAVE id, IWANT and IDONTWANT is counted in bytes per node. One flood is ~1 ms
of numpy for 1,000 nodes, whatever the number of copies.

Messages of one flood do not interact with other floods (no queueing across messages beyond
the per-copy serialization); docs/scaling.md discusses what that leaves out.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .config import SimConfig

INF = math.inf


class Topology:
    """Static connection graph, link delays, clock offsets, heartbeat phases."""

    def __init__(self, cfg: SimConfig, rng: np.random.Generator, prng: random.Random):
        n = self.n = cfg.nodes
        self.cfg = cfg
        self.delay = rng.uniform(cfg.delay_min_ms, cfg.delay_max_ms, n) / 1000.0
        if cfg.delays_ms:
            self.delay = np.asarray(cfg.delays_ms, dtype=float) / 1000.0
        self.clock_offset = rng.uniform(-cfg.clock_offset_ms, cfg.clock_offset_ms, n) / 1000.0
        self.hb_phase = rng.uniform(0.0, cfg.heartbeat_s, n)
        self.bytes_per_s = cfg.bandwidth_mbit * 1e6 / 8 if cfg.bandwidth_mbit > 0 else INF
        conns: list[set[int]] = [set() for _ in range(n)]
        if cfg.topology == "devnet":
            # scripts/devnet: node i bootstraps from node 0 and the two nodes started before it
            for i in range(1, n):
                for j in [0] + [j for j in range(1, i)][-2:]:
                    conns[i].add(j)
                    conns[j].add(i)
        else:
            k = min(cfg.peers, n - 1)
            for v in range(n):
                for u in prng.sample(range(n - 1), k):
                    u = u if u < v else u + 1
                    conns[v].add(u)
                    conns[u].add(v)
        self.conns = [sorted(c) for c in conns]
        # directed connection edges (src -> dst), sorted by dst: the flood's reduceat groups
        src, dst = [], []
        for v in range(n):
            for u in self.conns[v]:
                src.append(u)
                dst.append(v)
        self.csrc = np.array(src, dtype=np.int64)
        self.cdst = np.array(dst, dtype=np.int64)
        self.edge_of = {(s, d): e for e, (s, d) in enumerate(zip(src, dst))}

    def rtt(self, u: int, v: int) -> float:
        return float(self.delay[u] + self.delay[v])

    def wire_bytes(self, payload: int) -> int:
        """Bytes on the link for one pubsub message copy carrying ``payload`` bytes."""
        b = payload + self.cfg.msg_overhead
        return b + math.ceil(b / self.cfg.mtu_payload) * self.cfg.packet_overhead

    def transfer_s(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_s if self.bytes_per_s != INF else 0.0


@dataclass
class _Edges:
    src: np.ndarray
    dst: np.ndarray
    rank: np.ndarray        # position of the edge among its source's out-edges (uplink queue order)
    order: np.ndarray       # edge indices sorted by source
    ptr: np.ndarray         # order[ptr[v]:ptr[v+1]] are v's out-edges
    out_deg: np.ndarray     # out-edges per node

    def out_edges(self, nodes: np.ndarray) -> np.ndarray:
        """Indices of every out-edge of ``nodes``."""
        lo, hi = self.ptr[nodes], self.ptr[nodes + 1]
        cnt = hi - lo
        total = int(cnt.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        offs = np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(total)
        return self.order[offs]


def _edges(src: np.ndarray, dst: np.ndarray, n: int) -> _Edges:
    order = np.argsort(src, kind="stable")
    out_deg = np.bincount(src, minlength=n)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(out_deg, out=ptr[1:])
    rank = np.empty(len(src), dtype=np.int64)
    rank[order] = np.arange(len(src)) - np.repeat(ptr[:-1], out_deg)
    return _Edges(src, dst, rank, order, ptr, out_deg)


class Mesh:
    """The GossipSub mesh of one topic: symmetric peer sets plus a flag per directed
    connection edge (so the flood's edge arrays are a boolean selection, not a rebuild)."""

    def __init__(self, topo: Topology):
        self.topo = topo
        self.peers: list[set[int]] = [set() for _ in range(topo.n)]
        self.flag = np.zeros(len(topo.csrc), dtype=bool)
        self.backoff: dict[tuple[int, int], float] = {}
        self.version = 0
        self._cache_key = None
        self._mesh: _Edges | None = None
        self._gossip: _Edges | None = None

    def link(self, a: int, b: int) -> None:
        self.peers[a].add(b)
        self.peers[b].add(a)
        eo = self.topo.edge_of
        self.flag[eo[(a, b)]] = True
        self.flag[eo[(b, a)]] = True
        self.version += 1

    def unlink(self, a: int, b: int) -> None:
        self.peers[a].discard(b)
        self.peers[b].discard(a)
        eo = self.topo.edge_of
        self.flag[eo[(a, b)]] = False
        self.flag[eo[(b, a)]] = False
        self.version += 1

    def drop_node(self, v: int) -> list[int]:
        """``v`` went down: its mesh peers lose it (returns them, to re-graft)."""
        lost = sorted(self.peers[v])
        for u in lost:
            self.unlink(v, u)
        return lost

    def maintain(self, v: int, now: float, up: np.ndarray, cfg: SimConfig, prng: random.Random) -> list[int]:
        """One heartbeat of mesh maintenance at ``v``; returns peers whose mesh changed."""
        mine = self.peers[v]
        touched = []
        if len(mine) < cfg.d_low:
            cand = [u for u in self.topo.conns[v] if up[u] and u not in mine
                    and self.backoff.get((v, u), -INF) <= now and self.backoff.get((u, v), -INF) <= now]
            for u in prng.sample(cand, min(cfg.d - len(mine), len(cand))):
                self.link(v, u)         # GRAFT; the peer accepts (it prunes later if over d_high)
                touched.append(u)
        elif len(mine) > cfg.d_high:
            for u in prng.sample(sorted(mine), len(mine) - cfg.d):
                self.unlink(v, u)       # PRUNE with backoff both ways
                self.backoff[(v, u)] = self.backoff[(u, v)] = now + cfg.prune_backoff_s
                touched.append(u)
        return touched

    def arrays(self, up: np.ndarray, up_version: int) -> tuple[_Edges, _Edges]:
        """(mesh edges, gossip edges = live connections outside the mesh), cached."""
        key = (self.version, up_version)
        if key != self._cache_key:
            t = self.topo
            m = np.flatnonzero(self.flag)
            self._mesh = _edges(t.csrc[m], t.cdst[m], t.n)
            g = np.flatnonzero(~self.flag & up[t.csrc] & up[t.cdst])
            self._gossip = _edges(t.csrc[g], t.cdst[g], t.n)
            self._cache_key = key
        return self._mesh, self._gossip


@dataclass
class Flood:
    """Outcome of one pubsub message: ``received[v]`` is when node v first received it (inf:
    never by gossip; whether v could store it is the caller's ``ready`` test), plus what it cost."""

    received: np.ndarray
    validated: np.ndarray       # when each receiver had validated (and stored) it: received + processing
    via_gossip: int             # nodes whose first copy came by IHAVE/IWANT, not the mesh
    copies: int                 # message copies received by all nodes (first + duplicates)
    sent_bytes: np.ndarray      # per node, this message's gossip bytes
    recv_bytes: np.ndarray


class Network:
    def __init__(self, cfg: SimConfig, topo: Topology, rng: np.random.Generator):
        self.cfg = cfg
        self.topo = topo
        self.rng = rng
        self.n = topo.n

    def flood(self, mesh: Mesh, up: np.ndarray, up_version: int, pub: int, t0: float, payload: int,
              n_env: int, ready: np.ndarray, down_at: np.ndarray) -> Flood:
        """Flood one pubsub message of ``payload`` bytes carrying ``n_env`` envelopes,
        published by ``pub`` at ``t0``. ``ready[v]``: from when v can validate it (the
        time it holds the message's task; inf = never, 0 = already); ``down_at[v]``: when
        v next goes down (inf = not in this run)."""
        cfg, topo, rng, n = self.cfg, self.topo, self.rng, self.n
        me, ge = mesh.arrays(up, up_version)
        delay = topo.delay
        wire = topo.wire_bytes(payload)
        packets = math.ceil((payload + cfg.msg_overhead) / cfg.mtu_payload)
        ser = topo.transfer_s(wire)
        p_retx = 1.0 - (1.0 - cfg.loss) ** packets
        retx = cfg.rto_min_ms / 1000.0
        proc = (cfg.hop_ms / 1000.0) * np.exp(cfg.hop_sigma * rng.standard_normal(n)) \
            + n_env * cfg.per_envelope_ms / 1000.0

        def link_latency(src, dst, rank):
            k = len(src)
            lat = delay[src] + ser * (rank + 1)
            if cfg.jitter_ms > 0:
                lat = np.maximum(lat + rng.normal(0.0, cfg.jitter_ms / 1000.0, k), 0.0)
            if p_retx > 0:
                lat = lat + (rng.random(k) < p_retx) * (delay[src] + delay[dst] + retx)
            return lat

        E, G = len(me.src), len(ge.src)
        lat = link_latency(me.src, me.dst, me.rank)
        lost = rng.random(E) < cfg.drop if cfg.drop > 0 else np.zeros(E, dtype=bool)
        lat[lost] = INF
        A = np.full(n, INF)
        F = np.full(n, INF)
        A[pub] = t0
        F[pub] = t0
        hb, phase, window = cfg.heartbeat_s, topo.hb_phase, cfg.gossip_window
        if G and window:
            # IHAVE targets per heartbeat: max(d_lazy, gossip_factor x non-mesh peers), at most all
            nn = ge.out_deg.astype(float)
            count = np.minimum(np.maximum(cfg.d_lazy, np.floor(cfg.gossip_factor * nn)), nn)
            q = count / np.maximum(nn, 1.0)
            chosen = rng.random((window, G)) < q[ge.src]
            g_lat = np.full(G, np.nan)       # latency of an IWANTed copy, drawn when first needed

        def update(idx, val):
            A[idx] = val
            f = val + proc[idx]
            F[idx] = np.where((ready[idx] <= val) & (f < down_at[idx]), f, INF)

        def gossip_candidates():
            """(edges, candidate arrival) of IWANTed copies: edges whose dst may not hold the
            message when the source's first IHAVE arrives."""
            holds = np.isfinite(F[ge.src])
            base = phase[ge.src] + hb * np.floor((A[ge.src] - phase[ge.src]) / hb)
            sel = np.flatnonzero(holds & (base + hb + delay[ge.src] < A[ge.dst]))
            if not sel.size:
                return sel, None, None
            need = sel[np.isnan(g_lat[sel])]
            if need.size:
                g_lat[need] = link_latency(ge.src[need], ge.dst[need], np.zeros(need.size, dtype=np.int64))
            src, dst, b = ge.src[sel], ge.dst[sel], base[sel]
            cand = np.full(sel.size, INF)
            wants = []
            for j in range(window):
                t_hb = b + hb * (j + 1)
                ihave_at = t_hb + delay[src]
                want = chosen[j, sel] & (t_hb < down_at[src]) & (ihave_at < A[dst]) & (ihave_at < down_at[dst])
                wants.append(want)
                cand = np.minimum(cand, np.where(want, ihave_at + delay[dst] + g_lat[sel], INF))
            return sel, cand, wants

        frontier = np.array([pub], dtype=np.int64)
        while True:
            while frontier.size:             # label-correcting relaxation from what just changed
                e = me.out_edges(frontier)
                if not e.size:
                    break
                d = me.dst[e]
                cand = F[me.src[e]] + lat[e]
                ok = cand < np.minimum(A[d], down_at[d])
                if not ok.any():
                    break
                d, cand = d[ok], cand[ok]
                best = np.full(n, INF)
                np.minimum.at(best, d, cand)
                frontier = np.unique(d)
                update(frontier, best[frontier])
            if not (G and window):
                break
            sel, cand, _ = gossip_candidates()
            if not sel.size:
                break
            d = ge.dst[sel]
            ok = cand < np.minimum(A[d], down_at[d])
            if not ok.any():
                break
            best = np.full(n, INF)
            np.minimum.at(best, d[ok], cand[ok])
            frontier = np.unique(d[ok])
            update(frontier, best[frontier])

        forwarding = np.isfinite(F)

        # ---- accounting: who sent what to whom ----
        sent = np.zeros(n)
        recv = np.zeros(n)
        copies = 0
        via_gossip = 0
        parent = np.full(n, -1, dtype=np.int64)
        if E:
            cand = F[me.src] + lat
            hit = np.isfinite(cand) & (cand == A[me.dst])
            parent[me.dst[hit]] = me.src[hit]
            send_at = F[me.src] + ser * me.rank
            is_sent = forwarding[me.src] & (me.dst != parent[me.src]) & (me.dst != pub)
            if cfg.idontwant:
                # the peer's IDONTWANT (sent when it validated the message) got here first
                is_sent &= ~(F[me.dst] + delay[me.dst] < send_at)
            got = is_sent & ~lost & (F[me.src] + lat < down_at[me.dst])
            sent += np.bincount(me.src[is_sent], minlength=n) * wire
            recv += np.bincount(me.dst[got], minlength=n) * wire
            copies += int(got.sum())
            if cfg.idontwant:
                # every node that validated it tells its mesh peers (py-libp2p: one RPC per peer)
                idw = cfg.ctrl_overhead + cfg.ihave_id_bytes
                told = forwarding[me.dst]
                sent += np.bincount(me.dst[told], minlength=n) * idw
                recv += np.bincount(me.src[told], minlength=n) * idw
        if G and window:
            # IHAVE: every heartbeat of the window, `count` targets get the id (expected
            # receipts per peer: q per heartbeat)
            base_all = phase + hb * np.floor((A - phase) / hb)
            alive_hb = sum(((base_all + hb * (j + 1)) < down_at) for j in range(window)) * forwarding
            sent += alive_hb * count * cfg.ihave_id_bytes
            recv += np.bincount(ge.dst, weights=(alive_hb * q)[ge.src], minlength=n) * cfg.ihave_id_bytes
            sel, cand, wants = gossip_candidates()
            if sel.size:
                src, dst = ge.src[sel], ge.dst[sel]
                ghit = np.isfinite(cand) & (cand == A[dst]) & (parent[dst] < 0)
                via_gossip = int(np.unique(dst[ghit]).size)
                req = cfg.ctrl_overhead + cfg.ihave_id_bytes
                for want in wants:
                    sent += np.bincount(dst[want], minlength=n) * req + np.bincount(src[want], minlength=n) * wire
                    recv += np.bincount(src[want], minlength=n) * req + np.bincount(dst[want], minlength=n) * wire
                    copies += int(want.sum())
        return Flood(received=A, validated=A + proc, via_gossip=via_gossip, copies=copies, sent_bytes=sent, recv_bytes=recv)
