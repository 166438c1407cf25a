"""The labelmesh node: the daemon around the pure ``protocol`` package.

Subpackages, lowest layer first (each imports only from the layers below it; the
import-linter contracts in pyproject.toml hold them to it, see README "How it is built"):

    errors, config, keystore, logs   shared by every layer
    policy/    local policies: token buckets, gossip rate limits, peer penalties (pure)
    storage/   LMDB store, group-commit writer, migrations, blob files, backups (only lmdb importer)
    net/       the libp2p adapter (only libp2p importer)
    core/      the node's state machine: ingest pipeline, gossip validation, indexes, gold, results
    services/  long-running services of a node: sync, finality, blobs, signature verifier, metrics
    rpc/       JSON-RPC: server, the one client, methods by topic
    app.py     the composition root: builds a node with its services and servers
    cli/       the ``labelmesh`` command
"""
from importlib.metadata import PackageNotFoundError, version as _dist_version

try:
    __version__ = _dist_version("labelmesh")  # pyproject.toml is the single source
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
