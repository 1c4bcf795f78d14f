"""The names placement works with (SPEC §4.1): tags and clients' owner ids, and how many
a device may carry. Apart from the messages so that reading a configuration needs no
cryptography (the agent's launcher stays slim).

The limits let all of a device's tags, or all the clients it accepts, fit one mDNS TXT
string (255 bytes, SPEC §9): 10 × 24 + 9 commas and 24 × 8 + 23.
"""

from __future__ import annotations

#: A placement tag (``lab``, ``mains``, ``x86-64``): what a device carries and a task may
#: require.
TAG_PATTERN = r"[a-z0-9][a-z0-9._-]{0,23}"
MAX_TAG_LENGTH = 24
MAX_TAGS = 10
#: A client's owner id as the coordinator issues it (8 hex digits), as assignments carry it.
CLIENT_PATTERN = r"[0-9a-f]{8}"
MAX_CLIENTS = 24
