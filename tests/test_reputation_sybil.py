"""Reputation a Sybil farm cannot manufacture (protocol/reputation.py + the tally's trust).

The attacks of issue #17 on the pure functions, over a simulated history of certified
tasks (each task tallied with the lagged reputation snapshot, as every node does):
a farm of 100 fresh keys labelling its own task with its own gold, a collusion ring,
laundering across domains, whitewashing, equivocation -- and an honest newcomer, who
must still earn weight next to reputable annotators. The measured weights are printed
(``pytest -s``) and quoted in docs/ledger.md."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from protocol.codec import sha256
from protocol.messages import (
    ITEM_TEXT, SCHEMA_SINGLE_CHOICE, AnnotationBatch, GoldReveal, Item, LabelSchema, TaskAnnouncement,
    compute_gold_commitment,
)
from protocol.params import DEFAULT_PARAMS
from protocol.reputation import AnnotatorOutcome, TaskOutcome, compute_snapshot, compute_weight
from protocol.tally import ONE, compute_task_result

from .helpers import pk

P = DEFAULT_PARAMS
FRESH = P.fresh_weight
HOUR = 3_600_000
INSTITUTION = pk(500)                        # a requester the genesis trusts (a hospital, say)
GENESIS_REP = ((INSTITUTION, "radiology", ONE),)
LABELS = ("benign", "malignant")


@dataclass
class World:
    """A history of certified tasks, tallied one after the other with the lagged
    snapshot; ``weight`` reads any account's weight for a new task."""

    outcomes: list[TaskOutcome] = field(default_factory=list)
    now: int = 1_800_000_000_000
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def weight(self, account: bytes, domain: str = "radiology") -> int:
        """The account's weight for a task created one lag after the last deadline."""
        earned = compute_snapshot(self.outcomes, self.now + P.reputation_lag_ms, P)
        return compute_weight(account, domain, earned, GENESIS_REP, P)

    def run_task(self, requester: bytes, workers: dict[bytes, float], n_items: int = 100, *,
                 domain: str = "radiology", gold_share: float = 0.1, lie_together: set[bytes] = frozenset(),
                 equivocate: dict[bytes, int] | None = None, bounty: int = 0):
        """Post, label and certify one task; ``workers`` maps account -> accuracy;
        accounts in ``lie_together`` all give the same wrong label on every item."""
        self.now += 2 * P.reputation_lag_ms
        truth = [self.rng.randrange(2) for _ in range(n_items)]
        n_gold = int(n_items * gold_share)
        gold = tuple((i, truth[i]) for i in range(n_gold))
        salt = sha256(self.now.to_bytes(8, "big"))
        task = TaskAnnouncement(
            requester=requester, nonce=self.now, created_at=self.now, deadline=self.now + HOUR, title="t",
            schema=LabelSchema(SCHEMA_SINGLE_CHOICE, domain, LABELS),
            items=tuple(Item(ITEM_TEXT, text=str(i)) for i in range(n_items)), redundancy=3, bounty=bounty,
            gold_commitment=compute_gold_commitment(salt, gold) if gold else None, reward_rule=0)
        tid = sha256(b"task" + self.now.to_bytes(8, "big"))
        batches = {}
        for k, (acct, acc) in enumerate(sorted(workers.items())):
            pairs = []
            for i in range(n_items):
                if acct in lie_together:
                    label = 1 - truth[i]
                else:
                    label = truth[i] if self.rng.random() < acc else 1 - truth[i]
                pairs.append((i, label))
            batches[sha256(tid + acct)] = AnnotationBatch(acct, tid, self.now + 1, tuple(pairs))
            for e in range((equivocate or {}).get(acct, 0)):  # a second batch contradicting item e
                batches[sha256(tid + acct + bytes([e]))] = AnnotationBatch(acct, tid, self.now + 2,
                                                                           ((e, 1 - pairs[e][1]),))
        reveal = GoldReveal(requester, tid, self.now + HOUR, salt, gold) if gold else None
        earned = compute_snapshot(self.outcomes, task.created_at, P)
        weight_of = lambda a: compute_weight(a, domain, earned, GENESIS_REP, P)  # noqa: E731
        res = compute_task_result(tid, task, batches, reveal, weight_of, P,
                                  gold_id=sha256(b"gold" + tid) if gold else None)
        self.outcomes.append(TaskOutcome(tid, task.deadline, domain, 2, tuple(
            AnnotatorOutcome(a.account, a.labels, a.score, a.equivocations, a.trust) for a in res.annotators)))
        self.now = task.deadline
        return res, truth


EXPERTS = [pk(600 + i) for i in range(3)]
FARM = [pk(2000 + i) for i in range(100)]
FARMER = pk(1999)


def _experts_with_history(world: World, tasks: int = 10) -> None:
    """Three honest experts (95% right) earn their weight on ten 100-item tasks of the
    trusted institution, with its gold: 1,000 certified labels each."""
    for _ in range(tasks):
        world.run_task(INSTITUTION, {e: 0.95 for e in EXPERTS})


def test_a_farm_of_fresh_keys_stays_below_one_expert_and_loses_to_three():
    world = World()
    _experts_with_history(world)
    expert_w = [world.weight(e) for e in EXPERTS]
    # The farm: 100 fresh keys label their own 1,000-item task, with their own gold, perfectly.
    for _ in range(3):
        world.run_task(FARMER, {f: 1.0 for f in FARM}, n_items=1000)
    farm_w = [world.weight(f) for f in FARM]
    print(f"\nexpert weights {[round(w / ONE, 3) for w in expert_w]}; farm: each {farm_w[0] / ONE:.5f}, "
          f"combined {sum(farm_w) / ONE:.3f}")
    assert sum(farm_w) < min(expert_w)
    assert all(w == FRESH for w in farm_w)
    # A task where the 3 experts meet the 100 farmed accounts, who all vote the wrong label.
    res, truth = world.run_task(INSTITUTION, {**{e: 0.95 for e in EXPERTS}, **{f: 1.0 for f in FARM}},
                                gold_share=0.0, lie_together=set(FARM), bounty=10_000)
    right = sum(1 for i, t in enumerate(truth) if res.label[i] == t)
    print(f"experts + farm task: {right}/{len(truth)} items follow the experts")
    assert right >= 0.9 * len(truth)
    paid = {a.account: a.reward for a in res.annotators}
    assert sum(paid[f] for f in FARM) == 0 and sum(paid[e] for e in EXPERTS) > 0


def test_a_collusion_ring_gains_nothing():
    """20 fresh accounts post tasks for each other (with gold) and label them perfectly."""
    world = World()
    ring = [pk(3000 + i) for i in range(20)]
    for poster in ring:
        world.run_task(poster, {a: 1.0 for a in ring if a != poster}, n_items=200)
    weights = [world.weight(a) for a in ring]
    print(f"\nring of 20 after 20 tasks: weights {set(weights)} (fresh = {FRESH})")
    assert weights == [FRESH] * 20


def test_reputation_does_not_launder_across_domains():
    """An expert of radiology vouches for a farm in another domain: nothing moves."""
    world = World()
    _experts_with_history(world)
    for _ in range(3):
        world.run_task(FARMER, {**{f: 1.0 for f in FARM[:20]}, EXPERTS[0]: 1.0}, domain="sentiment")
    assert world.weight(EXPERTS[0], "sentiment") == FRESH
    assert {world.weight(f, "sentiment") for f in FARM[:20]} == {FRESH}
    assert {world.weight(f, "radiology") for f in FARM[:20]} == {FRESH}


def test_whitewashing_gains_nothing():
    """An account that lost its reputation (equivocating) is worth a fresh key, never less,
    so a new key buys nothing; and the honest history of its old key is gone with it."""
    world = World()
    cheat = pk(700)
    _experts_with_history(world, tasks=3)
    world.run_task(INSTITUTION, {**{e: 0.95 for e in EXPERTS}, cheat: 0.95})
    before = world.weight(cheat)
    world.run_task(INSTITUTION, {**{e: 0.95 for e in EXPERTS}, cheat: 0.95}, equivocate={cheat: 20})
    after, new_key = world.weight(cheat), world.weight(pk(701))
    print(f"\nwhitewashing: before {before / ONE:.4f}, after equivocating {after / ONE:.4f}, "
          f"fresh key {new_key / ONE:.4f}")
    assert after < before
    assert new_key == FRESH <= after


def test_an_honest_newcomer_earns_weight_next_to_reputable_annotators():
    world = World()
    _experts_with_history(world)
    newcomer = pk(800)
    labels = 0
    history = []
    while world.weight(newcomer) < ONE // 10 and labels < 5_000:
        world.run_task(INSTITUTION, {**{e: 0.95 for e in EXPERTS}, newcomer: 0.9})
        labels += 100
        history.append((labels, world.weight(newcomer) / ONE))
    print(f"\nhonest newcomer (90% right) next to 3 experts: {history}")
    assert world.weight(newcomer) >= ONE // 10, "a newcomer must be able to earn weight"
    assert labels <= 1_000


def test_equivocation_costs_reputation_and_credits():
    world = World()
    _experts_with_history(world, tasks=3)
    a, b = pk(900), pk(901)            # the same work; b also contradicts itself on 5 items
    world.rng = random.Random(1)
    res, _ = world.run_task(INSTITUTION, {**{e: 0.95 for e in EXPERTS}, a: 1.0, b: 1.0},
                            equivocate={b: 5}, bounty=100_000)
    row = {r.account: r for r in res.annotators}
    print(f"\nrewards: honest {row[a].reward}, equivocating {row[b].reward}")
    assert row[b].equivocations == 5 and row[b].reward < row[a].reward
    assert world.weight(b) < world.weight(a)
    assert sum(r.reward for r in res.annotators) + res.refund + res.fee == 100_000
