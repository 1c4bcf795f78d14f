"""Build the example kernels of docs/workloads/ (C) into WebAssembly modules.

Usage: python tools/build_kernels.py OUT_DIR [--native]

Each ``docs/workloads/<name>.c`` becomes ``OUT_DIR/<name>.wasm`` with Debian's clang and
lld, freestanding (no libc, no WASI, so no imports), exactly as docs/workloads.md tells a
client to build theirs. ``--native`` also builds ``OUT_DIR/<name>.so`` with gcc -O2, the
reference the benchmark compares the sandbox with. A module is rebuilt only when its
source or the ABI header changed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

SOURCES = Path(__file__).resolve().parents[1] / "docs" / "workloads"
HEADER = SOURCES / "aeamc_kernel.h"
WASM_FLAGS = (
    "--target=wasm32",
    "-O2",
    # 128-bit SIMD: deterministic in the sandbox (NaNs canonicalised), and what lets the
    # compiler vectorise loops as gcc does natively.
    "-msimd128",
    "-nostdlib",
    "-ffreestanding",
    "-Wall",
    "-Werror",
    "-Wl,--no-entry",
    "-Wl,--strip-all",
)


def kernels() -> list[Path]:
    """The example kernels' C sources."""
    return sorted(SOURCES.glob("*.c"))


def _stale(target: Path, source: Path) -> bool:
    return not target.exists() or target.stat().st_mtime < max(
        source.stat().st_mtime, HEADER.stat().st_mtime
    )


def build(out: Path, *, native: bool = False) -> dict[str, Path]:
    """Build every kernel into ``out``; returns name → .wasm path. Raises RuntimeError
    naming the missing tool (Debian packages clang and lld) or the compiler's message."""
    clang = shutil.which("clang")
    if clang is None or shutil.which("wasm-ld") is None:
        raise RuntimeError("building kernels needs clang and wasm-ld: apt install clang lld")
    out.mkdir(parents=True, exist_ok=True)
    built = {}
    for source in kernels():
        wasm = out / f"{source.stem}.wasm"
        if _stale(wasm, source):
            _run([clang, *WASM_FLAGS, "-o", str(wasm), str(source)])
        built[source.stem] = wasm
        if native:
            lib = out / f"{source.stem}.so"
            if _stale(lib, source):
                _run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-o", str(lib), str(source)])
    return built


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")


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
