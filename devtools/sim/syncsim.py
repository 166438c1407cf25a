"""Anti-entropy sync sessions between simulated nodes, with ``protocol.sync``'s own frames.

How it works
------------
Every live connection is synced in both directions on the reference node's schedule
(``node/services/sync.py``): a session every ``sync_interval_s`` per peer, backing off x2 up to
``sync_backoff`` times that while sessions find nothing; at once (no settle wait, no
deferral) when a peer connects. A periodic session leaves *hot* tasks (a new message in
the last ``sync_hot_s``) for later, at most ``sync_max_defer_s``, and waits
``sync_settle_s`` before fetching what is still missing.

Cost: at each heartbeat, the sessions due within it are checked in bulk: when puller and
responder have equal store digests (count and id digest, ``state.Holdings``), a session
would find every SUMMARY row equal — it is counted (requests, bytes, backoff) without
being simulated message by message. Every other session is simulated at its due time:
SUMMARY rows are compared by per-task digest, and each differing task is reconciled with
the real protocol functions on the real 32-byte ids — ``encode_range_request``,
``encode_range_response`` (the responder's answer over its sorted ids: ids, or 16
fingerprinted splits), ``decode_range_response`` and ``compare_split`` (the puller's
recursion), ``encode_get_request`` / ``select_get_response`` / ``encode_get_response``
— so requests, bytes and what is fetched are what the protocol would exchange.
Fetched messages land one round trip (plus transfer) after the GET.
"""
from __future__ import annotations

import math

import numpy as np

from protocol import sync as sp

from .config import SimConfig


def summary_response_bytes(counts) -> int:
    """Size of one ``encode_summary_response`` page listing tasks with these message counts
    (``[[[task_id bin32, count, fp bin16], ...], next_cursor nil]``); checked against the
    encoder in tests/test_sim.py."""
    return int(summary_costs(np.asarray(counts, dtype=np.int64)[None, :])[2][0])


def summary_costs(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``counts`` (a responder's message count per task, 0 = task not held):
    (requests, request bytes, response bytes) of paging through its SUMMARY."""
    c = np.asarray(counts)
    held = c > 0
    rows = held.sum(axis=1)
    int_bytes = np.where(c < 128, 1, np.where(c < 256, 2, np.where(c < 65536, 3, 5)))
    row_bytes = ((1 + 34 + 18 + int_bytes) * held).sum(axis=1)
    pages = np.maximum(1, -(-rows // sp.MAX_SUMMARY_TASKS))
    last = rows - (pages - 1) * sp.MAX_SUMMARY_TASKS
    # per page: outer fixarray + rows array header + cursor (nil on the last page, bin32 before)
    headers = (pages - 1) * (1 + 3 + 34) + 1 + np.where(last < 16, 1, 3) + 1
    first = len(sp.encode_summary_request(b"", sp.MAX_SUMMARY_TASKS))
    more = len(sp.encode_summary_request(bytes(32), sp.MAX_SUMMARY_TASKS))
    req = first + (pages - 1) * more
    return pages, req, row_bytes + headers


def reconcile(task_id: bytes, theirs: list[bytes], ours: list[bytes]) -> tuple[list[bytes], int, int, int]:
    """The puller's side of one task's reconciliation (node/services/sync.py ``_reconcile_task``)
    against a responder holding ``theirs``: (ids to fetch, requests, request bytes,
    response bytes). Both lists are sorted."""
    stack = [(b"", None, 0)]
    missing: list[bytes] = []
    requests = req_bytes = resp_bytes = 0
    while stack:
        lo, hi, depth = stack.pop()
        if depth > 16:
            raise sp.SyncProtocolError("range recursion too deep")
        req = sp.encode_range_request(task_id, lo, hi)
        resp = sp.encode_range_response(theirs, lo, hi)
        requests += 1
        req_bytes += len(req)
        resp_bytes += len(resp)
        mode, payload = sp.decode_range_response(resp)
        if mode == "ids":
            a, b = sp.range_slice(ours, lo, hi)
            have = set(ours[a:b])
            missing.extend(i for i in payload if i not in have)
        else:
            for sub in sp.compare_split(ours, payload):
                stack.append((sub[0], sub[1], depth + 1))
    return missing, requests, req_bytes, resp_bytes


class SyncModel:
    """Schedules and runs sync sessions; the engine supplies state and delivery."""

    def __init__(self, engine):
        self.e = engine
        cfg: SimConfig = engine.cfg
        self.cfg = cfg
        topo = engine.topo
        # one puller state per directed connection: puller = cdst, responder = csrc
        self.puller = topo.cdst
        self.responder = topo.csrc
        ne = len(self.puller)
        rng = engine.rng
        self.interval = np.full(ne, cfg.sync_interval_s)
        self.next_due = rng.uniform(0.0, cfg.sync_interval_s, ne)
        self.busy = np.zeros(ne, dtype=bool)
        self.deferred: dict[tuple[int, int, int], float] = {}
        self.fetching: list[set[int]] = [set() for _ in range(cfg.nodes)]
        # figures
        self.sessions = 0
        self.sessions_idle = 0
        self.sessions_deferred = 0
        self.requests = 0
        self.repaired = 0
        self.sent = np.zeros(cfg.nodes)     # bytes, per node
        self.recv = np.zeros(cfg.nodes)

    # ------------------------------------------------------------------ scheduling

    def _done(self, e: int, t: float, stored: bool) -> None:
        cfg = self.cfg
        self.busy[e] = False
        if stored:
            self.interval[e] = cfg.sync_interval_s
        else:
            self.interval[e] = min(cfg.sync_interval_s * cfg.sync_backoff,
                                   max(self.interval[e], cfg.sync_interval_s) * 2)
        self.next_due[e] = t + self.interval[e] * self.e.prng.uniform(0.8, 1.2)

    def on_heartbeat(self, t: float) -> None:
        """Handle every session due before the next heartbeat."""
        e = self.e
        up = e.up
        due = (self.next_due < t + self.cfg.heartbeat_s) & ~self.busy & up[self.puller] & up[self.responder]
        idx = np.flatnonzero(due)
        if not len(idx):
            return
        cnt, dig = e.hold.digests(t)
        p, r = self.puller[idx], self.responder[idx]
        same = (cnt[p] == cnt[r]) & (dig[p] == dig[r])
        idle = idx[same]
        if len(idle):
            # every SUMMARY row equal: the SUMMARY pages, nothing else (a responder's counts
            # are its settled ones: a message still in flight changes a count, not the size)
            pages, req_b, resp_b = summary_costs(e.hold.tcnt[:, :e.hold.ntasks])
            pu, re = self.puller[idle], self.responder[idle]
            n = self.cfg.nodes
            ov = self.cfg.stream_overhead * pages[re]
            q, a = req_b[re] + ov, resp_b[re] + ov
            self.sent += np.bincount(pu, q, minlength=n) + np.bincount(re, a, minlength=n)
            self.recv += np.bincount(re, q, minlength=n) + np.bincount(pu, a, minlength=n)
            self.requests += int(pages[re].sum())
            self.sessions += len(idle)
            self.sessions_idle += len(idle)
            cfg = self.cfg
            iv = np.minimum(cfg.sync_interval_s * cfg.sync_backoff,
                            np.maximum(self.interval[idle], cfg.sync_interval_s) * 2)
            self.interval[idle] = iv
            start = np.maximum(t, self.next_due[idle]) + (e.topo.delay[pu] + e.topo.delay[re]) * pages[re]
            self.next_due[idle] = start + iv * e.rng.uniform(0.8, 1.2, len(idle))
        for ei in idx[~same].tolist():
            self.busy[ei] = True
            e.schedule(max(t, float(self.next_due[ei])), e.EV_SYNC, ei, False)

    def connect(self, v: int, t: float) -> None:
        """``v`` came up: catch-up sessions with every live peer, both ways, at once."""
        e = self.e
        topo = e.topo
        for u in topo.conns[v]:
            if not e.up[u]:
                continue
            for ei in (topo.edge_of[(u, v)], topo.edge_of[(v, u)]):   # v pulls from u; u pulls from v
                self.interval[ei] = self.cfg.sync_interval_s
                if not self.busy[ei]:
                    self.busy[ei] = True
                    e.schedule(t + topo.rtt(u, v), e.EV_SYNC, ei, True)

    # ------------------------------------------------------------------ a session

    def run_session(self, ei: int, t: float, catchup: bool) -> None:
        e, cfg = self.e, self.cfg
        pu, re = int(self.puller[ei]), int(self.responder[ei])
        if not (e.up[pu] and e.up[re]):
            self._done(ei, t, False)
            return
        hold = e.hold
        rtt = e.topo.rtt(pu, re)
        cu, du = hold.task_digests(pu, t)
        cw, dw = hold.task_digests(re, t)
        pages, req_all, resp_all = summary_costs(cw[None, :])
        requests, req_b, resp_b = int(pages[0]), int(req_all[0]), int(resp_all[0])
        differ = np.flatnonzero((cw > 0) & ((cu != cw) | (du != dw)))
        want: list[int] = []
        for k in differ.tolist():
            key = (pu, re, k)
            if not catchup and hold.is_hot(pu, k, t, cfg.sync_hot_s):
                first = self.deferred.setdefault(key, t)
                if t - first < cfg.sync_max_defer_s:
                    self.sessions_deferred += 1
                    continue
            self.deferred.pop(key, None)
            task = e.world.tasks[k]
            ms = np.asarray(task.msgs, dtype=np.int64)
            theirs = sorted(e.world.msgs[m].mid for m in ms[hold.held_mask(ms, re, t)].tolist())
            ours = sorted(e.world.msgs[m].mid for m in ms[hold.held_mask(ms, pu, t)].tolist())
            missing, n, qb, rb = reconcile(task.tid, theirs, ours)
            requests += n
            req_b += qb
            resp_b += rb
            want.extend(e.world.by_mid[i] for i in missing)
        self.sessions += 1
        self._account(pu, re, requests, req_b, resp_b)
        t_end = t + requests * rtt
        if want:
            e.schedule(t_end + (0.0 if catchup else cfg.sync_settle_s), e.EV_SYNC_GET, ei, want)
        else:
            self._done(ei, t_end, False)

    def run_get(self, ei: int, t: float, want: list[int]) -> None:
        e = self.e
        pu, re = int(self.puller[ei]), int(self.responder[ei])
        if not (e.up[pu] and e.up[re]):
            self._done(ei, t, False)
            return
        hold = e.hold
        fetching = self.fetching[pu]
        want = [m for m in dict.fromkeys(want) if not hold.holds(m, pu, t) and m not in fetching]
        if not want:
            self._done(ei, t, False)
            return
        fetching.update(want)
        batches = self.get(pu, re, want, t)
        for j, (when, ms) in enumerate(batches):
            e.schedule(when, e.EV_SYNC_LAND, ei, (ms, j == len(batches) - 1))

    def get(self, pu: int, re: int, want: list[int], t: float) -> list[tuple[float, list[int]]]:
        """GET ``want`` from ``re`` in chunks of MAX_GET_IDS (each answer a prefix that fits
        the response limit; the rest is asked for again): [(landing time, messages)]."""
        e = self.e
        rtt = e.topo.rtt(pu, re)
        msgs = e.world.msgs
        land = t
        out = []
        while want:
            chunk = want[:sp.MAX_GET_IDS]
            got = sp.select_get_response([msgs[m].raw for m in chunk])
            req = sp.encode_get_request([msgs[m].mid for m in chunk])
            resp_len = len(sp.encode_get_response(got))
            self._account(pu, re, 1, len(req), resp_len)
            land += rtt + e.topo.transfer_s(resp_len + self.cfg.stream_overhead)
            out.append((land, chunk[:len(got)]))
            want = want[len(got):]
        return out

    def land(self, ei: int, t: float, ms: list[int], last: bool) -> None:
        e = self.e
        pu = int(self.puller[ei])
        self.fetching[pu].difference_update(ms)
        stored = 0
        if e.up[pu]:
            for m in ms:
                if e.store(pu, m, t, "sync"):
                    stored += 1
        self.repaired += stored
        if last:
            self._done(ei, t, stored > 0)

    def _account(self, pu: int, re: int, requests: int, req_b: int, resp_b: int) -> None:
        ov = self.cfg.stream_overhead * requests
        self.requests += requests
        self.sent[pu] += req_b + ov
        self.recv[re] += req_b + ov
        self.sent[re] += resp_b + ov
        self.recv[pu] += resp_b + ov
