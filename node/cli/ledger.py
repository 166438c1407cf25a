"""Verbs of the ledger: ``balance`` and ``transfer`` (docs/ledger.md)."""
from __future__ import annotations

import argparse
import time

from .common import CliError, call, out


def _credits(n: int) -> str:
    return f"{n:,}"


def render_balances(r: dict) -> str:
    """Accounts and the supply as a table for people."""
    lines = [f"{'account':<20} {'balance':>16} {'escrowed':>14} {'pending':>12}"]
    for a in r["accounts"]:
        who = a.get("name") or a["account"][:16] + "…"
        lines.append(f"{who:<20} {_credits(a['balance']):>16} {_credits(a['escrowed']):>14} "
                     f"{_credits(a['pending_out']):>12}")
    s = r["supply"]
    ok = "holds" if s["invariant_ok"] else "BROKEN"
    lines.append(f"supply {_credits(s['supply'])} = balances {_credits(s['balances'])} + escrow "
                 f"{_credits(s['escrow'])} + burned {_credits(s['burned'])} ({ok} on this node)")
    return "\n".join(lines)


def cmd_balance(args) -> int:
    params = {"account": args.account} if args.account else {}
    r = call(args, "balance_get", params)
    out(args, r, render_balances(r))
    return 0


def cmd_transfer(args) -> int:
    try:
        amount = int(args.amount.replace(",", "").replace("_", ""))
    except ValueError:
        raise CliError(f"AMOUNT must be a whole number of credits, got {args.amount!r}") from None
    if not 0 <= args.wait <= 60:
        raise CliError(f"--wait must be 0..60 seconds, got {args.wait}")
    params = {"account": args.account, "to": args.to, "amount": amount,
              "created_at": args.created_at if args.created_at is not None else int(time.time() * 1000),
              "wait_ms": int(args.wait * 1000)}
    r = call(args, "transfer", params)
    human = (f"{'found again' if r['retry'] else 'signed'} transfer {r['order_id'][:16]}… of "
             f"{_credits(r['amount'])} credits to {r['to'][:16]}… (seq {r['seq']}): {r['status']}")
    if r["status"] != "applied":
        human += "\n(not applied here yet: validators co-sign it; `labelmesh balance` shows it as pending)"
    out(args, r, human)
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """Register balance and transfer on ``sub``."""
    s = sub.add_parser("balance", parents=[common], help="credits, escrow and pending debits of accounts",
                       description="Balances as this node sees them (default: every local account), and the "
                                   "supply invariant: balances + escrow + burned = genesis supply.")
    s.add_argument("account", nargs="?", help="local account name or hex public key")
    s.set_defaults(fn=cmd_balance)

    s = sub.add_parser("transfer", parents=[common], help="pay credits to another account",
                       description="Sign a debit order paying AMOUNT credits to TO; validators co-sign it and "
                                   "every node applies it (no global order; docs/ledger.md). A retry with the "
                                   "same --created-at is the same order, never a second payment.")
    s.add_argument("to", help="recipient: local account name or hex public key")
    s.add_argument("amount", help="credits (a whole number, 1..2^63-1)")
    s.add_argument("--account", default="default", help="paying local account (default: %(default)s)")
    s.add_argument("--created-at", type=int, dest="created_at",
                   help="ms since the epoch; the idempotency key of a retry (default: now)")
    s.add_argument("--wait", type=float, default=10.0,
                   help="seconds to wait until the transfer is applied here (0..60; default %(default)s)")
    s.set_defaults(fn=cmd_transfer)
