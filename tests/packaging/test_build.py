"""What `make packages` builds: names, versions, metadata, contents, relocation, units."""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import AGENT, COORDINATOR, REPO, Build, current_version

# Building the packages (twice, for upgrades) and installing them in a container take
# longer than the suite's default 300 s on a machine busy with other tests.
pytestmark = pytest.mark.timeout(900)

UNITS = REPO / "packaging" / "systemd"
PACKAGES = (AGENT, COORDINATOR)


def control(deb: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-deb", "--field", deb], capture_output=True, text=True, check=True
    ).stdout
    fields: dict[str, str] = {}
    for line in out.splitlines():
        if line[:1] not in (" ", "\t") and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def site_packages(tree: Path, package: str) -> Path:
    return next((tree / "opt" / package / "lib").glob("python3*/site-packages"))


def test_one_version_everywhere(debs: Build) -> None:
    """The three distributions declare one version and both .debs carry it."""
    inits = [
        REPO / p / "src" / "aeamc" / p / "__init__.py" for p in ("shared", "agent", "coordinator")
    ]
    declared = {re.search(r'__version__ = "(.+)"', i.read_text()).group(1) for i in inits}  # type: ignore[union-attr]
    assert declared == {current_version()}
    for package in PACKAGES:
        assert debs.deb(package).exists()
        assert control(debs.deb(package))["Version"] == debs.version == current_version()


def test_control_fields(debs: Build) -> None:
    host_arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    for package in PACKAGES:
        fields = control(debs.deb(package))
        assert fields["Package"] == package
        assert fields["Architecture"] == host_arch
        depends = [d.strip() for d in fields["Depends"].split(",")]
        assert "python3 (>= 3.11)" in depends
        assert "python3.11" in depends  # the venv's interpreter is /usr/bin/python3.11
        assert "adduser" in depends
        assert any(d.startswith("libc6 (>= ") for d in depends)  # from dpkg-shlibdeps
        assert int(fields["Installed-Size"]) > 1000
        # A PKCS#11 module is the operator's choice (module-path=): suggested, not required.
        assert fields["Suggests"] == "softhsm2 | opensc-pkcs11"
        assert not any("softhsm" in d or "opensc" in d for d in depends)


def test_layout(extracted: dict[str, Path]) -> None:
    commands = {AGENT: "aeamc-agent", COORDINATOR: "aeamc-coordinator"}
    conffiles = {AGENT: "agent.toml", COORDINATOR: "coordinator.toml"}
    for package, tree in extracted.items():
        venv = tree / "opt" / package
        link = tree / "usr" / "bin" / commands[package]
        assert os.readlink(link) == f"/opt/{package}/bin/{commands[package]}"
        # /usr/bin/aeamc belongs to neither package: update-alternatives manages it.
        assert not (tree / "usr" / "bin" / "aeamc").exists()
        assert (venv / "bin" / "aeamc").is_file()
        assert (tree / "lib" / "systemd" / "system" / f"{package}.service").is_file()
        assert (tree / "etc" / "aeamc" / conffiles[package]).is_file()
        assert (tree / "etc" / "aeamc" / f"{conffiles[package]}.d").is_dir()
        assert (tree / "usr" / "share" / "doc" / package / "copyright").is_file()
        assert os.readlink(venv / "bin" / "python3.11") == "/usr/bin/python3.11"
        assert not list(venv.glob("bin/pip*")) or package == COORDINATOR  # sqlite-utils needs pip


def test_coordinator_ships_its_runbook_and_monitoring(extracted: dict[str, Path]) -> None:
    """An operator finds the runbook, the alert rules and the Grafana dashboard on the host,
    identical to the ones the project tests (promtool, the rules' own tests)."""
    tree = extracted[COORDINATOR]
    doc = tree / "usr" / "share" / "doc" / COORDINATOR / "runbook.md"
    assert doc.read_bytes() == (REPO / "docs" / "runbook.md").read_bytes()
    shipped = tree / "usr" / "share" / COORDINATOR / "monitoring"
    names = sorted(p.name for p in shipped.iterdir())
    assert names == sorted(p.name for p in (REPO / "packaging" / "monitoring").iterdir())
    for name in ("alerts.yml", "alerts_test.yml", "grafana-dashboard.json", "README.md"):
        assert (shipped / name).read_bytes() == (
            REPO / "packaging" / "monitoring" / name
        ).read_bytes()
    assert not (extracted[AGENT] / "usr" / "share" / AGENT).exists()


def test_agent_venv_has_no_chain_or_database_code(extracted: dict[str, Path]) -> None:
    site = site_packages(extracted[AGENT], AGENT)
    names = {p.name.lower().replace("-", "_") for p in site.iterdir()}
    for banned in ("web3", "sqlite_utils", "eth_account", "eth_abi"):
        assert not any(n == banned or n.startswith(f"{banned}-") for n in names), banned
    assert not (site / "aeamc" / "coordinator").exists()
    assert (site / "aeamc" / "agent").is_dir()
    coordinator_site = site_packages(extracted[COORDINATOR], COORDINATOR)
    assert (coordinator_site / "web3").is_dir()
    assert (coordinator_site / "sqlite_utils").is_dir()
    assert not (coordinator_site / "aeamc" / "agent").exists()


def test_venvs_hold_what_their_configuration_can_ask_for(extracted: dict[str, Path]) -> None:
    """pkcs11: keys need python-pkcs11, mDNS zeroconf and ifaddr, the coordinator's chain
    web3; nothing can be added to a venv under /opt once installed."""
    for package in PACKAGES:
        site = site_packages(extracted[package], package)
        for module in ("pkcs11", "asn1crypto", "zeroconf", "ifaddr", "cryptography"):
            assert (site / module).is_dir(), f"{package}: no {module}"
        assert any(site.glob("python_pkcs11-*.dist-info")), package
    assert (site_packages(extracted[COORDINATOR], COORDINATOR) / "web3").is_dir()
    # numpy ([fast]) is no setting: left out of the devices' venv.
    assert not (site_packages(extracted[AGENT], AGENT) / "numpy").exists()


def test_venv_is_relocated_to_opt(extracted: dict[str, Path]) -> None:
    """Nothing in a package names the build's staging dir or the source checkout."""
    for package, tree in extracted.items():
        venv = tree / "opt" / package
        for script in ("aeamc", "aeamc-agent" if package == AGENT else "aeamc-coordinator"):
            first = (venv / "bin" / script).read_text().splitlines()[0]
            assert first == f"#!/opt/{package}/bin/python"
        cfg = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines())
        assert cfg["home"] == "/usr/bin"
        assert cfg["include-system-site-packages"] == "false"
        assert f"VIRTUAL_ENV=/opt/{package}\n" in (venv / "bin" / "activate").read_text()
        leaks = subprocess.run(
            ["grep", "-rlF", "-e", "aeamc-deb-", "-e", str(REPO), str(tree)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        assert leaks == ""


def test_bytecode_is_shipped_with_final_paths(extracted: dict[str, Path]) -> None:
    site = site_packages(extracted[AGENT], AGENT)
    pyc = next((site / "aeamc" / "agent" / "__pycache__").glob("cli.*.pyc"))
    assert f"/opt/{AGENT}/lib/".encode() in pyc.read_bytes()


def test_installed_commands_run_from_the_package_tree(extracted: dict[str, Path]) -> None:
    """The venv works wherever it is unpacked when started through its own python."""
    for package, command in ((AGENT, "aeamc-agent"), (COORDINATOR, "aeamc-coordinator")):
        venv = extracted[package] / "opt" / package
        for cmd in (command, "aeamc"):
            out = subprocess.run(
                [venv / "bin" / "python", venv / "bin" / cmd, "--version"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert out.split() == [cmd, current_version()]


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory, extracted: dict[str, Path]) -> Path:
    """A root for `systemd-analyze verify --root`: this host's units plus both packages."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    root = tmp_path_factory.mktemp("unit-root")
    shutil.copytree("/lib/systemd/system", root / "lib" / "systemd" / "system", symlinks=True)
    for tree in extracted.values():
        shutil.copytree(tree, root, symlinks=True, dirs_exist_ok=True)
    return root


@pytest.mark.parametrize("package", PACKAGES)
def test_systemd_analyze_verify(unit_root: Path, package: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={unit_root}", f"{package}.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    # Unknown keys and bad values are only warnings: any output at all is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_analyze_verify_notices_a_missing_command(tmp_path: Path) -> None:
    """The check above is meaningful: verify does look for the ExecStart binary."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    shutil.copytree("/lib/systemd/system", tmp_path / "lib" / "systemd" / "system", symlinks=True)
    shutil.copy(UNITS / f"{AGENT}.service", tmp_path / "lib" / "systemd" / "system")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={tmp_path}", f"{AGENT}.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "/usr/bin/aeamc-agent" in result.stderr


REQUIRED = {
    "Type": "notify",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "78",
    "CapabilityBoundingSet": "",
    "ConfigurationDirectory": "aeamc",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "MemoryDenyWriteExecute": "yes",
}


@pytest.mark.parametrize(
    ("package", "command", "conffile"),
    [(AGENT, "aeamc-agent", "agent.toml"), (COORDINATOR, "aeamc-coordinator", "coordinator.toml")],
)
def test_unit_settings(package: str, command: str, conffile: str) -> None:
    settings: dict[str, list[str]] = {}
    for line in (UNITS / f"{package}.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key, []).append(value)
    for key, value in REQUIRED.items():
        assert settings.get(key) == [value], key
    assert settings["User"] == [package]
    assert settings["StateDirectory"] == [package]
    assert settings["ExecStart"] == [f"/usr/bin/{command} --config /etc/aeamc/{conffile} run"]
    assert "@system-service" in settings["SystemCallFilter"]


def test_prerelease_versions_sort_before_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "packaging"))
    spec = importlib.util.spec_from_file_location("aeamc_build_debs", REPO / "packaging/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    cases = {"1.0": "1.0", "1.0rc1": "1.0~rc1", "1.0.dev3": "1.0~dev3", "1.0.post1": "1.0+post1"}
    for pep440, debian in cases.items():
        assert module.debian_version(pep440) == debian
    ordered = ["1.0~dev3", "1.0~rc1", "1.0", "1.0+post1", "1.0.1"]
    for lower, higher in itertools.pairwise(ordered):
        compare = ["dpkg", "--compare-versions", lower, "lt", higher]
        assert subprocess.run(compare, check=False).returncode == 0, (lower, higher)
