"""The core of a node: every message through one ingest pipeline, gossip validation,
in-memory indexes, gold commit-reveal, results and reputation (``node`` with the
``gold`` and ``results`` mixins, ``indexes``, ``verdicts``), and signature verification
off the event loop (``verifier``, ``verify_worker``). It knows its services only as
attributes set by node/app.py and imports nothing of services, rpc or cli."""
