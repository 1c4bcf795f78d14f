"""The checked-in contract artifacts are exactly what the pinned compiler makes of the sources.

Python code deploys and calls the contract from contracts/artifacts/*.json, so an artifact
that drifted from its source would ship untested bytecode. contracts/build.mjs --check is the
guard; these tests prove it passes on the tree and fails on each kind of drift.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.anvil import ARTIFACTS_DIR, EVM_VERSION, REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "contracts" / "build.mjs"
EXPECTED = ("BareAnchor", "MicroblockAnchor", "SeedMicroblockRegistry")


def node_binary() -> str:
    """Path of node; its absence is a broken setup, reported as a failure, not a skip."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; install Node.js 20+ and run `npm ci`", pytrace=False)
    return node


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    """Run the repository's build script in check mode against the tree at ``root``."""
    return subprocess.run(
        [node_binary(), str(BUILD_SCRIPT), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )


def pinned_solc() -> str:
    package = json.loads((REPO_ROOT / "package.json").read_text())
    return str(package["devDependencies"]["solc"])


def test_checked_in_artifacts_match_fresh_compile() -> None:
    result = run_check(REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert f"{len(EXPECTED)} artifacts match solc {pinned_solc()}+" in result.stdout


def _edit_source(root: Path) -> str:
    path = root / "contracts" / "MicroblockAnchor.sol"
    text = path.read_text()
    path.write_text(text.replace("if (root == bytes32(0)) revert ZeroRoot();\n", "", 1))
    return "stale:   contracts/artifacts/MicroblockAnchor.json"


def _edit_artifact(root: Path) -> str:
    path = root / "contracts" / "artifacts" / "MicroblockAnchor.json"
    artifact = json.loads(path.read_text())
    artifact["abi"] = artifact["abi"][1:]
    path.write_text(json.dumps(artifact, indent=2, sort_keys=True) + "\n")
    return "stale:   contracts/artifacts/MicroblockAnchor.json"


def _delete_artifact(root: Path) -> str:
    (root / "contracts" / "artifacts" / "SeedMicroblockRegistry.json").unlink()
    return "missing: contracts/artifacts/SeedMicroblockRegistry.json"


def _orphan_artifact(root: Path) -> str:
    shutil.copy(
        root / "contracts" / "artifacts" / "BareAnchor.json",
        root / "contracts" / "artifacts" / "Removed.json",
    )
    return "extra:   contracts/artifacts/Removed.json"


@pytest.mark.slow
@pytest.mark.parametrize(
    "mutate",
    [_edit_source, _edit_artifact, _delete_artifact, _orphan_artifact],
    ids=["source", "artifact", "missing", "orphan"],
)
def test_check_fails_on_drift(tmp_path: Path, mutate: Callable[[Path], str]) -> None:
    shutil.copytree(
        REPO_ROOT / "contracts",
        tmp_path / "contracts",
        ignore=shutil.ignore_patterns("node_modules", "__pycache__"),
    )
    expected_message = mutate(tmp_path)
    result = run_check(tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert expected_message in result.stderr
    assert "run: node contracts/build.mjs" in result.stderr


@pytest.mark.parametrize("name", EXPECTED)
def test_artifact_records_how_it_was_built(name: str) -> None:
    artifact = json.loads((ARTIFACTS_DIR / f"{name}.json").read_text())
    source = REPO_ROOT / artifact["sourcePath"]
    assert artifact["contractName"] == name
    assert artifact["sourceSha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert artifact["compiler"]["version"].startswith(f"{pinned_solc()}+commit.")
    settings = artifact["compiler"]["settings"]
    assert settings["optimizer"]["enabled"] is True
    # anvil runs the same fork the bytecode targets, so measured gas is the deployed gas.
    assert settings["evmVersion"] == EVM_VERSION
    assert re.fullmatch(r"0x[0-9a-f]+", artifact["bytecode"])
    assert re.fullmatch(r"0x[0-9a-f]+", artifact["deployedBytecode"])
    pragma = re.search(r"^pragma solidity ([^;]+);", source.read_text(), re.MULTILINE)
    assert pragma is not None and pragma.group(1) == pinned_solc()


def test_every_artifact_is_sorted_json_with_trailing_newline() -> None:
    names = sorted(p.stem for p in ARTIFACTS_DIR.glob("*.json"))
    assert names == sorted(EXPECTED)
    for name in names:
        text = (ARTIFACTS_DIR / f"{name}.json").read_text()
        assert text.endswith("}\n") and not text.endswith("\n\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
