"""RPC methods about the node itself: identity, peers, sync, accounts, arrival times."""
from __future__ import annotations

import os

from protocol.messages import KIND_NAMES

from ... import __version__
from ...services.metrics import store_summary, task_state_counts
from ..errors import INVALID_PARAMS, RpcError
from ..params import MAX_LIST, get_param
from .ledger import supply_json


async def node_info(node, params):
    """Identity, network, listen addresses, peers and message counts of this node."""
    c = node.counters
    peers = node.p2p.peers() if node.p2p else []
    return {
        "version": __version__,
        "pid": os.getpid(),
        "peer_id": node.peer_id,
        "network_id": node.network_id.hex(),
        "network_name": node.genesis.name,
        "listen_addrs": node.p2p.listen_addrs() if node.p2p else [],
        "peer_count": len(peers),
        "data_dir": str(node.data_dir),
        "time_ms": node.clock(),
        "uptime_s": (node.clock() - node.started_at) // 1000,
        "tasks": len(node.tasks),
        "messages": {
            "stored": node.store.count(),
            "by_kind": {KIND_NAMES.get(k, str(k)): n for k, n in node.store.count_by_kind().items()},
            "accepted": c.accepted, "rejected": c.rejected, "ignored": c.ignored,
            "duplicates": c.duplicates, "published": c.published,
            "published_envelopes": c.published_envelopes,
            "orphans": node.orphan_count,
            # hostile-peer defences (node/policy/ratelimit.py, the keep rule, p2p offender bans)
            "rate_limited": c.rate_limited, "redundant": c.redundant, "dropped": c.dropped,
            "votes_not_stored": c.votes_not_stored,
            "ledger_not_stored": c.ledger_not_stored, "not_funded": c.not_funded,
            "not_followed": c.not_followed,
            "offenders_banned": (node.p2p.stats().get("offenders_banned", 0)
                                 if node.p2p is not None and hasattr(node.p2p, "stats") else 0),
        },
        "gossip": (node.p2p.stats() if node.p2p is not None and hasattr(node.p2p, "stats") else {}),
        "sync": _sync_summary(node),
        "blobs": node.blobs.status() if node.blobs is not None else None,
        "tasks_by_state": task_state_counts(node),
        "ledger": supply_json(node),
        "store": store_summary(node),
        "replication": node.replica_status(),  # what this node follows and prunes (docs/scaling.md)
        "metrics_url": node.metrics.url if node.metrics is not None else None,
    }


def _sync_summary(node) -> dict:
    if node.sync is None:
        return {"peers": 0}
    st = node.sync.status()["peers"]
    last = [p["last_sync_ms"] for p in st if p["last_sync_ms"]]
    return {"peers": len(st), "synced_peers": len(last), "last_sync_ms": max(last) if last else None,
            "lag_tasks": max((p["lag_tasks"] for p in st), default=0),
            "fetched": sum(p["fetched"] for p in st), "served": sum(p["served"] for p in st)}


async def sync_status(node, params):
    """Anti-entropy sync per peer: last sync, messages fetched/served, lag (tasks that differed), errors."""
    if node.sync is None:
        return {"protocol": None, "peers": []}
    return node.sync.status()


async def peers_list(node, params):
    """Connected peers: [{peer_id, addrs}]."""
    return {"peers": node.p2p.peers() if node.p2p else []}




async def account_list(node, params):
    """The node's local accounts: [{name, public_key}] (never the keys)."""
    return {"accounts": node.keystore.list() if node.keystore else []}


async def messages_arrival(node, params):
    """When this node stored each of 'ids' (clock ms; null if not stored since start or too long
    ago -- the newest 200,000 are kept): {"arrival_ms": [...]} in the order of 'ids'."""
    ids = get_param(params, "ids", list)
    if len(ids) > MAX_LIST or not all(isinstance(i, str) for i in ids):
        raise RpcError(INVALID_PARAMS, f"param 'ids' must be a list of at most {MAX_LIST} hex ids")
    try:
        keys = [bytes.fromhex(i) for i in ids]
    except ValueError:
        raise RpcError(INVALID_PARAMS, "param 'ids' must hold hex ids") from None
    got = node.arrival_ms.get
    return {"arrival_ms": [got(k) for k in keys]}


async def messages_held(node, params):
    """Which of 'ids' (message ids: batches, tasks, reveals, votes; at most 10,000) this node
    holds in its store now: {"held": [bool, ...]} in the order of 'ids', and their count.
    Read from the store itself, so the answer survives restarts."""
    ids = get_param(params, "ids", list)
    if not ids or len(ids) > MAX_LIST:
        raise RpcError(INVALID_PARAMS, f"param 'ids' must be a list of 1..{MAX_LIST} message ids "
                                       f"(64 hex characters each), got {len(ids)}; split longer lists")
    keys = []
    for k, i in enumerate(ids):
        b = None
        if isinstance(i, str) and len(i) == 64:
            try:
                b = bytes.fromhex(i)
            except ValueError:
                pass
        if b is None:
            raise RpcError(INVALID_PARAMS, f"param 'ids'[{k}] must be a message id, 64 hex characters")
        keys.append(b)
    held = node.store.has_many(keys)
    return {"held": held, "count": sum(held)}




METHODS = [node_info, peers_list, sync_status, account_list, messages_arrival, messages_held]
