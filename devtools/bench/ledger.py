"""Ledger benchmark: certified transfers per second on a 5-node devnet, and the time from
``transfer`` to the credit being visible on every node.

How it is measured
------------------
A 5-node devnet (every node a validator, weight 1: an order needs 4 of 5 co-signatures)
whose genesis also funds ``senders`` bench accounts. Throughput
(``ledger_transfers_per_s_n5``): every sender pre-signs ``per_sender`` debit orders
(sequence numbers 0, 1, 2, ... so each account's orders are applied one after the other,
as the rules require) to a random other bench account; they are submitted in bulk
(``transfer {raw: [...]}``, 1,000 per call) to the five nodes in turn, and the clock runs
from the first submission until every node reports every order applied (``node_info``
-> ``ledger.orders_applied``, polled every 50 ms). The figure's ``limit`` is the ed25519
verify rate of the same run (every node verifies each order once, and the votes'
signatures amortised over many orders). Visibility (``ledger_finality_ms_n5``): on the
idle network, one ``transfer`` RPC at a time on node 0 (signed there), then poll every
node's ``balance_get`` of the recipient every 5 ms until all five show the credit; the
median over ``samples`` transfers.
"""
from __future__ import annotations

import random
import time

from .common import DETAILS, Devnet, figure, log, median, percentile, wait_until

CREDITS = 10**12


def _keys(n: int):
    import nacl.signing

    return [nacl.signing.SigningKey(b"labelmesh-bench-ledger\x00" + k.to_bytes(9, "big")) for k in range(n)]


def _orders(network_id: bytes, keys, per_sender: int, seed: int = 1) -> list[list[bytes]]:
    """Signed orders, one list per round of sequence numbers (all senders' seq 0, then 1...)."""
    from protocol.messages import DEST_ACCOUNT, Transfer, sign_message

    rng = random.Random(seed)
    pubs = [bytes(k.verify_key) for k in keys]
    rounds = []
    t = int(time.time() * 1000)
    for seq in range(per_sender):
        out = []
        for i, k in enumerate(keys):
            to = pubs[(i + 1 + rng.randrange(len(keys) - 1)) % len(keys)]
            out.append(sign_message(Transfer(pubs[i], seq, t, 1 + rng.randrange(1000), DEST_ACCOUNT, to),
                                    k, network_id).raw.hex())
        rounds.append(out)
    return rounds


def _applied(net: Devnet) -> list[int]:
    return [net.rpc(i, "node_info")["ledger"]["orders_applied"] for i in range(net.n)]


def run(quick: bool, limits: dict) -> list[dict]:
    senders = 200 if quick else 500
    per_sender = 3 if quick else 8
    samples = 5 if quick else 20
    keys = _keys(senders)
    figs = []
    with Devnet(5, prefix="lml", balances=[(bytes(k.verify_key), CREDITS) for k in keys]) as net:
        log(f"ledger: signing {senders * per_sender} orders of {senders} funded accounts")
        rounds = _orders(net.network_id, keys, per_sender)
        total = sum(len(r) for r in rounds)
        base = _applied(net)
        t0 = time.monotonic()
        k = 0
        for orders in rounds:  # seq 0 of everyone, then seq 1: nodes store up to 256 ahead anyway
            for j in range(0, len(orders), 1000):
                net.client(k % net.n).call("transfer", {"raw": orders[j:j + 1000]})
                k += 1
        t_sent = time.monotonic() - t0
        wait_until(lambda: all(a - b >= total for a, b in zip(_applied(net), base)), 600,
                   f"{total} transfers applied on every node", interval=0.05)
        elapsed = time.monotonic() - t0
        rate = total / elapsed
        log(f"ledger: {total} transfers applied on all 5 nodes in {elapsed:.2f} s ({rate:.0f}/s; submitted in "
            f"{t_sent:.2f} s)")
        supply = [net.rpc(i, "node_info")["ledger"] for i in range(net.n)]
        ok = all(s["invariant_ok"] for s in supply) and len({(s["balances"], s["escrow"]) for s in supply}) == 1
        figs.append(figure("ledger_transfers_per_s_n5", rate, "transfers/s", limit=limits["verify"], target=1000,
                           note=f"{total} pre-signed orders of {senders} accounts ({per_sender} each, in sequence), "
                                f"certified by 4 of 5 validators and applied on all 5 nodes; supply invariant "
                                f"{'held' if ok else 'BROKEN'} on every node"))
        # visibility of one transfer on an idle network
        target = bytes(keys[0].verify_key).hex()
        lat = []
        for s in range(samples):
            before = [net.rpc(i, "balance_get", {"account": target})["accounts"][0]["balance"] for i in range(5)]
            t1 = time.monotonic()
            net.client(0).call("transfer", {"account": "requester", "to": target, "amount": 1 + s})
            wait_until(lambda: all(net.client(i).call("balance_get", {"account": target})["accounts"][0]["balance"]
                                   == before[i] + 1 + s for i in range(5)), 60, "a transfer visible everywhere",
                       interval=0.005)
            lat.append((time.monotonic() - t1) * 1000)
        figs.append(figure("ledger_finality_ms_n5", median(lat), "ms", target=1000, higher_is_better=False,
                           note=f"median of {samples} single transfers from `transfer` to the credit on all 5 "
                                f"nodes (p90 {percentile(lat, 90):.0f} ms)"))
    DETAILS["Ledger"] = (f"{total} transfers in {elapsed:.2f} s = {rate:.0f}/s on 5 nodes "
                         f"({rate / limits['verify']:.3f} of one core's ed25519 verify rate, {limits['verify']:.0f}/s); "
                         f"single-transfer visibility: median {median(lat):.0f} ms, max {max(lat):.0f} ms. "
                         "See devtools/bench/ledger.py for the method.")
    return figs
