"""What every node holds, for 1,000 nodes and tens of thousands of messages, cheaply.

How it works
------------
A message is an index ``m``; its bytes, id and decoded form are shared by all nodes
(``World.msgs``). A node's store is the set of messages it holds, kept in two forms:

* while a message is *in flight* (its gossip cascade may still reach nodes), a row of
  arrival times (inf = not held) in a slot of one 2-D array: node v holds m at time t iff
  ``row[v] <= t``;
* once every finite arrival is older than ``settle_lag`` seconds, the row is folded into
  a boolean matrix ``held[m, v]`` and into per-(node, task) digests: a count and the sum
  of the ids' low 64 bits (mod 2^64). Those digests are what a sync session compares
  first; two sets with equal digests are equal up to a 2^-64 collision chance (the
  protocol's own fingerprint is the same construction over 256 bits).

Messages fetched by sync are added where they land (``deliver``). Nothing is ever
removed: a node's store is grow-only, as in the protocol (PROTOCOL.md 6.3). A pruning
node would clear ``held`` bits of batch bodies it drops and keep a separate digest of
what it *serves*; a domain-following node simply never receives the other domains'
messages (its meshes and sync filter them), so neither needs a different structure.
"""
from __future__ import annotations

import numpy as np

INF = float("inf")


class Holdings:
    def __init__(self, n: int, settle_lag: float):
        self.n = n
        self.settle_lag = settle_lag
        self._cap = 1024
        self.held = np.zeros((self._cap, n), dtype=bool)
        # in-flight rows: slot -> arrival times; message <-> slot
        self._scap = 256
        self._rows = np.full((self._scap, n), INF)
        self._slot_msg = np.full(self._scap, -1, dtype=np.int64)
        self._free = list(range(self._scap - 1, -1, -1))
        self.slot_of: dict[int, int] = {}
        self._active_cache = None        # (slots, msgs, tasks, low64) of the messages in flight
        self.inflight_of_task: dict[int, set[int]] = {}
        self.msg_task: list[int] = []
        self.low64: list[np.uint64] = []
        self._tcap = 64
        self.tcnt = np.zeros((n, self._tcap), dtype=np.int64)
        self.tdig = np.zeros((n, self._tcap), dtype=np.uint64)
        self.cnt = np.zeros(n, dtype=np.int64)
        self.dig = np.zeros(n, dtype=np.uint64)
        self.ntasks = 0
        # (node, task) -> time it last stored a message of the task outside gossip (hot check)
        self.last_sync_store: dict[tuple[int, int], float] = {}

    # ------------------------------------------------------------------ growth

    def add_task(self) -> int:
        k = self.ntasks
        if k >= self._tcap:
            self._tcap *= 2
            for name in ("tcnt", "tdig"):
                old = getattr(self, name)
                new = np.zeros((self.n, self._tcap), dtype=old.dtype)
                new[:, :old.shape[1]] = old
                setattr(self, name, new)
        self.ntasks += 1
        return k

    def add_message(self, task: int, mid: bytes, row: np.ndarray) -> int:
        """Register a new message of ``task`` whose arrival times so far are ``row``."""
        m = len(self.msg_task)
        if m >= self._cap:
            self._cap *= 2
            new = np.zeros((self._cap, self.n), dtype=bool)
            new[:m] = self.held[:m]
            self.held = new
        self.msg_task.append(task)
        self.low64.append(np.uint64(int.from_bytes(mid[-8:], "big")))
        if not self._free:
            old = self._scap
            self._scap *= 2
            rows = np.full((self._scap, self.n), INF)
            rows[:old] = self._rows
            self._rows = rows
            sm = np.full(self._scap, -1, dtype=np.int64)
            sm[:old] = self._slot_msg
            self._slot_msg = sm
            self._free = list(range(self._scap - 1, old - 1, -1))
        s = self._free.pop()
        self._rows[s] = row
        self._slot_msg[s] = m
        self.slot_of[m] = s
        self._active_cache = None
        self.inflight_of_task.setdefault(task, set()).add(m)
        return m

    # ------------------------------------------------------------------ queries

    @property
    def inflight(self) -> dict[int, int]:
        """Messages in flight (-> their slot)."""
        return self.slot_of

    def row(self, m: int) -> np.ndarray | None:
        """A copy of m's arrival times while in flight, else None."""
        s = self.slot_of.get(m)
        return None if s is None else self._rows[s].copy()

    def merge_row(self, m: int, arrivals: np.ndarray) -> np.ndarray:
        """Lower m's arrival times to ``arrivals`` where earlier; returns the new row (a copy)."""
        s = self.slot_of[m]
        np.minimum(self._rows[s], arrivals, out=self._rows[s])
        return self._rows[s].copy()

    def holds(self, m: int, v: int, t: float) -> bool:
        s = self.slot_of.get(m)
        if s is not None:
            return bool(self._rows[s, v] <= t)
        return bool(self.held[m, v])

    def ready_row(self, m: int) -> np.ndarray:
        """Per node, from when it holds m (0 = long since, inf = not held)."""
        s = self.slot_of.get(m)
        if s is not None:
            return self._rows[s].copy()
        return np.where(self.held[m], 0.0, INF)

    def held_mask(self, ms: np.ndarray, v: int, t: float) -> np.ndarray:
        """Which of the messages ``ms`` (all of one task) node v holds at time t."""
        out = self.held[ms, v].copy()
        if len(ms) and self.inflight_of_task.get(self.msg_task[int(ms[0])]):
            for i, m in enumerate(ms.tolist()):
                s = self.slot_of.get(m)
                if s is not None:
                    out[i] = self._rows[s, v] <= t
        return out

    def _active(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._active_cache is None:
            slots = np.fromiter(self.slot_of.values(), dtype=np.int64, count=len(self.slot_of))
            msgs = self._slot_msg[slots]
            tasks = np.array([self.msg_task[m] for m in msgs.tolist()], dtype=np.int64)
            low = np.array([self.low64[m] for m in msgs.tolist()], dtype=np.uint64)
            self._active_cache = (slots, msgs, tasks, low)
        return self._active_cache

    def digests(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(count, id digest) of every node's whole store at time t."""
        cnt = self.cnt.copy()
        dig = self.dig.copy()
        if self.slot_of:
            slots, _, _, low = self._active()
            h = self._rows[slots] <= t
            cnt += h.sum(axis=0)
            dig += (h.astype(np.uint64) * low[:, None]).sum(axis=0, dtype=np.uint64)
        return cnt, dig

    def task_digests(self, v: int, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(count, digest) per task of node v's store at time t."""
        k = self.ntasks
        cnt = self.tcnt[v, :k].copy()
        dig = self.tdig[v, :k].copy()
        if self.slot_of:
            slots, _, tasks, low = self._active()
            h = self._rows[slots, v] <= t
            if h.any():
                cnt += np.bincount(tasks[h], minlength=k)
                np.add.at(dig, tasks[h], low[h])
        return cnt, dig

    def is_hot(self, v: int, task: int, t: float, hot_s: float) -> bool:
        """Did v store a new message of ``task`` in the last ``hot_s`` seconds?"""
        if self.last_sync_store.get((v, task), -INF) > t - hot_s:
            return True
        for m in self.inflight_of_task.get(task, ()):
            a = self._rows[self.slot_of[m], v]
            if t - hot_s < a <= t:
                return True
        return False

    # ------------------------------------------------------------------ updates

    def deliver(self, m: int, v: int, t: float) -> bool:
        """v stores m at time t (sync, a certificate fetch); False if it held it already."""
        s = self.slot_of.get(m)
        task = self.msg_task[m]
        if s is not None:
            if self._rows[s, v] <= t:
                return False
            self._rows[s, v] = t
            self.last_sync_store[(v, task)] = t
            return True
        if self.held[m, v]:
            return False
        self.held[m, v] = True
        low = self.low64[m]
        self.tcnt[v, task] += 1
        self.tdig[v, task:task + 1] += low
        self.cnt[v] += 1
        self.dig[v:v + 1] += low
        self.last_sync_store[(v, task)] = t
        return True

    def settle(self, now: float, keep=frozenset(), on_settle=None) -> list[int]:
        """Fold the rows of messages whose last arrival is ``settle_lag`` old (except those
        in ``keep``: not gossiped yet); ``on_settle(m, row)`` sees each final row."""
        if not self.slot_of:
            return []
        slots, msgs, _, _ = self._active()
        rows = self._rows[slots]
        last = np.where(np.isfinite(rows), rows, -INF).max(axis=1)
        done = []
        for s, m, ok in zip(slots.tolist(), msgs.tolist(), (last <= now - self.settle_lag).tolist()):
            if not ok or m in keep:
                continue
            row = self._rows[s]
            if on_settle is not None:
                on_settle(m, row.copy())
            task = self.msg_task[m]
            self.inflight_of_task[task].discard(m)
            h = np.isfinite(row)
            self.held[m] = h
            low = self.low64[m]
            self.tcnt[h, task] += 1
            self.tdig[h, task] += low
            self.cnt[h] += 1
            self.dig[h] += low
            del self.slot_of[m]
            self._active_cache = None
            self._slot_msg[s] = -1
            self._rows[s] = INF
            self._free.append(s)
            done.append(m)
        return done
