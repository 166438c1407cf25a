"""RPC methods of the ledger: balances, transfers, history (docs/ledger.md).

Accounts are named by a local account name (the keystore's) or a 64-hex public key.
Amounts are integer credits, 1..2^63-1. What a node reports is its own view: an order is
``applied`` once this node holds its certificate (votes of more than 2/3 of the validator
weight) and the sender's balance here covers it.
"""
from __future__ import annotations

import trio

from protocol.messages import KIND_TRANSFER, MAX_AMOUNT

from ...core.ledger import LedgerError
from ...errors import KeystoreError
from ..errors import INVALID_PARAMS, NOT_FOUND, REJECTED, RpcError
from ..params import get_param, page_param
from .common import ingest_many_or_raise, ingest_or_raise, raw_messages_param

#: The longest a call may wait for its order to be applied here (``wait_ms``).
MAX_WAIT_MS = 60_000


def _local_accounts(node) -> dict[bytes, str]:
    """Local account names by public key."""
    if node.keystore is None:
        return {}
    return {bytes.fromhex(a["public_key"]): a["name"] for a in node.keystore.list()}


def account_param(node, params, name: str = "account") -> bytes:
    """An account named by a local account name or a 64-hex public key."""
    v = get_param(params, name, str)
    if len(v) == 64:
        try:
            return bytes.fromhex(v)
        except ValueError:
            pass
    if node.keystore is None:
        raise RpcError(NOT_FOUND, f"param {name!r}: no local account {v!r} (this node has no keystore); "
                                  f"give a 64-hex public key")
    try:
        return node.keystore.public_key(v)
    except KeystoreError as e:
        raise RpcError(NOT_FOUND, f"param {name!r}: {e} (give a local account name or a 64-hex public key)") from None


def _amount_param(params) -> int:
    amount = get_param(params, "amount", int)
    if not 1 <= amount <= MAX_AMOUNT:
        raise RpcError(INVALID_PARAMS, f"param 'amount' must be 1..{MAX_AMOUNT} credits, got {amount}")
    return amount


def _wait_param(params) -> int:
    wait = get_param(params, "wait_ms", int, 0)
    if not 0 <= wait <= MAX_WAIT_MS:
        raise RpcError(INVALID_PARAMS, f"param 'wait_ms' must be 0..{MAX_WAIT_MS}")
    return wait


def supply_json(node) -> dict:
    """The ledger's totals here and whether the supply invariant holds."""
    return {**node.ledger.totals(), "invariant_ok": node.ledger.check_supply(),
            "validator_evidence": len(node.ledger.get_evidence()), "orders_applied": len(node.ledger.applied)}


async def balance_get(node, params):
    """Balance, escrow and pending debits of an account (default: every local account), and the supply."""
    names = _local_accounts(node)
    if "account" in params:
        accounts = [account_param(node, params)]
    else:
        accounts = sorted(names, key=lambda a: names[a])
    out = []
    for a in accounts:
        view = node.account_view(a)
        if a in names:
            view["name"] = names[a]
        out.append(view)
    return {"accounts": out, "supply": supply_json(node)}


async def wait_applied(node, order_id: bytes, wait_ms: int) -> str:
    """Wait up to ``wait_ms`` of real time for an order to be applied here; its status
    at the end."""
    status = node.ledger.get_order_status(order_id)["status"]
    if wait_ms <= 0:
        return status
    with trio.move_on_after(wait_ms / 1000):
        while status != "applied":
            await trio.sleep(0.01)
            status = node.ledger.get_order_status(order_id)["status"]
    return status


async def sign_and_submit_debit(node, account_name: str, dest_type: int, dest: bytes, amount: int,
                                created_at: int | None) -> tuple[bytes, object, bool]:
    """Sign (or find again, for a retry) a debit order of a local account, store and
    gossip it: (order id, the order, reused)."""
    try:
        msg, reused = node.sign_debit(account_name, dest_type, dest, amount, created_at)
    except KeystoreError as e:
        raise RpcError(NOT_FOUND, str(e)) from None
    except LedgerError as e:
        raise RpcError(REJECTED, str(e)) from None
    oid = msg.compute_id(node.network_id)
    if not reused:
        await ingest_or_raise(node, msg.raw)
    return oid, msg.body, reused


async def _submit_raw_orders(node, params) -> dict:
    """Pre-signed debit orders (offline signing): {raw: hex | [hex, ...]}."""
    single, datas, msgs = raw_messages_param(node, params, KIND_TRANSFER,
                                             "transfer's 'raw' takes signed debit orders (Transfer) only")
    out = [{"order_id": oid.hex(), "status": status, "seq": m.body.seq, "amount": m.body.amount}
           for (oid, status), m in zip(await ingest_many_or_raise(node, datas, msgs), msgs)]
    return out[0] if single else {"results": out}


async def transfer(node, params):
    """Pay credits from a local account to another account (certified by the validators, no global order)."""
    if "raw" in params:
        return await _submit_raw_orders(node, params)
    account = get_param(params, "account", str)
    to = account_param(node, params, "to")
    amount = _amount_param(params)
    created_at = get_param(params, "created_at", int, None)
    if created_at is not None and not 0 <= created_at < 1 << 63:
        raise RpcError(INVALID_PARAMS, "param 'created_at' must be a time in ms since the epoch")
    wait = _wait_param(params)
    if node.keystore is None:
        raise RpcError(NOT_FOUND, "this node has no keystore: it cannot sign transfers")
    try:
        sender = node.keystore.public_key(account)
    except KeystoreError as e:
        raise RpcError(NOT_FOUND, str(e)) from None
    if to == sender:
        raise RpcError(INVALID_PARAMS, "a transfer to oneself moves nothing")
    dest_type, dest = node.account_dest(to)
    oid, order, reused = await sign_and_submit_debit(node, account, dest_type, dest, amount, created_at)
    status = await wait_applied(node, oid, wait)
    return {"order_id": oid.hex(), "from": sender.hex(), "to": to.hex(), "amount": amount, "seq": order.seq,
            "created_at": order.created_at, "status": status, "retry": reused}


async def ledger_history(node, params):
    """An account's ledger entries (genesis, transfers, escrow, rewards, refunds, fees), oldest first, paged."""
    account = account_param(node, params)
    limit, offset = page_param(params)
    entries = node.ledger.get_history(account)
    page = entries[offset:offset + limit]
    nxt = offset + len(page)
    return {"account": account.hex(), "balance": node.ledger.get_balance(account), "total": len(entries),
            "entries": [{"time_ms": e.time, "kind": e.kind, "amount": e.amount, "ref": e.ref.hex(),
                         "counterparty": e.counterparty.hex()} for e in page],
            "next_offset": nxt if nxt < len(entries) else None}


async def transfer_get(node, params):
    """The status of a debit order here: applied, certified (waiting for funds), pending (votes so far) or superseded."""
    oid = bytes.fromhex(get_param(params, "order_id", str)) if _is_hex32(params.get("order_id")) else None
    if oid is None:
        raise RpcError(INVALID_PARAMS, "param 'order_id' must be 64 hex characters")
    st = node.ledger.get_order_status(oid)
    if st["status"] == "unknown":
        raise RpcError(NOT_FOUND, f"unknown order {oid.hex()}: not stored by this node")
    o = node.ledger.orders[oid]
    return {"order_id": oid.hex(), "from": o.sender.hex(), "amount": o.amount, "dest_type": o.dest_type,
            "dest": o.dest.hex(), "created_at": o.created_at, **st}


def _is_hex32(v) -> bool:
    if not isinstance(v, str) or len(v) != 64:
        return False
    try:
        bytes.fromhex(v)
        return True
    except ValueError:
        return False


METHODS = [balance_get, transfer, transfer_get, ledger_history]
