"""``scripts/bench``: the performance benchmark of labelmesh.

How it works
------------
Each sub-benchmark (``limits``, ``consensus``, ``ingest``, ``catchup``,
``network``, ``sim``) returns a list of *figures* ``{"name", "value", "unit", "limit"?,
"ratio"?, "target"?, "note"?}``. Throughput figures carry the ceiling they are
measured against -- re-measured in the same run by ``limits`` (ed25519 verifies/s,
LMDB batched puts/s, msgpack unpacks/s, one core) -- and their ratio to it.
Everything that involves a node runs real ``labelmesh run`` processes over
libp2p on 127.0.0.1 and talks to them only through their JSON-RPC socket, the
way a user would; nothing is measured in-process except the pure consensus
functions, the limits themselves and ``sim`` (the 1,000-node network simulation of
devtools/sim, whose figure is its own wall time).

crowd-kit (the consensus baseline) runs in its own virtualenv,
``.bench-venv/`` (crowd-kit 1.4.2 needs scikit-learn < 1.6), created on first
use; ``crowdkit_worker.py`` is the script that runs there.

``python -m devtools.bench --help`` (or ``scripts/bench --help``) lists the options.
"""
