"""``labelmesh``, the command-line interface of a node (entry point ``node.cli:main``;
``python -m node.cli`` runs it too).

One module per verb group: ``daemon`` (init, run), ``status``, ``accounts``, ``ops``
(config show, backup, restore, completion), ``tasks`` (rpc, task post, label,
consensus), ``results`` (rewards, reputation, export, certificate, blob get),
``aggregate`` (offline consensus of CSV files); ``common`` holds what they share and
``main`` builds the parser. A verb imports what only it needs when it runs (the
store, the daemon, numpy), so that every ``labelmesh`` start stays quick. Verbs of other packages (``devnet``) come in through the
entry-point group ``labelmesh.cli`` (``main.PLUGIN_GROUP``).
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
