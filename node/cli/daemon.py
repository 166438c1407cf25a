"""``labelmesh init`` (a data dir: node key, account, genesis, config), ``labelmesh
run`` (the daemon, built by the composition root node/app.py, in the foreground) and
``labelmesh stop`` (RPC ``stop``, then wait until the node has exited)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from pathlib import Path

from protocol.errors import LabelmeshError

from ..config import CONFIG_FILE, NodeConfig
from ..rpc.errors import RpcCallError
from .common import EXIT_UNAVAILABLE, CliError, client, effective_config, out, override_parser


def cmd_init(args) -> int:
    from protocol.genesis import genesis_from_json, make_genesis
    from protocol.reputation import ONE

    from ..keystore import Keystore, write_private

    dd = Path(args.data_dir)
    if (dd / CONFIG_FILE).exists() and not args.force:
        raise CliError(f"{dd} is already initialised (use --force to overwrite config and genesis; keys are kept)")
    dd.mkdir(parents=True, exist_ok=True)
    os.chmod(dd, 0o700)
    if not (dd / "node.key").exists():
        write_private(dd / "node.key", os.urandom(32).hex().encode())
    ks = Keystore(dd)
    names = {a["name"] for a in ks.list()}
    if args.account not in names:
        ks.create(args.account)
    pk = ks.public_key(args.account)
    if args.genesis:
        try:
            text = Path(args.genesis).read_text()
        except OSError as e:
            raise CliError(f"cannot read genesis file: {e}") from None
        g = genesis_from_json(text)
    else:
        g = make_genesis(args.network_name, int(time.time() * 1000), [(pk, 1)], [(pk, "", ONE)], [(pk, 10**9)])
    (dd / "genesis.json").write_text(g.to_json())
    cfg = NodeConfig(listen=args.listen or ["/ip4/127.0.0.1/tcp/0"], bootstrap=args.bootstrap or [],
                     validator_account=args.account if g.validator_weight(pk) > 0 else "").validate()
    (dd / CONFIG_FILE).write_text(cfg.to_toml())
    out(args, {"data_dir": str(dd), "network_id": g.network_id.hex(), "account": args.account,
                "public_key": pk.hex()},
         f"initialised {dd}\n  network   {g.name} {g.network_id.hex()[:16]}\n  account   {args.account} {pk.hex()}\n"
         f"start it with: labelmesh run --data-dir {dd}")
    return 0


def cmd_run(args) -> int:
    import trio  # the daemon's imports, loaded by `run` only

    from ..app import build_node
    from ..logs import setup_logging

    dd = Path(args.data_dir)
    cfg, _ = effective_config(args)  # flags > LABELMESH_* > config.toml > defaults
    setup_logging(cfg.log_level, cfg.log_format, levels=cfg.log_levels)
    _, node = build_node(dd, cfg=cfg, http_allow_remote=args.http_allow_remote)

    async def main():
        async with trio.open_nursery() as nursery:
            async def on_signals():
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                    async for s in sigs:
                        logging.getLogger("labelmesh.node").info("signal %s: shutting down", signal.Signals(s).name)
                        nursery.cancel_scope.cancel()
                        return
            nursery.start_soon(on_signals)
            await nursery.start(node.run)
            if node.p2p is not None:
                print(json.dumps({"event": "ready", "peer_id": node.peer_id, "listen": node.p2p.listen_addrs(),
                                  "pid": os.getpid(), "metrics": node.metrics.url,
                                  "ui": node.web.url if node.web is not None else None}), flush=True)
            await node.stopped.wait()  # `labelmesh stop` (RPC stop): the node has shut down
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except BaseExceptionGroup as eg:  # a service failed to start: say which, in one line, if it is not a bug
        user, rest = eg.split(LabelmeshError)
        if rest is None and user is not None:
            leaf = user
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise CliError(str(leaf)) from None
        raise
    return 0


def _process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its parent counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _socket_closed(c) -> bool:
    try:
        c.close()
        c.connect()
    except OSError:
        return True
    c.close()
    return False


def cmd_stop(args) -> int:
    """Ask the node to stop (RPC ``stop``) and wait, up to --timeout s, until it has."""
    if not args.timeout > 0:
        raise CliError("--timeout takes seconds > 0, e.g. --timeout 60")
    c = client(args)
    try:
        with c:
            r = c.call("stop")
    except RpcCallError as e:
        raise CliError(f"stop: {e.message} (code {e.code})") from None
    except (ConnectionError, OSError) as e:
        raise CliError(f"cannot reach the node's RPC socket: {e}", EXIT_UNAVAILABLE) from None
    pid, end = r["pid"], time.monotonic() + args.timeout
    ours = pid == os.getpid()  # a node running inside this process (tests): wait for its socket only
    while not (_socket_closed(c) and (ours or _process_gone(pid))):
        if time.monotonic() > end:
            raise CliError(f"the node (pid {pid}) is still running {args.timeout:g} s after it was asked to stop; "
                           f"see its log, or `kill {pid}`", 1)
        time.sleep(0.05)
    out(args, {"stopped": True, "pid": pid}, f"node stopped (pid {pid})")
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """Register init, run and stop on ``sub``."""
    s = sub.add_parser("init", parents=[common], help="create a data dir: node key, account, genesis, config")
    s.add_argument("--genesis", help="genesis JSON file of the network to join (default: a new one-node network)")
    s.add_argument("--network-name", default="localnet", help="name of the new network when --genesis is not given")
    s.add_argument("--account", default="default", help="name of the local account to create (default: default)")
    s.add_argument("--listen", action="append", help="libp2p listen multiaddr (repeatable; default /ip4/127.0.0.1/tcp/0)")
    s.add_argument("--bootstrap", action="append", help="bootstrap peer multiaddr with /p2p/<id> (repeatable)")
    s.add_argument("--force", action="store_true", help="overwrite an existing config and genesis")
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("run", parents=[common, override_parser()],
                       help="run the node daemon in the foreground (SIGINT/SIGTERM or `labelmesh stop` stop it "
                            "cleanly; as a service: docs/labelmesh.service)")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("stop", parents=[common], help="stop the running node cleanly and wait until it has exited")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the node to exit (default 60)")
    s.set_defaults(fn=cmd_stop)

