"""Development tools of labelmesh, outside the runtime package ``node``.

``devnet`` (local multi-node networks), ``chaos`` (faults under load, then a set check),
``netns`` (network namespaces for partitions), ``bench`` (``scripts/bench``) and
``vectors`` (``scripts/gen-vectors``, the test vectors). They drive real nodes the way a
user does (processes, the RPC socket) and may import anything of ``node`` and
``protocol``; ``node`` never imports them (an import-linter contract, see README).
``labelmesh devnet ...`` reaches them through the CLI's plugin entry points
(``devtools/cli.py``).
"""
