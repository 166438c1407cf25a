"""The long-running services around the core of a node, each started in the node's
nursery by node/app.py: ``sync`` (anti-entropy), ``finality`` (attestations and
certificates), ``blobs`` (blob transfer and prefetch), ``metrics`` (Prometheus)."""
