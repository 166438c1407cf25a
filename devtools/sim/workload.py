"""Workloads: who posts tasks and submits labels, when, through which node.

``SteadyLoad`` is the load of the 1,000-node figure: a task every ``task_interval_s``
(exponential gaps) posted by a random requester through a random node, annotation batches
as a Poisson process over the open tasks, each submitted through a random live node that
holds its task (as a client retries another node). ``BenchLoad`` replays
``devtools/bench/network.py`` on a simulated devnet (everything through node 0) so the
simulation can be compared with a real devnet figure for figure.
"""
from __future__ import annotations

import random

import numpy as np

from protocol.messages import AnnotationBatch, Item, LabelSchema, TaskAnnouncement, sign_message

from .world import Task


def add_task(sim, o: int, t: float, signed, truth, gold, requester: int) -> int:
    """Register a task announcement posted through node ``o`` at ``t``; returns its index."""
    w = sim.world
    k = len(w.tasks)
    ann = signed.body
    tid = signed.compute_id(w.network_id)
    perm = list(range(len(ann.items)))
    random.Random(sim.cfg.seed * 1_000_003 + k).shuffle(perm)
    task = Task(k=k, tid=tid, ann=ann, m=-1, origin=o, requester_index=requester, created_s=t,
                deadline_s=sim.sim_time(o, ann.deadline), truth=truth, gold=gold, perm=perm)
    w.tasks.append(task)
    w.task_of_tid[tid] = k
    assert sim.hold.add_task() == k
    task.m = sim.submit(o, signed, k, t)
    if gold is not None:
        sim.call(task.deadline_s + 0.001, sim.reveal_gold, k)
    return k


class SteadyLoad:
    def __init__(self, warmup_s: float = 5.0):
        self.warmup_s = warmup_s
        self.open: list[int] = []

    def start(self, sim) -> None:
        self.sim = sim
        cfg = sim.cfg
        self.rng = random.Random(cfg.seed * 31 + 7)
        self.gateways = list(range(cfg.gateways)) if cfg.gateways else list(range(cfg.nodes))
        sim.call(self.warmup_s, self._task)
        if cfg.batches_per_s > 0:
            sim.call(self.warmup_s + 1.0 + self.rng.expovariate(cfg.batches_per_s), self._batch)

    def _gateway(self, t: float, task: Task | None = None) -> int | None:
        sim = self.sim
        for _ in range(32):
            o = self.rng.choice(self.gateways)
            if sim.up[o] and (task is None or sim.hold.holds(task.m, o, t)):
                return o
        return None

    def _task(self, t: float, _arg) -> None:
        sim, cfg = self.sim, self.sim.cfg
        if t >= sim.load_end:
            return
        o = self._gateway(t)
        if o is not None:
            r = self.rng.randrange(cfg.requesters)
            k = len(sim.world.tasks)
            signed, truth, gold = sim.world.make_task(k, r, sim.node_ms(o, t), self.rng)
            self.open.append(add_task(sim, o, t, signed, truth, gold, r))
        sim.call(t + self.rng.expovariate(1.0 / cfg.task_interval_s), self._task)

    def _batch(self, t: float, _arg) -> None:
        sim, cfg = self.sim, self.sim.cfg
        if t >= sim.load_end:
            return
        tasks = sim.world.tasks
        self.open = [k for k in self.open if tasks[k].deadline_s > t + 0.5]
        if self.open:
            task = tasks[self.rng.choice(self.open)]
            o = self._gateway(t, task)
            if o is not None:
                for _ in range(8):
                    signed = sim.world.make_batch(task, self.rng.randrange(cfg.annotators), sim.node_ms(o, t), self.rng)
                    if signed is not None:
                        sim.submit(o, signed, task.k, t)
                        break
        sim.call(t + self.rng.expovariate(cfg.batches_per_s), self._batch)


class BenchLoad:
    """``devtools/bench/network.py`` on a simulated devnet: a 10,000-item task posted on node 0;
    ``rate`` batches of 100 labels per second for ``seconds`` s through node 0, signed one
    second before; then a finality task (50 items, 3 classes, 8 s deadline) with 2 batches
    of 10 labels per node, through node 0. Figures: propagation = submission -> the last
    node storing a batch; finality = deadline -> certificate on every node."""

    def __init__(self, rate: float = 100.0, seconds: float = 10.0, finality: bool = True, window_s: float = 15.0,
                 items: int = 10_000):
        self.rate = rate
        self.items = items
        self.seconds = seconds
        self.finality = finality
        self.window_s = window_s          # bytes are counted from the first batch to this long after the last
        self.bytes_at: list[tuple[np.ndarray, np.ndarray]] = []
        self.prop_task = None
        self.fin_task = None
        self.prop_msgs: list[int] = []

    def start(self, sim) -> None:
        self.sim = sim
        self.rng = random.Random(sim.cfg.seed * 131 + 3)
        sim.call(3.0, self._post_prop)

    def _post(self, t: float, n_items: int, classes: int, duration_s: float, title: str) -> int:
        sim = self.sim
        w = sim.world
        k = len(w.tasks)
        created = sim.node_ms(0, t)
        ann = TaskAnnouncement(requester=bytes(w.requester_keys[0].verify_key), nonce=k, created_at=created,
                               deadline=created + int(duration_s * 1000), title=title,
                               schema=LabelSchema(0, "bench", tuple(f"c{c}" for c in range(classes))),
                               items=tuple(Item(0, text=f"item {i}") for i in range(n_items)), redundancy=3,
                               bounty=1000, gold_commitment=None, reward_rule=0)
        signed = sign_message(ann, w.requester_keys[0], w.network_id)
        truth = [self.rng.randrange(classes) for _ in range(n_items)]
        return add_task(sim, 0, t, signed, truth, None, 0)

    def _batch(self, task: Task, k: int, per: int, created_ms: int):
        """Batch k as devtools/bench/common.py make_batches signs it: annotator k % A, ``per``
        consecutive items, created_at base + k // A (so every batch is distinct)."""
        w = self.sim.world
        a = k % len(w.annotator_pk)
        n_items, classes = len(task.ann.items), len(task.ann.schema.labels)
        start = (k * 7919) % max(1, n_items - per + 1)
        labels = tuple((start + j, self.rng.randrange(classes)) for j in range(per))
        b = AnnotationBatch(annotator=w.annotator_pk[a], task_id=task.tid,
                            created_at=created_ms + k // len(w.annotator_pk), labels=labels)
        return sign_message(b, w.annotator_keys[a], w.network_id)

    def _post_prop(self, t: float, _arg) -> None:
        self.prop_task = self._post(t, self.items, 5, 3600.0, "propagation bench")
        # the bench waits until the task is on every node; 5 s is ample in simulation
        n = max(1, int(self.rate * self.seconds))
        task = self.sim.world.tasks[self.prop_task]
        start = t + 5.0
        base = self.sim.node_ms(0, start) - 1000
        self.sim.call(start - 1e-6, self._bytes)
        self.sim.call(start + self.seconds + self.window_s, self._bytes)
        for j in range(n):
            self.sim.call(start + j / self.rate, self._submit, (task.k, self._batch(task, j, 100, base)))
        if self.finality:
            self.sim.call(start + self.seconds + 20.0, self._post_fin)

    def _bytes(self, t: float, _arg) -> None:
        s = self.sim
        self.bytes_at.append(((s.gossip_sent + s.sync.sent).copy(), (s.gossip_recv + s.sync.recv).copy()))

    def window_bytes_per_label(self) -> float:
        """Mean node's bytes sent + received from the first batch to ``window_s`` after the
        last, per label submitted (the devnet benchmark's bytes_per_label_per_node)."""
        (s0, r0), (s1, r1) = self.bytes_at[:2]
        return float(((s1 - s0) + (r1 - r0)).mean()) / max(1, 100 * len(self.prop_msgs))

    def _submit(self, t: float, arg) -> None:
        k, signed = arg
        m = self.sim.submit(0, signed, k, t)
        if k == self.prop_task:
            self.prop_msgs.append(m)

    def _post_fin(self, t: float, _arg) -> None:
        self.fin_task = self._post(t, 50, 3, 8.0, "finality bench")
        task = self.sim.world.tasks[self.fin_task]
        created = self.sim.node_ms(0, t) - 500
        for j in range(2 * self.sim.n):
            self.sim.call(t + 0.2, self._submit, (task.k, self._batch(task, j, 10, created)))
