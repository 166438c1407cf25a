"""The JSON-RPC methods of a node, by topic (info, tasks, annotations, consensus, blobs,
ops, labeling), and the one table of them that the server is handed (``METHODS``). Each takes the Node and a params object and
returns a JSON-able result or raises RpcError with a message that says what to fix.

Conventions: ids, keys and raw messages are lowercase hex strings; times are
integer milliseconds since the Unix epoch; fixed-point values (confidence,
agreement, accuracy) are also given as floats for people (``*_f`` fields are
derived from the exact integers, never the other way round).

Reference (``labelmesh rpc rpc_methods`` prints this list):

node_info {}                         identity, network, peers, message counts, pid
peers_list {}                        connected peers
sync_status {}                       anti-entropy sync state per peer
rpc_methods {}                       method names with one-line docs
task_post {account, title, labels, items, [domain], [duration_s | deadline_ms],
           [bounty], [redundancy], [nonce]}  or  {raw: hex envelope}
                                     sign (with a local account) and publish a task
task_get {task_id}                   the task announcement, decoded
tasks_list {[limit], [offset]}       {"tasks": [{task_id, title, status, ...}]}
annotations_submit {account, task_id, labels: [[item, label], ...], [created_at]}  or  {raw: hex | [hex, ...]}
                                     store durably (acknowledged = on disk) and gossip
annotations_list {task_id, [limit], [offset]}
consensus_get {task_id, [items: bool], [limit], [offset]}
                                     per item label/confidence/votes, set_root, result_root
certificate_get {task_id, [ids: bool], [limit], [offset]}
                                     finality certificate (hex), round state, a page of the pinned ids
gold_reveal {task_id} | {raw}        reveal a task's hidden gold after its deadline
rewards_get {[account], [task_id]}   rewards from certified tasks, per task and totals
reputation_get {[account], [domain]} reputation per (account, domain) and the resulting weight
task_export {task_id, [format]}      consensus dataset: jsonl | csv | labelstudio
account_list {}                      local accounts (public keys only)
messages_arrival {ids: [hex, ...]}   when this node stored each message (ms), for benchmarks
messages_held {ids: [hex, ...]}      which of these messages this node holds (from the store)
backup_create {dest}                 consistent hot backup of the node (store, config, genesis, keys) into dest
stop {}                              stop the node cleanly (like SIGTERM), after replying
blob_get {task_id, item} | {sha256}  make sure a blob is stored here (fetched from peers if needed)
blob_read {sha256, [offset], [length]}  a chunk (<= 1 MiB, hex) of a locally stored blob
task_items {task_id, [offset], [limit], [account], [todo]}  items a page at a time, with an account's labels
worklist {account, [limit], [offset]}  open tasks with the items an account has left to label
blob_put {data, [media_type]}        store bytes as a blob here (for a task_post item)
ui_url {}                            the web UI's URL with its access token (node/web/)
blob_import {files: [{file}, ...]}   copy local files into the blob store (task_post items by hash)
balance_get {[account]}              balance, escrow, pending debits (default: every local account) and the supply
transfer {account, to, amount, [created_at], [wait_ms]}
                                     sign a debit order (idempotent with created_at), store and gossip it
transfer_get {order_id}              a debit order's status here: applied | certified | pending | superseded
ledger_history {account, [limit], [offset]}  an account's ledger entries, oldest first
"""
from __future__ import annotations

from . import annotations, blobs, consensus, info, labeling, ledger, ops, tasks
from .annotations import annotations_list, annotations_submit
from .blobs import blob_get, blob_import, blob_read
from .common import ONE
from .consensus import certificate_get, consensus_get, reputation_get, rewards_get
from .ledger import balance_get, ledger_history, transfer, transfer_get
from .info import account_list, messages_arrival, messages_held, node_info, peers_list, sync_status
from .labeling import blob_put, task_items, ui_url, worklist
from .ops import backup_create, stop
from .tasks import gold_reveal, task_export, task_get, task_post, tasks_list


def describe(fn) -> str:
    """The first paragraph of ``fn``'s docstring on one line (never cut mid-sentence)."""
    para = (fn.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(para.split())


def build_method_table() -> dict:
    """Every RPC method by name, ``rpc_methods`` included (it lists this very table)."""
    table = {f.__name__: f for module in (info, tasks, annotations, consensus, ledger, ops, blobs, labeling)
             for f in module.METHODS}

    async def rpc_methods(node, params):
        """Names and descriptions of every RPC method (the first paragraph of each one's
        documentation, whole sentences)."""
        return {"methods": {name: describe(fn) for name, fn in sorted(table.items())}}

    table["rpc_methods"] = rpc_methods
    return table


METHODS = build_method_table()

__all__ = [
    "METHODS", "ONE", "account_list", "annotations_list", "annotations_submit", "backup_create", "blob_get",
    "blob_read", "build_method_table", "certificate_get", "consensus_get", "gold_reveal", "messages_arrival", "messages_held",
    "node_info", "peers_list", "reputation_get", "rewards_get", "sync_status", "task_export", "task_get",
    "task_post", "tasks_list", "task_items", "worklist", "blob_put", "ui_url", "stop", "blob_import",
    "balance_get", "transfer", "transfer_get", "ledger_history",
]
