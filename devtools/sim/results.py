"""Task results and reputation snapshots, with the protocol's own functions.

A result is ``protocol.tally.compute_task_result`` over an exact set of message ids with
the prior weights of a reputation snapshot (``protocol.reputation``); like the node's
ResultCache, each distinct (set root, snapshot) is computed once and shared by every node
that asks for it. A node's snapshot for task T is the set of certified tasks in T's lagged
window that the node holds a certificate for and reproduces; it is keyed by a bitmask of
task indices (nodes that know the same certificates share it).

``compute_proposal`` is the value a validator can vouch for, as ``node/services/finality.py``
(``FinalityService._proposal``) chooses it: the result over its own set, unless the round
leader prevoted a set that contains the validator's snapshot (what it held at grace end),
all of which it holds, and whose recomputed result root matches the leader's.
"""
from __future__ import annotations

from protocol.messages import KIND_BATCH, KIND_GOLD, compute_set_root
from protocol.reputation import AnnotatorOutcome, TaskOutcome, compute_earned, compute_weight, is_in_window
from protocol.tally import TaskResult, compute_task_result

from .world import World


class Results:
    def __init__(self, world: World):
        self.world = world
        self._results: dict[tuple[bytes, int], TaskResult] = {}
        self._earned: dict[int, dict] = {}
        self._window: dict[int, int] = {}          # task -> bitmask of tasks in its reputation window
        self.certified: dict[int, tuple] = {}      # task -> (round, set_root, result_root, sorted ids) first seen
        self._outcome: dict[int, TaskOutcome | None] = {}
        self.computed = 0

    # ------------------------------------------------------------------ reputation

    def window_mask(self, k: int) -> int:
        """Bitmask of the tasks whose certified outcome may count for task k (the lag)."""
        mask = self._window.get(k)
        if mask is None:
            tasks = self.world.tasks
            created = tasks[k].created_ms
            mask = 0
            for x, tx in enumerate(tasks):
                if x != k and is_in_window(_Deadline(tx.deadline_ms), created, self.world.params):
                    mask |= 1 << x
            # final once k exists: tasks posted after k have later deadlines than k's creation
            self._window[k] = mask
        return mask

    def outcome(self, x: int) -> TaskOutcome | None:
        """What certified task x says about its annotators (None if not certified or its
        certified result cannot be reproduced from the certified set)."""
        if x in self._outcome:
            return self._outcome[x]
        cert = self.certified.get(x)
        if cert is None:
            return None
        _, set_root, result_root, ids = cert
        snap = self.window_mask(x) & self.certified_mask()
        res = self.result(x, ids, snap)
        out = None
        if res.result_root == result_root:
            t = self.world.tasks[x]
            out = TaskOutcome(task_id=t.tid, deadline=t.deadline_ms, domain=t.ann.schema.domain,
                              n_classes=len(t.ann.schema.labels),
                              annotators=tuple(AnnotatorOutcome(a.account, a.labels, a.score, a.equivocations)
                                               for a in res.annotators))
        self._outcome[x] = out
        return out

    def certified_mask(self) -> int:
        m = 0
        for x in self.certified:
            m |= 1 << x
        return m

    def earned(self, snap: int) -> dict:
        e = self._earned.get(snap)
        if e is None:
            outcomes = []
            x, bits = 0, snap
            while bits:
                if bits & 1:
                    o = self.outcome(x)
                    if o is not None:
                        outcomes.append(o)
                bits >>= 1
                x += 1
            e = self._earned[snap] = compute_earned(outcomes)
        return e

    # ------------------------------------------------------------------ results

    def result(self, k: int, ids, snap: int) -> TaskResult:
        """The result of task k over exactly the message ids ``ids`` with snapshot ``snap``."""
        w = self.world
        ids = tuple(sorted(ids))
        task = w.tasks[k]
        key = (compute_set_root(task.tid, ids), snap)
        res = self._results.get(key)
        if res is None:
            batches, golds = {}, []
            for mid in ids:
                msg = w.msgs[w.by_mid[mid]]
                if msg.kind == KIND_BATCH:
                    batches[mid] = msg.signed.body
                elif msg.kind == KIND_GOLD:
                    golds.append((mid, msg.signed.body))
            gold_id, gold = min(golds, key=lambda g: g[0]) if golds else (None, None)
            earned = self.earned(snap)
            domain = task.ann.schema.domain
            rep = w.genesis.reputation
            params = w.params
            res = compute_task_result(task.tid, task.ann, batches, gold,
                                      lambda a: compute_weight(a, domain, earned, rep, params), params,
                                      gold_id=gold_id)
            self._results[key] = res
            self.computed += 1
        return res

    def note_certificate(self, k: int, cert, ids) -> None:
        if k not in self.certified and ids is not None:
            self.certified[k] = (cert.round, cert.set_root, cert.result_root, tuple(ids))


class _Deadline:
    """Adapter: is_in_window reads only ``deadline``."""

    __slots__ = ("deadline",)

    def __init__(self, deadline: int):
        self.deadline = deadline


def compute_proposal(results: Results, k: int, fin, snapshot: frozenset, held_ids: list[bytes],
                     holds, snap: int):
    """(set_root, result_root, sorted ids) a validator vouches for (node/services/finality.py rules)."""
    if fin.round >= 0:
        lv = fin.get_leader_value(fin.round)
        if lv is not None:
            ids = fin.get_batch_ids(lv[0])
            if ids is not None and snapshot.issubset(ids) and all(holds(i) for i in ids):
                res = results.result(k, ids, snap)
                if res.result_root == lv[1]:
                    return (res.set_root, res.result_root, res.batch_ids)
    res = results.result(k, held_ids, snap)
    return (res.set_root, res.result_root, res.batch_ids)
