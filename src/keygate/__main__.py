"""``python -m keygate``: the ``keygate`` command."""

import sys

from keygate.gateway.cli import main

sys.exit(main())
