"""Verbs that the development tools add to the ``labelmesh`` command.

The runtime package never imports ``devtools``; its CLI (``node/cli``) discovers extra
verbs through the entry-point group ``labelmesh.cli`` declared in pyproject.toml. Each
entry point names a function ``register(subparsers, common)`` that adds one verb to
the CLI's argparse subparsers (``common``: the parent parser with ``--data-dir`` and
``--json``) and sets ``fn`` to the function that runs it (``fn(args) -> exit status``).
"""
from __future__ import annotations

import argparse


def register_devnet(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``labelmesh devnet ACTION ...`` (the same as ``scripts/devnet``)."""
    from . import devnet

    s = sub.add_parser("devnet", parents=[common], help="local multi-node devnet (same as scripts/devnet)")
    devnet.add_arguments(s)
    s.set_defaults(fn=devnet.main)
