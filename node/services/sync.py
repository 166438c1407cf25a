"""Anti-entropy sync service: the I/O half of ``protocol/sync.py``.

Serves SUMMARY / RANGE / GET requests from peers over a libp2p request/response
protocol, and pulls from every connected peer: at once when a peer appears,
then every ``interval_s`` — backing off to ``MAX_BACKOFF`` times that from a peer
that had nothing for us —, up to ``MAX_CONCURRENT_SESSIONS`` peers at once (a message
one session is fetching is not asked of another peer meanwhile). A periodic session
waits ``SETTLE_S`` before fetching and leaves *hot* tasks (new messages in the last
``HOT_S``) for later, up to ``MAX_DEFER_S``, so it does not race gossip for messages in
flight. What it fetches goes through ``Node.ingest_many``, exactly like gossip. Bounds: a session with one peer makes at most
``MAX_REQUESTS_PER_SESSION`` requests and recurses at most ``MAX_DEPTH`` levels;
responses are size-limited by the transport and by the decoders. A peer whose
responses are malformed or carry invalid messages collects penalty points (the node's one
penalty policy, node/policy/penalties.py) and is
disconnected (and skipped for ``BAN_S`` seconds) past ``PENALTY_LIMIT``.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

import trio

from protocol import sync as sp
from protocol.errors import DecodeError
from protocol.messages import LEDGER_BUCKET, Outcome

from ..policy.penalties import PenaltyPolicy

log = logging.getLogger("labelmesh.sync")

MAX_DEPTH = 16
MAX_REQUESTS_PER_SESSION = 20_000
REQUEST_TIMEOUT_S = 20.0
# A periodic session waits this long before fetching what a peer holds and we lack, then
# fetches only what is still missing: messages published a moment ago are usually in
# flight through gossip, and fetching them too would double the traffic under load.
# Sessions with a newly connected peer (catch-up) fetch at once.
SETTLE_S = 1.0
# Sessions with different peers run side by side, at most this many at once; a message
# one session is fetching is not fetched again by another.
MAX_CONCURRENT_SESSIONS = 4
# A peer whose session had nothing for us is synced with half as often the next time,
# down to once every MAX_BACKOFF x interval_s; a session that stores anything (gossip lost
# something) or fails, and a reconnect, bring the pace back to interval_s. Under steady
# load with healthy gossip, reconciling sets that differ only by messages in flight was
# the largest CPU cost of a 10-node devnet (p99 propagation 640-720 ms -> 160 ms with
# sync 10x rarer; BENCHMARKS.md).
MAX_BACKOFF = 4
# A periodic session does not reconcile a *hot* task (one that stored a new message in
# the last HOT_S seconds): its difference with a peer is mostly messages still in flight
# through gossip, and reconciling it costs ~1 request per differing range. It is deferred
# for at most MAX_DEFER_S per peer, then reconciled anyway, so a loss is repaired within
# MAX_DEFER_S + interval even under constant load. Catch-up sessions never defer.
HOT_S = 2.0
MAX_DEFER_S = 10.0
PENALTY_LIMIT = 10
BAN_S = 300.0
PENALTIES = PenaltyPolicy(PENALTY_LIMIT, BAN_S)  # the node's one penalty policy, without decay
EMPTY_FP = sp.fingerprint_from_sum(0, 0)


@dataclass
class PeerSyncState:
    last_sync_ms: int = 0
    sessions: int = 0
    fetched: int = 0          # messages we stored thanks to this peer
    served: int = 0           # messages we sent to this peer
    requests: int = 0
    errors: int = 0
    penalty: int = 0          # penalty points (PENALTIES)
    stamp: float = 0.0        # trio time of the last penalty
    lag_tasks: int = 0        # tasks whose fingerprints differed at the last session
    last_error: str = ""
    banned_until: float = 0.0
    interval_s: float = 0.0   # current pace of periodic sessions with this peer (backs off, see run)
    next_due: float = 0.0     # trio time of the next periodic session


@dataclass
class _Budget:
    """What one session may still spend: requests to the peer, and a one-time wait before
    its first fetch (``SETTLE_S`` for periodic sessions, 0 otherwise)."""
    requests: int = MAX_REQUESTS_PER_SESSION
    settle_s: float = 0.0


@dataclass
class SyncService:
    node: object
    interval_s: float = 3.0
    peers: dict = field(default_factory=dict)

    def __post_init__(self):
        self.protocol_id = f"/labelmesh/{self.node.network_id.hex()[:16]}/sync/1"
        self._wake = trio.Event()
        self.running_sessions = 0
        self._in_session: set[str] = set()  # peers with a session running
        self._touched: dict[bytes, float] = {}  # task id -> trio time it last stored a new message
        self._deferred: dict[tuple[str, bytes], float] = {}  # (peer, task) -> first deferral time
        self._fetching: set[bytes] = set()  # message ids some session is fetching right now

    # ------------------------------------------------------------------ server

    async def handle(self, peer_id: str, data: bytes) -> bytes:
        """Answer one sync request. Raises SyncProtocolError on a bad request
        (the transport resets the stream)."""
        req = sp.decode_request(data)
        idx = self.node.task_index
        if req.kind == sp.REQ_SUMMARY:
            tids = idx.task_ids
            start = tids.bisect_right(req.cursor) if req.cursor else 0
            page = list(tids.islice(start, start + req.limit))
            # count 0 for a task settled here from its certified result only (a domain not
            # followed, or pruned): there is nothing to reconcile against this node's set
            full = self.node.holds_in_full
            rows = [(t, *idx.fingerprint(t)) if full(t) else (t, 0, EMPTY_FP) for t in page]
            nxt = page[-1] if start + req.limit < len(tids) and page else None
            return sp.encode_summary_response(rows, nxt)
        if req.kind == sp.REQ_RANGE:
            ids = idx.ids.get(req.task_id)
            return sp.encode_range_response(list(ids) if ids else [], req.lo, req.hi)
        if req.kind == sp.REQ_CERTIFIED:
            return await self._serve_certified(req.ids)
        raws = self.node.store.get_many(list(req.ids))
        out = sp.select_get_response(raws)
        self._state(peer_id).served += len(out)
        return sp.encode_get_response(out)

    async def _serve_certified(self, task_ids) -> bytes:
        """CERTIFIED: (task, certificate, R) of the asked tasks this node can prove -- ones it
        holds in full and certified (result cached or recomputed) and pruned ones (kept) --,
        as many as fit one response."""
        rows, used = [], 0
        budget = sp.MAX_RESPONSE_BYTES - 1024
        for tid in task_ids:
            proof = await self.node.certified_proof(tid)
            if proof is None:
                continue
            size = len(proof[0]) + len(proof[1]) + 64
            if rows and used + size > budget:
                break
            rows.append((tid, *proof))
            used += size
        return sp.encode_certified_response(rows)

    # ------------------------------------------------------------------ client

    def _state(self, peer_id: str) -> PeerSyncState:
        st = self.peers.get(peer_id)
        if st is None:
            st = self.peers[peer_id] = PeerSyncState()
        return st

    def touch(self, task_id: bytes) -> None:
        """The node stored a new message of ``task_id`` (called by Node on every accept)."""
        now = trio.current_time()
        self._touched[task_id] = now
        if len(self._touched) > 10_000:
            self._touched = {t: w for t, w in self._touched.items() if now - w < HOT_S}

    def _defer(self, peer_id: str, task_id: bytes) -> bool:
        """Whether a periodic session should leave this differing task for later (see HOT_S)."""
        now = trio.current_time()
        key = (peer_id, task_id)
        if now - self._touched.get(task_id, -math.inf) >= HOT_S:
            self._deferred.pop(key, None)
            return False
        since = self._deferred.setdefault(key, now)
        if now - since >= MAX_DEFER_S:
            del self._deferred[key]
            return False
        if len(self._deferred) > 100_000:
            self._deferred.clear()
        return True

    def wake(self) -> None:
        self._wake.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.node.p2p.set_request_handler(self.protocol_id, self.handle)
        task_status.started()
        known: set[str] = set()
        limiter = trio.CapacityLimiter(MAX_CONCURRENT_SESSIONS)

        async def session(p: str, settle_s: float) -> None:
            st = self._state(p)
            errors = st.errors
            try:
                async with limiter:
                    stored = await self.sync_with(p, settle_s=settle_s)
                # Back off from a peer that had nothing for us (gossip is doing the job);
                # come back at the base pace as soon as a session repairs something or fails.
                if stored or st.errors != errors:
                    st.interval_s = self.interval_s
                else:
                    st.interval_s = min(self.interval_s * MAX_BACKOFF, max(st.interval_s, self.interval_s) * 2)
                st.next_due = trio.current_time() + st.interval_s * random.uniform(0.8, 1.2)
            finally:
                self._in_session.discard(p)

        async with trio.open_nursery() as sessions:
            while True:
                peers = [p["peer_id"] for p in self.node.p2p.peers()]
                new = [p for p in peers if p not in known]
                known = set(peers)
                # New peers first (catch-up on connect), then everyone in random order; a few
                # sessions at a time and at most one per peer, and the loop never waits for
                # a session to end: one slow or stalled peer holds up nobody else.
                order = new + random.sample([p for p in peers if p not in new], len(peers) - len(new))
                now = trio.current_time()
                for p in order:
                    st = self._state(p)
                    if p in new:
                        st.interval_s, st.next_due = self.interval_s, 0.0  # (re)connected: catch up now
                    if PENALTIES.is_banned(st, now) or p in self._in_session or st.next_due > now:
                        continue
                    self._in_session.add(p)
                    sessions.start_soon(session, p, 0.0 if p in new else SETTLE_S)
                self._wake = trio.Event()
                with trio.move_on_after(min(1.0, self.interval_s) if not new else 0.5):
                    await self._wake.wait()

    async def _req(self, peer_id: str, data: bytes, st: PeerSyncState) -> bytes:
        st.requests += 1
        return await self.node.p2p.request(peer_id, self.protocol_id, data, timeout=REQUEST_TIMEOUT_S)

    async def sync_with(self, peer_id: str, settle_s: float = 0.0) -> int:
        """One pull session with ``peer_id``; returns the number of messages stored.
        ``settle_s``: before the first fetch, wait this long and drop what arrived
        meanwhile (see SETTLE_S)."""
        st = self._state(peer_id)
        st.sessions += 1
        self.running_sessions += 1
        self._in_session.add(peer_id)
        stored = 0
        try:
            budget = _Budget(settle_s=settle_s)
            cursor = b""
            lag = 0
            while True:
                budget.requests -= 1
                rows, nxt = sp.decode_summary_response(
                    await self._req(peer_id, sp.encode_summary_request(cursor, sp.MAX_SUMMARY_TASKS), st))
                for tid, count, fp in rows:
                    if (count, fp) == self.node.task_index.fingerprint(tid) or count == 0:
                        continue
                    if not await self._wants_messages(peer_id, tid, st, budget):
                        continue  # settled here from its certified result (node/core/replica.py)
                    lag += 1
                    if settle_s > 0 and self._defer(peer_id, tid):
                        continue
                    stored += await self._reconcile_task(peer_id, tid, st, budget)
                if nxt is None or not rows or budget.requests <= 0:
                    break
                if nxt <= cursor:
                    raise sp.SyncProtocolError("summary cursor did not advance")
                cursor = nxt
            st.lag_tasks = lag
            st.last_sync_ms = self.node.clock()
        except _Banned as e:
            st.last_error = str(e)
        except sp.SyncProtocolError as e:
            try:
                await self._penalise(peer_id, st, 5, f"protocol: {e}")
            except _Banned as b:
                st.last_error = str(b)
        except Exception as e:  # peer gone, timeout, reset: try again next round
            st.errors += 1
            st.last_error = f"{type(e).__name__}: {e}"
            log.debug("sync with %s failed: %s", peer_id, st.last_error)
            # A timeout may mean a dead link that the transport still counts (a partition hangs
            # TCP connections without closing them): the p2p layer then dials a fresh one.
            await self.node.p2p.on_request_failed(peer_id, e)
        finally:
            self.running_sessions -= 1
            self._in_session.discard(peer_id)
        return stored

    async def _reconcile_task(self, peer_id: str, task_id: bytes, st: PeerSyncState, budget: _Budget) -> int:
        stack = [(b"", None, 0)]
        missing: list[bytes] = []
        stored = 0
        while stack and budget.requests > 0:
            lo, hi, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise sp.SyncProtocolError("range recursion too deep")
            budget.requests -= 1
            mode, payload = sp.decode_range_response(
                await self._req(peer_id, sp.encode_range_request(task_id, lo, hi), st))
            local = self.node.task_index.ids.get(task_id)
            local_list = list(local) if local else []
            if mode == "ids":
                for i in payload:
                    if i < lo or (hi is not None and i >= hi):
                        raise sp.SyncProtocolError("range answer outside the asked range")
                have = set(local_list[slice(*sp.range_slice(local_list, lo, hi))])
                # not what this node declined to store (storage policy): it would decline again
                missing.extend(i for i in payload if i not in have and not self.node.declined(i))
            else:
                prev = lo
                for plo, phi, _, _ in payload:
                    if plo < prev or (hi is not None and (phi is None or phi > hi)) or (phi is not None and phi <= plo):
                        raise sp.SyncProtocolError("split ranges out of order or outside the asked range")
                    prev = phi if phi is not None else prev
                for sub in sp.compare_split(local_list, payload):
                    stack.append((sub[0], sub[1], depth + 1))
            if len(missing) >= sp.MAX_GET_IDS:
                stored += await self._fetch(peer_id, missing, st, budget)
                missing = []
        if missing:
            stored += await self._fetch(peer_id, missing, st, budget)
        return stored

    async def _fetch(self, peer_id: str, ids: list[bytes], st: PeerSyncState, budget: _Budget,
                     source: str = "sync") -> int:
        want = list(dict.fromkeys(ids))
        if budget.settle_s > 0:
            await trio.sleep(budget.settle_s)
            budget.settle_s = 0.0
            want = [i for i in want if not self.node.store.has(i)]
        want = [i for i in want if i not in self._fetching]  # another session brings those
        self._fetching.update(want)
        try:
            return await self._fetch_claimed(peer_id, want, st, budget, source)
        finally:
            self._fetching.difference_update(want)

    async def _fetch_claimed(self, peer_id: str, want: list[bytes], st: PeerSyncState, budget: _Budget,
                             source: str) -> int:
        stored = 0
        while want and budget.requests > 0:
            chunk = want[: sp.MAX_GET_IDS]
            budget.requests -= 1
            raws = sp.decode_get_response(
                await self._req(peer_id, sp.encode_get_request(chunk), st), self.node.params.max_message_bytes)
            if not raws:
                break
            results = await self.node.ingest_many(raws, source)
            got = set()
            accepted = bad = 0
            for v, mid in results:
                if mid is not None:
                    got.add(mid)
                if v.outcome is Outcome.ACCEPT:
                    accepted += 1
                elif v.outcome is Outcome.REJECT:
                    bad += 1
            stored += accepted
            st.fetched += accepted
            if bad:
                await self._penalise(peer_id, st, bad, f"{bad} invalid messages in a sync response")
            unasked = got - set(chunk)
            if unasked:
                await self._penalise(peer_id, st, 1, "sent messages we did not ask for")
            progressed = [i for i in chunk if i in got]
            if not progressed:
                break
            want = [i for i in want if i not in got]
        return stored

    async def _wants_messages(self, peer_id: str, task_id: bytes, st: PeerSyncState, budget: _Budget) -> bool:
        """Whether to reconcile a differing task's messages with a peer. A node that does
        not hold every task in full first fetches an unknown task's announcement alone
        (GET by its id), then reconciles only tasks it holds in full."""
        node = self.node
        if node.replica.archive or task_id == LEDGER_BUCKET:
            return True
        if task_id not in node.tasks:
            await self._fetch(peer_id, [task_id], st, budget)
            if task_id not in node.tasks:
                return False
        return node.holds_in_full(task_id)

    def _unbanned_peers(self, shuffled: bool = False) -> list[str]:
        """Connected peers not banned now (in random order if ``shuffled``)."""
        now = trio.current_time()
        peers = [p["peer_id"] for p in self.node.p2p.peers() if not PENALTIES.is_banned(self._state(p["peer_id"]), now)]
        if shuffled:
            random.shuffle(peers)
        return peers

    async def fetch_certified(self, task_ids: list[bytes]) -> int:
        """Ask connected peers for the certificate and result of ``task_ids`` (CERTIFIED)
        and keep each that verifies (``Node.accept_certified``); a peer that sends one that
        does not verify is penalised. Returns how many tasks were settled."""
        want = list(dict.fromkeys(task_ids))
        settled = 0
        for p in self._unbanned_peers(shuffled=True):
            if not want:
                break
            st = self._state(p)
            try:
                for k in range(0, len(want), sp.MAX_CERTIFIED_TASKS):
                    chunk = want[k:k + sp.MAX_CERTIFIED_TASKS]
                    rows = sp.decode_certified_response(
                        await self._req(p, sp.encode_certified_request(chunk), st))
                    asked = set(chunk)
                    for tid, cert, res in rows:
                        if tid not in asked:
                            await self._penalise(p, st, 1, "sent a certified result we did not ask for")
                            continue
                        try:
                            if await self.node.accept_certified(tid, cert, res):
                                settled += 1
                                st.fetched += 1
                        except DecodeError as e:
                            await self._penalise(p, st, 5, f"certified result of {tid.hex()[:16]} does not verify: {e}")
            except _Banned:
                continue
            except sp.SyncProtocolError as e:
                try:
                    await self._penalise(p, st, 5, f"protocol: {e}")
                except _Banned:
                    pass
            except Exception as e:  # peer gone, timeout, or a peer that does not serve CERTIFIED
                st.errors += 1
                st.last_error = f"{type(e).__name__}: {e}"
            want = [t for t in want if t not in self.node.settlements]
        return settled

    async def fetch_ids(self, ids: list[bytes]) -> int:
        """Fetch specific messages (e.g. batches a certificate pins) from connected peers."""
        stored = 0
        want = [i for i in ids if not self.node.store.has(i)]
        for p in self._unbanned_peers():
            if not want:
                break
            st = self._state(p)
            try:
                # "pinned": ids named by attestations/certificates, stored even when the keep
                # rule finds them redundant (node/core/node.py STORED_ANYWAY_SOURCES), so
                # finality can check and reproduce the sets it votes on.
                stored += await self._fetch(p, want, st, _Budget(), source="pinned")
            except _Banned:
                continue
            except Exception as e:
                st.errors += 1
                st.last_error = f"{type(e).__name__}: {e}"
            want = [i for i in want if not self.node.store.has(i)]
        return stored

    async def _penalise(self, peer_id: str, st: PeerSyncState, points: int, why: str) -> None:
        now = trio.current_time()
        PENALTIES.penalise(st, points, now)
        st.errors += 1
        st.last_error = why
        log.warning("sync peer %s misbehaved: %s (penalty %d)", peer_id, why, st.penalty)
        if PENALTIES.is_banned(st, now):
            try:
                await self.node.p2p.disconnect(peer_id)
            except Exception:
                pass
            raise _Banned(f"peer {peer_id} banned for {BAN_S:.0f} s after repeated misbehaviour")

    def status(self) -> dict:
        now = self.node.clock()
        return {"protocol": self.protocol_id, "interval_s": self.interval_s, "peers": [
            {"peer_id": p, "last_sync_ms": s.last_sync_ms,
             "last_sync_age_s": (now - s.last_sync_ms) / 1000 if s.last_sync_ms else None,
             "sessions": s.sessions, "fetched": s.fetched, "served": s.served, "requests": s.requests,
             "errors": s.errors, "penalty": s.penalty, "lag_tasks": s.lag_tasks, "last_error": s.last_error,
             "banned": PENALTIES.is_banned(s, trio.current_time())}
            for p, s in sorted(self.peers.items())]}


class _Banned(Exception):
    """Raised inside a session to stop it once the peer is banned."""
