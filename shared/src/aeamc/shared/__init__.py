"""AEAMC protocol core: identities, messages, EPS, Merkle trees, microblocks, task kinds.

Everything here is pure: no sockets, files or clock reads. Time and randomness are passed
in by the caller, so the agent and the coordinator (thin I/O shells) and the tests all
drive the same deterministic code.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
