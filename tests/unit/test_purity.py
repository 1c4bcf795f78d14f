"""The protocol core stays pure: importing all of it pulls in no I/O framework."""

from __future__ import annotations

from tests.support.imports import modules_after

#: The one subpackage allowed to do I/O (asyncio, zeroconf); the core never imports it.
RUNTIME = "aeamc.shared.runtime."
FORBIDDEN = ["aiohttp", "web3", "sqlite3", "sqlite_utils", "zeroconf", "psutil", "numpy", "asyncio"]


def test_shared_imports_no_io_frameworks() -> None:
    loaded = modules_after(
        f"RUNTIME = {RUNTIME!r}\n"
        "import pkgutil, importlib, aeamc.shared as s\n"
        "for m in pkgutil.walk_packages(s.__path__, 'aeamc.shared.'):\n"
        "    if not m.name.startswith(RUNTIME):\n"
        "        importlib.import_module(m.name)"
    )
    assert "aeamc.shared.bundle" in loaded
    assert "aeamc.shared.tasks.classify_int8" in loaded
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)
    assert not {m for m in loaded if m.startswith(RUNTIME)}
