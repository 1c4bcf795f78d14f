"""Task kinds: built-ins, entry-point plug-ins, and parameter validation."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from aeamc.shared.errors import TaskParamsError, UnknownTaskKind
from aeamc.shared.tasks import registry
from aeamc.shared.tasks.sha256_chain import KIND


def test_builtins_are_present_and_lazy() -> None:
    reg = registry.discover()
    assert {"sha256-chain", "classify-int8"} <= set(reg.names())
    assert reg.get("sha256-chain") is KIND
    assert "sha256-chain" in reg
    with pytest.raises(UnknownTaskKind):
        reg.get("nope")


def test_plugin_through_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party package adds a kind without any edit to AEAMC."""
    pkg = tmp_path / "aeamc_demo_plugin.py"
    pkg.write_text(
        textwrap.dedent(
            """
            class Reverse:
                name = "reverse"
                def validate_params(self, params, chunks):
                    pass
                def run_chunk(self, params, index, chunks):
                    return params["data"].encode()[::-1] + bytes([index])
            KIND = Reverse()
            """
        )
    )
    dist = tmp_path / "aeamc_demo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aeamc-demo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[aeamc.task_kinds]\nreverse = aeamc_demo_plugin:KIND\n"
        "sha256-chain = aeamc_demo_plugin:KIND\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = registry.discover()
    assert reg.get("reverse").run_chunk({"data": "abc"}, 2, 3) == b"cba\x02"
    # A plug-in cannot shadow a built-in.
    assert reg.get("sha256-chain") is KIND
    sys.modules.pop("aeamc_demo_plugin", None)


def test_registry_rejects_misnamed_or_non_kinds() -> None:
    class Wrong:
        name = "other"

        def validate_params(self, params: object, chunks: int) -> None: ...

        def run_chunk(self, params: object, index: int, chunks: int) -> bytes:
            return b""

    reg = registry.KindRegistry({"mine": Wrong(), "bad": "aeamc.shared.errors:ProtocolError"})
    with pytest.raises(TypeError, match="calls itself"):
        reg.get("mine")
    with pytest.raises(TypeError, match="not a task kind"):
        reg.get("bad")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"seed": "aa" * 32}, "params.iterations"),
        ({"seed": "aa" * 31, "iterations": 1}, "params.seed"),
        ({"seed": "aa" * 32, "iterations": 0}, "params.iterations"),
        ({"seed": "aa" * 32, "iterations": 10**9}, "params.iterations"),
        ({"seed": "aa" * 32, "iterations": 1, "x": 1}, "params.x"),
    ],
)
def test_sha256_chain_params(params: dict[str, object], field: str) -> None:
    with pytest.raises(TaskParamsError) as info:
        registry.discover().validate("sha256-chain", params, 4)
    assert info.value.field == field
    assert info.value.code == "bad_params"


def test_validate_rejects_non_object_params() -> None:
    with pytest.raises(Exception, match="params"):
        registry.discover().validate("sha256-chain", [1], 1)  # type: ignore[arg-type]
