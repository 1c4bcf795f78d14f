"""Build the example kernels of docs/workloads/ (C) into WebAssembly modules.

Usage: python tools/build_kernels.py OUT_DIR [--native]

Each ``docs/workloads/<name>.c`` becomes ``OUT_DIR/<name>.wasm`` with Debian's clang and
lld, freestanding (no libc, no WASI, so no imports), exactly as docs/workloads.md tells a
client to build theirs (``aeamc.shared.runtime.wasmbuild``, which ``aeamc devnet demo`` uses
too). ``--native`` also builds ``OUT_DIR/<name>.so`` with gcc -O2, the reference the
benchmark compares the sandbox with. A module is rebuilt only when its source or the ABI
header changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This checkout's build rules, whether the packages are installed in this Python or not
# (it needs nothing beyond the standard library).
sys.path.insert(0, str(ROOT / "shared" / "src"))
from aeamc.shared.runtime.wasmbuild import WASM_FLAGS, build_wasm, run, stale  # noqa: E402

__all__ = ["HEADER", "SOURCES", "WASM_FLAGS", "build", "kernels", "run"]

SOURCES = ROOT / "docs" / "workloads"
HEADER = SOURCES / "aeamc_kernel.h"


def kernels() -> list[Path]:
    """The example kernels' C sources."""
    return sorted(SOURCES.glob("*.c"))


def build(out: Path, *, native: bool = False) -> dict[str, Path]:
    """Build every kernel into ``out``; returns name → .wasm path. Raises RuntimeError
    naming the missing tool (Debian packages clang and lld) or the compiler's message."""
    out.mkdir(parents=True, exist_ok=True)
    built = {}
    for source in kernels():
        built[source.stem] = build_wasm(source, out / f"{source.stem}.wasm", depends=[HEADER])
        if native:
            lib = out / f"{source.stem}.so"
            if stale(lib, [source, HEADER]):
                run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-o", str(lib), str(source)])
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for the built modules")
    parser.add_argument("--native", action="store_true", help="also build native .so files")
    args = parser.parse_args(argv)
    try:
        for name, path in build(args.out, native=args.native).items():
            print(f"{name}: {path} ({path.stat().st_size} bytes)")
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
