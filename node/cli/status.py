"""``labelmesh status [--watch]``: identity, network, peers, sync, tasks and the local
accounts' rewards and reputation of a running node, from one RPC connection."""
from __future__ import annotations

import argparse
import json
import sys
import time

from ..rpc.errors import RpcCallError
from .common import EXIT_UNAVAILABLE, CliError, client, out


def fmt_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def gather_status(args) -> dict:
    """Everything `labelmesh status` shows, from one RPC connection; rewards and
    reputation only if the node has those methods (older nodes do not)."""
    try:
        with client(args) as c:
            info = c.call("node_info")
            accounts = c.call("account_list").get("accounts", [])
            methods = c.call("rpc_methods").get("methods", {})
            mine = {a["public_key"] for a in accounts}
            rewards, reputation, balances = {}, {}, {}
            if "balance_get" in methods:
                balances = {b["account"]: b for b in c.call("balance_get").get("accounts", [])}
            if "rewards_get" in methods:
                for t in c.call("rewards_get").get("totals", []):
                    if t["account"] in mine:
                        rewards[t["account"]] = t["reward"]
            if "reputation_get" in methods:
                for r in c.call("reputation_get").get("reputation", []):
                    if r["account"] in mine:
                        reputation.setdefault(r["account"], []).append(
                            {"domain": r["domain"], "weight": r["weight"], "weight_f": r["weight_f"]})
    except RpcCallError as e:
        raise CliError(f"status: {e.message} (code {e.code})") from None
    except (ConnectionError, OSError) as e:
        raise CliError(f"cannot reach the node's RPC socket: {e}", EXIT_UNAVAILABLE) from None
    rows = [{"name": a["name"], "public_key": a["public_key"],
             "reward": rewards.get(a["public_key"], 0) if "rewards_get" in methods else None,
             "reputation": reputation.get(a["public_key"], []) if "reputation_get" in methods else None,
             "balance": balances.get(a["public_key"], {}).get("balance"),
             "escrowed": balances.get(a["public_key"], {}).get("escrowed")}
            for a in accounts]
    return {**info, "accounts": rows}


def render_status(s: dict) -> str:
    m = s["messages"]
    kinds = ", ".join(f"{k} {v}" for k, v in m.get("by_kind", {}).items())
    lines = [f"node      {s['peer_id'] or '(no p2p)'}  v{s.get('version', '?')}  pid {s['pid']}  "
             f"up {fmt_age(s['uptime_s'])}",
             f"network   {s['network_name']}  {s['network_id'][:16]}",
             f"peers     {s['peer_count']}" + (f"   listen {s['listen_addrs'][0]}" if s.get("listen_addrs") else "")]
    sy = s.get("sync") or {}
    if sy.get("peers"):
        age = (f"{(s['time_ms'] - sy['last_sync_ms']) / 1000:.1f} s ago" if sy.get("last_sync_ms") else "not yet")
        state = "in sync" if sy.get("last_sync_ms") and not sy.get("lag_tasks") else "catching up"
        lines.append(f"sync      {state}: {sy['synced_peers']}/{sy['peers']} peers synced, last {age}, "
                     f"lag {sy['lag_tasks']} tasks, fetched {sy['fetched']}, served {sy['served']}")
    else:
        lines.append("sync      no peers to sync with")
    ts = s.get("tasks_by_state")
    if ts:
        lines.append(f"tasks     open {ts['open']}  closed {ts['closed']}  certified {ts['certified']}  "
                     f"(total {s['tasks']})")
    else:
        lines.append(f"tasks     {s['tasks']}")
    lines.append(f"messages  stored {m['stored']}" + (f" ({kinds})" if kinds else "") +
                 f"   accepted {m['accepted']}  rejected {m['rejected']}  ignored {m['ignored']}  "
                 f"duplicates {m['duplicates']}")
    st = s.get("store")
    if st:
        lines.append(f"store     schema {st['schema_version']}, {fmt_bytes(st['file_bytes'])} on disk, "
                     f"{fmt_bytes(st['used_bytes'])} used")
    bl = s.get("blobs")
    if bl:
        lines.append(f"blobs     stored {bl['stored']} ({fmt_bytes(bl['stored_bytes'])})  wanted {bl['wanted']}  "
                     f"fetched {bl['fetched']}  failed {bl['failed']}")
    led = s.get("ledger")
    if led:
        ok = "holds" if led["invariant_ok"] else "BROKEN"
        lines.append(f"ledger    supply {led['supply']:,} = balances {led['balances']:,} + escrow {led['escrow']:,} + "
                     f"burned {led['burned']:,} ({ok})" +
                     (f"; validator equivocations {led['validator_evidence']}" if led["validator_evidence"] else ""))
    lines.append(f"metrics   {s.get('metrics_url') or 'off (set metrics_listen)'}")
    accts = s.get("accounts") or []
    if accts:
        w = max(8, max(len(a["name"]) for a in accts))
        lines.append(f"accounts  {'name':<{w}}  {'public key':<19}  {'balance':>14}  {'escrowed':>10}  {'reward':>12}  "
                     f"reputation (weight by domain)")
        for a in accts:
            rew = "-" if a["reward"] is None else f"{a['reward']:,}"
            bal = "-" if a.get("balance") is None else f"{a['balance']:,}"
            esc = "-" if a.get("escrowed") is None else f"{a['escrowed']:,}"
            if a["reputation"] is None:
                rep = "-"
            else:
                rep = ", ".join(f"{r['domain'] or '*'} {r['weight_f']:.4f}" for r in a["reputation"]) or "none yet"
            lines.append(f"          {a['name']:<{w}}  {a['public_key'][:16]}…  {bal:>14}  {esc:>10}  {rew:>12}  {rep}")
    return "\n".join(lines)


CLEAR = "\x1b[H\x1b[2J"


def cmd_status(args) -> int:
    if args.watch is None:
        s = gather_status(args)
        out(args, s, render_status(s))
        return 0
    interval = args.watch
    if not interval > 0:
        raise CliError("--watch takes a refresh interval in seconds > 0, e.g. --watch 2")
    n = 0
    try:
        while args.iterations is None or n < args.iterations:
            n += 1
            try:
                s = gather_status(args)
                frame, obj = render_status(s), s
            except CliError as e:  # the node may be restarting: keep watching
                frame, obj = f"node not reachable: {e}", {"error": str(e)}
            if args.json:
                print(json.dumps(obj), flush=True)
            else:
                sys.stdout.write(f"{CLEAR}labelmesh status  {time.strftime('%H:%M:%S')}  "
                                 f"(every {interval:g} s, Ctrl-C to stop)\n\n{frame}\n")
                sys.stdout.flush()
            if args.iterations is not None and n >= args.iterations:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        print()
    return 0


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """Register status on ``sub``."""
    s = sub.add_parser("status", parents=[common],
                       help="identity, network, peers, sync, tasks, accounts of a running node (--watch refreshes)")
    s.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until Ctrl-C")
    s.add_argument("--iterations", type=int, help=argparse.SUPPRESS)  # bounded --watch, for tests
    s.set_defaults(fn=cmd_status)

