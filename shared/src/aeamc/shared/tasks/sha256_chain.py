"""``sha256-chain``: iterated SHA-256, the reference CPU-bound kind (SPEC §3).

Cheap to describe, expensive to do, trivial to re-execute for one chunk: exactly the
shape spot-checking needs.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

from ..schema import hex_bytes, integer, record
from .base import check_params

MAX_ITERATIONS = 5_000_000

_PARAMS = record(
    {"seed": hex_bytes(32), "iterations": integer(1, MAX_ITERATIONS)},
    dict,
)


class Sha256Chain:
    name = "sha256-chain"

    def validate_params(self, params: Mapping[str, Any], chunks: int) -> None:
        check_params(_PARAMS, params)

    def run_chunk(self, params: Mapping[str, Any], index: int, chunks: int) -> bytes:
        digest = hashlib.sha256(bytes.fromhex(params["seed"]) + struct.pack("<I", index)).digest()
        sha256 = hashlib.sha256
        for _ in range(params["iterations"]):
            digest = sha256(digest).digest()
        return digest


KIND = Sha256Chain()
