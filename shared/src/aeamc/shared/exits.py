"""Exit statuses of every AEAMC command, and the argument parser that uses them.

The numbers are BSD ``sysexits.h``'s, so service managers and scripts read them the same
way for ``aeamc``, ``aeamc-agent`` and ``aeamc-coordinator``: a unit stops restarting on
``EX_CONFIG`` (``RestartPreventExitStatus=78``), and a usage error is never mistaken for a
failed check.
"""

from __future__ import annotations

import argparse
import sys

EX_OK = 0
#: The request was refused or failed; for ``aeamc``, the input is not valid.
EX_FAILURE = 1
EX_USAGE = 64
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78


class UsageParser(argparse.ArgumentParser):
    """``argparse`` that exits ``EX_USAGE`` (64) on a usage error, not argparse's 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")
