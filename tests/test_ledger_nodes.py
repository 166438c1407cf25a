"""The ledger on in-process nodes (fake network, fake clock): transfers certified by the
validators' votes, no double spend across a partition, bounties escrowed and released
to the annotators, balances rebuilt after a restart, and the RPC's refusals."""
from __future__ import annotations

import pytest
import trio

from node.keystore import Keystore
from node.rpc.methods import METHODS
from node.rpc.errors import RpcError
from protocol.messages import DEST_ACCOUNT, Transfer

from .fakenet import FakeNet
from .helpers import (
    FakeClock, advance, fake_node, key, make_batch, make_task, make_test_genesis, pk, signed, wait_for,
)

START = 10**9  # pk(1)'s genesis balance in make_test_genesis


async def call(node, method, **params):
    return await METHODS[method](node, params)


async def start_net(nursery, tmp_path, names=("a", "b", "c", "d"), clock=None, genesis=None):
    """Nodes named ``names``, each the validator key(1000 + i) of the test genesis (4
    validators, weight 1: 3 are a quorum); node 0 holds the local account alice = pk(1)."""
    g = genesis or make_test_genesis()
    net = FakeNet(seed=3)
    net.nursery = nursery
    clock = clock or FakeClock()
    nodes = []
    for i, name in enumerate(names):
        ks = Keystore(tmp_path / name)
        if i == 0:
            ks.create("alice", seed=bytes(key(1)))
        node = fake_node(net, name, tmp_path / name, g, clock=clock, keystore=ks, validator_key=key(1000 + i),
                         finality_tick_s=0.01)
        await nursery.start(node.run)
        nodes.append(node)
    net.connect_all()
    return g, net, clock, nodes


def ledgers_agree(nodes) -> bool:
    return len({n.ledger.snapshot() for n in nodes}) == 1 and all(n.ledger.check_supply() for n in nodes)


async def test_a_transfer_is_certified_and_applied_on_every_node(tmp_path):
    async with trio.open_nursery() as nursery:
        g, net, clock, nodes = await start_net(nursery, tmp_path)
        a = nodes[0]
        r = await call(a, "transfer", account="alice", to=pk(5).hex(), amount=1234, created_at=clock.now, wait_ms=10_000)
        assert r["status"] == "applied" and r["seq"] == 0 and not r["retry"]
        await wait_for(lambda: all(n.ledger.get_balance(pk(5)) == 1234 for n in nodes))
        assert all(n.ledger.get_balance(pk(1)) == START - 1234 for n in nodes)
        await wait_for(lambda: ledgers_agree(nodes))
        # a retry of the same transfer (same created_at) is the same order, never a second payment
        again = await call(a, "transfer", account="alice", to=pk(5).hex(), amount=1234, created_at=clock.now)
        assert again["order_id"] == r["order_id"] and again["retry"]
        assert a.ledger.get_balance(pk(5)) == 1234
        hist = await call(nodes[2], "ledger_history", account=pk(5).hex())
        assert [(e["kind"], e["amount"]) for e in hist["entries"]] == [("transfer_in", 1234)]
        bal = await call(a, "balance_get")
        assert bal["accounts"][0]["name"] == "alice" and bal["accounts"][0]["balance"] == START - 1234
        assert bal["supply"] == {"supply": START, "balances": START, "escrow": 0, "burned": 0,
                                 "invariant_ok": True, "validator_evidence": 0, "orders_applied": 1}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("side", [["a", "b", "c"], ["a", "b"]])
async def test_no_double_spend_across_a_partition(tmp_path, side):
    """Two orders for one sequence number, each spending more than half the balance, sent
    at once to the two sides of a partition. With a quorum (3 of 4 validators) on one side,
    that side's order wins everywhere after the heal; with 2 and 2, neither side can certify
    and, the votes being split for good, neither order ever takes effect (the owner signed
    its slot twice: FastPay's rule, docs/ledger.md). Never both; and nothing is applied on
    the side without a quorum while cut."""
    async with trio.open_nursery() as nursery:
        g, net, clock, nodes = await start_net(nursery, tmp_path)
        other = [n for n in ("a", "b", "c", "d") if n not in side]
        net.partition(side, other)
        amount = START // 2 + 1
        x = signed(Transfer(pk(1), 0, clock.now, amount, DEST_ACCOUNT, pk(5)), 1, g.network_id)
        y = signed(Transfer(pk(1), 0, clock.now, amount, DEST_ACCOUNT, pk(6)), 1, g.network_id)
        assert (await nodes[0].ingest(x.raw, "rpc", publish=True))[0].ok
        assert (await nodes[3].ingest(y.raw, "rpc", publish=True))[0].ok
        minority = [n for n in nodes if n.peer_id in other]
        for _ in range(50):  # the minority side votes, but cannot reach 3 of the 4 validators
            await trio.sleep(0.01)
            assert all(not n.ledger.applied for n in minority)
        net.connect_all()
        slot = (pk(1), 0)
        everyone_voted = lambda: all(sum(len(ids) for (v, *rest), ids in n.ledger.signed.items()  # noqa: E731
                                         if tuple(rest) == slot) == 4 for n in nodes)
        settled = (lambda: all(len(n.ledger.applied) == 1 for n in nodes)) if len(side) == 3 else everyone_voted
        await wait_for(lambda: settled() and ledgers_agree(nodes), 20)
        applied = {n.ledger.orders[o].dest for n in nodes for o in n.ledger.applied}
        if len(side) == 3:
            assert applied == {pk(5)}
            assert all(n.ledger.get_balance(pk(5)) == amount and n.ledger.get_balance(pk(6)) == 0 for n in nodes)
        else:
            assert applied == set() and all(n.ledger.get_balance(pk(1)) == START for n in nodes)
        # and a next sequence number that overspends is never co-signed
        nxt = signed(Transfer(pk(1), 1, clock.now, amount, DEST_ACCOUNT, pk(7)), 1, g.network_id)
        v = (await nodes[1].ingest(nxt.raw, "rpc", publish=True))[0]
        assert v.ok or v.reason.startswith(("insufficient balance", "sequence number")), v
        assert all(n.ledger.compute_votes(n.ledger_service.me) == [] for n in nodes if len(side) == 3)
        nursery.cancel_scope.cancel()


async def test_a_bounty_is_escrowed_and_paid_out_on_certification(tmp_path):
    async with trio.open_nursery() as nursery:
        g, net, clock, nodes = await start_net(nursery, tmp_path)
        a = nodes[0]
        r = await call(a, "task_post", account="alice", title="t", labels=["x", "y"], items=[str(i) for i in range(8)],
                       duration_s=10, bounty=9_000)
        tid = bytes.fromhex(r["task_id"])
        assert r["funded"] and r["escrow"]["status"] == "applied"
        await wait_for(lambda: all(n.is_open_for_labels(tid) for n in nodes))
        assert all(n.ledger.get_escrow_of(pk(1)) == 9_000 and n.ledger.get_balance(pk(1)) == START - 9_000
                   for n in nodes)
        for k, ann in enumerate((10, 11, 12)):
            pairs = [(i, i % 2 if ann != 12 else 1 - i % 2) for i in range(8)]
            b = signed(make_batch(ann, tid, pairs, created_at=clock.now), ann, g.network_id)
            assert (await nodes[k + 1].ingest(b.raw, "rpc", publish=True))[0].ok
        await wait_for(lambda: all(len(n.task_batches(tid)) == 3 for n in nodes))
        async with trio.open_nursery() as clk:
            clk.start_soon(advance, clock, clock.now + 60_000)
            await wait_for(lambda: all(tid in n.ledger.released for n in nodes), 20)
            clk.cancel_scope.cancel()
        await wait_for(lambda: ledgers_agree(nodes))
        res = nodes[2].task_result(tid)
        paid = {x.account: x.reward for x in res.annotators}
        assert paid[pk(10)] > 0 and paid[pk(12)] == 0
        for n in nodes:
            assert all(n.ledger.get_balance(acct) == reward for acct, reward in paid.items())
            assert n.ledger.get_balance(pk(1)) == START - sum(paid.values())
            assert n.ledger.totals()["escrow"] == 0
        hist = await call(a, "ledger_history", account="alice")
        refund = 9_000 - sum(paid.values())
        assert [e["kind"] for e in hist["entries"]] == ["genesis", "escrow"] + (["refund"] if refund else [])
        nursery.cancel_scope.cancel()


async def test_balances_survive_a_restart(tmp_path):
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        g, net, _, nodes = await start_net(nursery, tmp_path, clock=clock)
        await call(nodes[0], "transfer", account="alice", to=pk(5).hex(), amount=77, wait_ms=10_000)
        await wait_for(lambda: all(n.ledger.get_balance(pk(5)) == 77 for n in nodes))
        before = nodes[0].ledger.snapshot()
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        ks = Keystore(tmp_path / "a")
        again = fake_node(FakeNet(), "a", tmp_path / "a", g, clock=clock, keystore=ks)
        await nursery.start(again.run)
        assert again.ledger.snapshot() == before
        nursery.cancel_scope.cancel()


async def test_the_rpc_refuses_what_the_ledger_cannot_do(tmp_path, monkeypatch):
    from node.rpc.methods import annotations

    async with trio.open_nursery() as nursery:
        g, net, clock, nodes = await start_net(nursery, tmp_path, names=("a",),
                                               genesis=make_test_genesis(n_validators=1))
        a = nodes[0]

        async def refused(method, **params):
            try:
                await call(a, method, **params)
            except RpcError as e:
                return e.code, e.message
            raise AssertionError(f"{method} {params} was accepted")

        code, msg = await refused("transfer", account="alice", to=pk(5).hex(), amount=START + 1)
        assert code == -32002 and f"holds {START} credits" in msg
        for amount in (0, -5, 1 << 63):
            code, msg = await refused("transfer", account="alice", to=pk(5).hex(), amount=amount)
            assert code == -32602 and "amount" in msg
        assert (await refused("transfer", account="alice", to="alice", amount=5))[0] == -32602
        assert (await refused("transfer", account="bob", to=pk(5).hex(), amount=5))[0] == -32001
        assert (await refused("transfer", account="alice", to="nobody", amount=5))[0] == -32001
        assert (await refused("transfer", account="alice", to=pk(5).hex(), amount=5, wait_ms=-1))[0] == -32602
        code, msg = await refused("task_post", account="alice", title="t", labels=["x", "y"], items=["i"],
                                  bounty=START + 1)
        assert code == -32002 and "insufficient balance for a bounty" in msg and not a.tasks
        assert (await refused("ledger_history", account=pk(5).hex(), limit=0))[0] == -32602
        assert (await refused("balance_get", account="nobody"))[0] == -32001
        # pre-signed input: bad hex, an empty list, too many, and a message of the wrong kind
        assert (await refused("transfer", raw="zz"))[0] == -32602
        assert (await refused("transfer", raw=[]))[0] == -32602
        assert (await refused("transfer", raw=["00"] * 1001))[0] == -32602
        code, msg = await refused("transfer", raw=signed(make_task(bounty=0, nonce=7), 1, g.network_id).raw.hex())
        assert code == -32602 and "Transfer" in msg
        assert (await refused("transfer", raw="c1"))[0] == -32002  # does not decode
        assert (await refused("transfer_get", order_id="zz"))[0] == -32602
        assert (await refused("transfer_get", order_id="00" * 32))[0] == -32001
        # the escrow of task_post's own task arrives at once here (this node is the validator);
        # a task whose bounty nobody escrows takes no labels: the RPC waits, then refuses
        posted = await call(a, "task_post", account="alice", title="t", labels=["x", "y"], items=["i"],
                            bounty=10, wait_ms=0)
        await wait_for(lambda: a.is_open_for_labels(bytes.fromhex(posted["task_id"])))
        unfunded = make_task(bounty=10, nonce=99)
        v, tid = await a.ingest(signed(unfunded, 1, g.network_id).raw, "rpc")
        assert v.ok and not a.is_open_for_labels(tid)
        monkeypatch.setattr(annotations, "FUNDING_WAIT_S", 0.05)
        code, msg = await refused("annotations_submit", account="alice", task_id=tid.hex(), labels=[[0, 0]])
        assert code == -32002 and "task not funded yet" in msg
        nursery.cancel_scope.cancel()
