"""What limits the figures that miss their targets, from profiles taken on this machine.

Kept apart from the renderer because this is analysis, not measurement: it is written
from cProfile runs of the coordinator under each benchmark's load (see the last section
of docs/performance.md for how to take one) and must be revisited when the code changes.
"""

INGESTION = "TODO"
FLEET = "TODO"
BLOCKS = "TODO"
ECONOMY = "TODO"
HOW_TO_PROFILE = "TODO"
