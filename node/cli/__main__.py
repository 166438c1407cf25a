"""``python -m node.cli ...``: the same as the ``labelmesh`` command."""
import sys

from node.cli.main import main

sys.exit(main())
