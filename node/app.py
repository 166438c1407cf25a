"""The composition root: a labelmesh node with its services and servers.

``Node`` is the core (``node/core``: ingest pipeline, gossip validation, indexes, gold,
results) plus what runs around it: metrics, anti-entropy sync, finality and blob transfer
(``node/services``), the JSON-RPC server (``node/rpc``), which is handed its method
table here, and the web UI (``node/web``) when ``http_listen`` is set. ``build_node`` makes the Node of a data dir: config, genesis, node key,
keystore, the libp2p adapter (``node/net``), rate limits and signature helpers.

The layers below never import this module: the core sees its services only as the
attributes set here.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import trio

from protocol.genesis import Genesis, genesis_from_json

from .config import NodeConfig, load_config
from .core.node import NodeCore, wall_clock_ms
from .core.replica import ReplicaConfig
from .core.verifier import auto_processes
from .errors import ConfigError
from .keystore import Keystore
from .policy.ratelimit import RateLimitConfig
from .rpc.methods import METHODS
from .rpc.server import RpcServer
from .services.blobs import BlobService
from .services.finality import FinalityService
from .services.ledger import LedgerService
from .services.metrics import NodeMetrics
from .services.sync import SyncService
from .web import WebServer

log = logging.getLogger("labelmesh.node")

#: after the RPC method ``stop``, the node waits this long (s) before it shuts down, so the
#: reply reaches the caller.
STOP_GRACE_S = 0.2


class Node(NodeCore):
    """A labelmesh node: the core, its services and (with ``rpc_socket``) the RPC server.
    ``run`` starts everything in one nursery, each part ready when the next starts."""

    def __init__(self, data_dir: Path, genesis: Genesis, *, p2p_factory: Callable | None,
                 keystore=None, clock: Callable[[], int] = wall_clock_ms,
                 rpc_socket: Path | None = None, validator_account: str = "", sync_interval_s: float = 3.0,
                 validator_key=None, finality_tick_s: float = 0.25, metrics_listen: str = "",
                 rate_limits=None, verify_processes: int = 0, http_listen: str = "",
                 http_allow_remote: bool = False, replica=None):
        # checked first, before the store opens: a refused web address stops nothing half-way
        self.web = WebServer(self, http_listen, allow_remote=http_allow_remote) if http_listen else None
        super().__init__(data_dir, genesis, p2p_factory=p2p_factory, keystore=keystore, clock=clock,
                         rate_limits=rate_limits, verify_processes=verify_processes, replica=replica)
        self.rpc_socket = rpc_socket
        self.validator_account = validator_account
        self.metrics = NodeMetrics(self)  # per-node registry; served only if metrics_listen is set
        self.metrics_listen = metrics_listen
        self.writer.on_commit = self.metrics.observe_commit
        self.sync = SyncService(self, interval_s=sync_interval_s) if self.p2p is not None else None
        if validator_key is None and validator_account and keystore is not None:
            validator_key = keystore.signing_key(validator_account)
        self.finality = FinalityService(self, validator_key, tick_s=finality_tick_s)
        if self.finality.me is not None and not self.replica.follows_all:
            raise ConfigError("a validator follows every domain: remove follow_domains (or set it to [\"*\"]) "
                              "on a node with validator_account")
        self.ledger_service = LedgerService(self, validator_key)
        self.blobs = BlobService(self)
        self._stop_requested = trio.Event()
        self.stopped = trio.Event()  # set once ``run`` has returned
        self.load_tasks()

    def request_stop(self) -> None:
        """Stop ``run`` cleanly, as SIGTERM does for ``labelmesh run`` (the RPC method ``stop``)."""
        self._stop_requested.set()

    async def _stop_when_asked(self, scope: trio.CancelScope) -> None:
        await self._stop_requested.wait()
        log.info("stop requested over RPC: shutting down")
        with trio.move_on_after(STOP_GRACE_S):  # lets the reply to `stop` go out first
            await trio.sleep_forever()
        scope.cancel()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await self.start_core(nursery)
                if self.sync is not None:
                    await nursery.start(self.sync.run)
                await nursery.start(self.blobs.run)
                await nursery.start(self.finality.run)
                await nursery.start(self.ledger_service.run)
                if self.metrics_listen:
                    await nursery.start(self.metrics.serve, self.metrics_listen)
                if self.rpc_socket is not None:
                    self.rpc = RpcServer(self, self.rpc_socket, METHODS)
                    await nursery.start(self.rpc.run)
                if self.web is not None:
                    await nursery.start(self.web.run)
                nursery.start_soon(self._stop_when_asked, nursery.cancel_scope)
                log.info("node ready", extra={"peer_id": self.peer_id, "network_id": self.network_id.hex(),
                                              "tasks": len(self.tasks), "messages": self.store.count()})
                task_status.started(self)
        finally:
            try:
                await self.close_core()
            finally:
                self.stopped.set()


def attached_p2p(p2p) -> Callable:
    """A ``p2p_factory`` for a transport made elsewhere (an in-memory network's, in tests and
    benchmarks): it calls the node's gossip validator for every message, as libp2p does."""
    def factory(node):
        async def validator(topic, data, peer):
            return await node.gossip_validate(topic, data, peer)
        p2p.validator = validator
        return p2p
    return factory


def build_node(data_dir: Path, *, listen_override=None, cfg: NodeConfig | None = None,
               http_allow_remote: bool = False) -> tuple[NodeConfig, Node]:
    """(config, Node) for a data dir; ``cfg`` is the effective config (default: the file's);
    ``http_allow_remote`` lets ``cfg.http_listen`` be a non-loopback address.
    Raises ConfigError (genesis or node key unreadable) and StoreError (e.g. a store of a
    newer labelmesh, or one already open)."""
    cfg = cfg or load_config(data_dir)
    gpath = (data_dir / cfg.genesis)
    try:
        genesis = genesis_from_json(gpath.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read genesis {gpath}: {e}") from None
    try:
        seed = bytes.fromhex((data_dir / "node.key").read_text().strip())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read node key {data_dir / 'node.key'}: {e}") from None

    def p2p_factory(node):
        from .net import GossipOutcome, P2PConfig, P2PNode, p2p_tuning_from_env  # loads libp2p

        async def validator(topic, data, peer, origin=None):
            outcome = await node.gossip_validate(topic, data, peer, origin)
            return GossipOutcome[outcome.name]

        async def on_peer_connected(peer):
            if node.sync is not None:
                node.sync.wake()  # catch up with a new peer at once

        return P2PNode(P2PConfig(seed=seed, listen=listen_override or cfg.listen, bootstrap=cfg.bootstrap,
                                 max_message_bytes=genesis.params.max_message_bytes,
                                 **p2p_tuning_from_env(os.environ)),
                       validator=validator, on_peer_connected=on_peer_connected)

    return cfg, Node(data_dir, genesis, p2p_factory=p2p_factory, keystore=Keystore(data_dir),
                     rpc_socket=data_dir / cfg.rpc_socket, validator_account=cfg.validator_account,
                     metrics_listen=cfg.metrics_listen, rate_limits=RateLimitConfig.from_env(os.environ),
                     verify_processes=auto_processes(), http_listen=cfg.http_listen,
                     http_allow_remote=http_allow_remote,
                     replica=ReplicaConfig.from_settings(cfg.follow_domains, cfg.retain_batches_days))
