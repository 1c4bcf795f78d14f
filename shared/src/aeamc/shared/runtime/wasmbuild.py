"""Building a kernel written in C into a WebAssembly module (docs/workloads.md §2).

One way, shared by everything that builds a kernel (``tools/build_kernels.py`` for the
examples and the benchmark, ``aeamc devnet demo`` for its picture): Debian's clang and
lld, freestanding — no libc and no WASI — so the module imports nothing and passes the
sandbox's checks (:func:`aeamc.shared.wasm.check_module`). Only the standard library is
used here, so a checkout's ``tools/`` script can run it without the project installed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

#: What clang is given, exactly as docs/workloads.md tells a client to build theirs.
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

#: How to get the tools on Debian (the packages requirements/debian.txt lists).
INSTALL = "sudo apt install clang lld"


class KernelBuildError(RuntimeError):
    """A kernel could not be built; the message says why (the compiler's own words)."""


class ToolchainMissing(KernelBuildError):
    """clang or its WebAssembly linker is not installed; the message says how to get them."""


def clang() -> str:
    """The clang to build kernels with, from PATH.

    Raises :class:`ToolchainMissing` naming the Debian packages when clang or wasm-ld
    (lld) is missing: without the linker clang compiles, then fails with a message that
    does not say what to install.
    """
    tools = {name: shutil.which(name) for name in ("clang", "wasm-ld")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise ToolchainMissing(
            f"building a WebAssembly kernel needs clang and wasm-ld ({' and '.join(missing)} "
            f"not found): {INSTALL}"
        )
    return str(tools["clang"])


def stale(target: Path, sources: Iterable[Path]) -> bool:
    """Whether ``target`` is missing or older than any of ``sources``."""
    if not target.exists():
        return True
    built = target.stat().st_mtime
    return any(built < source.stat().st_mtime for source in sources)


def build_wasm(source: Path, target: Path, *, depends: Iterable[Path] = ()) -> Path:
    """Compile the C file ``source`` into the module ``target``; returns ``target``.

    Headers are found beside ``source`` (``#include "aeamc_kernel.h"``). Nothing is run
    when ``target`` is newer than ``source`` and every file of ``depends``. Raises
    :class:`ToolchainMissing` without clang or wasm-ld, :class:`KernelBuildError` with
    the compiler's message when the build fails; a failed build leaves no ``target``.
    """
    if not stale(target, [source, *depends]):
        return target
    compiler = clang()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        run([compiler, *WASM_FLAGS, "-o", str(target), str(source)])
    except KernelBuildError:
        target.unlink(missing_ok=True)  # an older module must not pass for this source
        raise
    return target


def run(cmd: list[str]) -> None:
    """Run a build command; raises :class:`KernelBuildError` with its output if it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise KernelBuildError(f"{' '.join(cmd)} failed:\n{done.stderr}")
