"""``python -m aeamc.agent``: the ``aeamc-agent`` command (entry.py)."""

import sys

from .entry import main

sys.exit(main())
