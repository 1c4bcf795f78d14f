"""The example kernels of docs/workloads/, built with clang as a client would, and the
content source a simulated device computes WASM chunks from."""

from __future__ import annotations

import functools
import struct
import sys
import tempfile
from pathlib import Path

from aeamc.shared.tasks.wasm_kernel import MissingBlob

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from build_kernels import build


@functools.cache
def kernels() -> dict[str, bytes]:
    """Every example kernel's module bytes by name (built once per test process)."""
    with tempfile.TemporaryDirectory(prefix="aeamc-kernels-") as out:
        return {name: path.read_bytes() for name, path in build(Path(out)).items()}


def mandelbrot_input(width: int = 96, height: int = 64, max_iter: int = 200) -> bytes:
    """The Mandelbrot kernel's input for the whole set at ``width`` × ``height``."""
    return struct.pack("<4I4d", width, height, max_iter, 0, -2.0, -1.25, 1.0, 1.25)


class Blobs(dict[str, bytes]):
    """Content by digest, as a device holds what it fetched (a ``BlobSource``)."""

    def get(self, digest: str) -> bytes:  # type: ignore[override]
        try:
            return self[digest]
        except KeyError:
            raise MissingBlob(f"no content {digest}") from None
