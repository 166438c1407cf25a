"""How fast a devnet gets its links back after a partition heals (``reconnect_s_after_heal``).

A 5-node devnet with one network namespace per node (``up --netns``; root) is cut: a
minority of 2 nodes (another pair each round) is moved to a second bridge for
``PARTITION_S`` seconds, long enough for the links across the cut to drop and for the
bootstrap redials to back off. Then the network is healed and every node is polled (its
RPC socket, every 0.1 s) until each has at least as many connected peers as before the
cut. (A devnet is not a full mesh: at its first start a node bootstraps from node 0 and up
to two earlier nodes, and py-libp2p has no peer exchange, so the baseline is what the
devnet settles to, e.g. 4/3/4/4/3 peers.) The figure is the worst round: the seconds from
the heal to the moment the last node is back to its links. Also reported: how long after the heal a batch submitted on the
minority side reaches every node (gossip or sync over the restored links).

Without network namespaces (not root) the benchmark is skipped and says so: a loopback
devnet cannot be cut honestly.
"""
from __future__ import annotations

import time

from .common import DETAILS, Devnet, figure, log, make_batches, median, post_task, wait_until

NODES = 5
# Long enough for the links across the cut to be found dead: a partition hangs TCP without
# closing it, and a node closes a link when a sync request on it gets no answer (the
# protocol negotiation or the 20 s request timeout, node/net/host.py); sync backs off to one
# session per peer every 12 s when idle. In 20 s cuts no link had dropped yet.
PARTITION_S = 60.0
POLL_S = 0.1
BOUND_S = 120.0


def _peer_counts(net: Devnet) -> list[int | None]:
    out = []
    for i in range(net.n):
        try:
            out.append(net.rpc(i, "node_info", timeout=5)["peer_count"])
        except Exception:  # busy or restarting: not back yet
            out.append(None)
    return out


def _settled(net: Devnet) -> list[int]:
    """The peer counts the devnet settles to: the same in two polls a second apart."""
    last: list = []

    def same() -> bool:
        nonlocal last
        counts = _peer_counts(net)
        ok = counts == last and None not in counts and min(counts) >= 1
        last = counts
        return ok

    wait_until(same, 60, "the devnet's links to settle", interval=1.0)
    return last


def _back(counts: list, base: list[int]) -> bool:
    return all(c is not None and c >= b for c, b in zip(counts, base))


def _round(net: Devnet, base: list[int], minority: list[int], partition_s: float, task_id: bytes, k: int) -> dict:
    from devtools import netns

    netns.partition(net.root, minority)
    t_cut = time.monotonic()
    lowest = list(base)  # each node's fewest peers during the cut
    while time.monotonic() - t_cut < partition_s:
        counts = _peer_counts(net)
        lowest = [lo if c is None else min(lo, c) for lo, c in zip(lowest, counts)]
        time.sleep(0.5)
    raw = make_batches(net.network_id, task_id, n_msgs=1, labels_per_msg=1, n_items=10, n_classes=2,
                       t_base_ms=int(time.time() * 1000), first=1000 + k, seed=k)[0]
    netns.heal(net.root)
    t_heal = time.monotonic()
    bid = net.rpc(minority[0], "annotations_submit", {"raw": raw.hex()})["batch_id"]
    peers_at = batch_at = None
    while time.monotonic() - t_heal < BOUND_S and (peers_at is None or batch_at is None):
        if peers_at is None and _back(_peer_counts(net), base):
            peers_at = time.monotonic() - t_heal
        if batch_at is None and all(net.rpc(i, "messages_held", {"ids": [bid]}, timeout=5)["held"][0]
                                    for i in range(NODES)):
            batch_at = time.monotonic() - t_heal
        time.sleep(POLL_S)
    if peers_at is None or batch_at is None:
        raise RuntimeError(f"after the heal of {minority}: peers {_peer_counts(net)} within {BOUND_S:.0f} s")
    return {"minority": minority, "fewest_peers_during_cut": lowest, "links_dropped": sum(base) - sum(lowest),
            "peers_s": peers_at, "batch_s": batch_at}


def run(quick: bool) -> list[dict]:
    from devtools import netns

    ok, why = netns.available()
    if not ok:
        log(f"reconnect: skipped ({why}; it needs network namespaces: run as root)")
        return []
    rounds = [[0, 1], [2, 3], [1, 4]][: 1 if quick else 3]
    partition_s = 45.0 if quick else PARTITION_S
    results = []
    with Devnet(NODES, prefix="lmbr", netns=True) as net:
        base = _settled(net)
        log(f"reconnect: the devnet settled to {base} peers")
        task_id = bytes.fromhex(post_task(net, 0, 10, 2, 3600, "reconnect")["task_id"])
        wait_until(lambda: all(net.rpc(i, "messages_held", {"ids": [task_id.hex()]})["held"][0] for i in range(NODES)),
                   30, "the task to reach every node", interval=0.2)
        for k, minority in enumerate(rounds):
            r = _round(net, base, minority, partition_s, task_id, k)
            log(f"reconnect: cut {minority} for {partition_s:.0f} s (fewest peers seen: {r['fewest_peers_during_cut']}); "
                f"all peers back {r['peers_s']:.2f} s after the heal, a batch everywhere {r['batch_s']:.2f} s after it")
            results.append(r)
            wait_until(lambda: _back(_peer_counts(net), base), 60, "the devnet's links to come back", interval=0.2)
    rows = ["| round | minority | fewest peers per node during the cut | all peers back (s) | batch everywhere (s) |",
            "|---:|---|---|---:|---:|"]
    rows += [f"| {k + 1} | {r['minority']} | {r['fewest_peers_during_cut']} | {r['peers_s']:.2f} | {r['batch_s']:.2f} |"
             for k, r in enumerate(results)]
    DETAILS["Reconnection after a partition heals"] = "\n".join(rows)
    dropped = [r for r in results if r["links_dropped"]]
    if not dropped:
        raise RuntimeError(f"no link dropped during {partition_s:.0f} s cuts: nothing to reconnect, no figure")
    worst = max(dropped, key=lambda r: r["peers_s"])
    return [
        figure("reconnect_s_after_heal", worst["peers_s"], "s", higher_is_better=False, target=5.0,
               note=f"worst of {len(dropped)} partitions of {partition_s:.0f} s (a minority of 2 of 5 nodes in network "
                    f"namespaces): from the heal until every node has as many peers as before the cut "
                    f"(peers per node {base}); median "
                    f"{median([r['peers_s'] for r in results]):.2f} s"),
        figure("batch_s_after_heal", max(r["batch_s"] for r in results), "s", higher_is_better=False,
               note="worst round: a batch submitted on the minority side right after the heal, until every node "
                    "holds it"),
    ]
