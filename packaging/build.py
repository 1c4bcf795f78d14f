#!/usr/bin/env python3
"""Build the Debian packages ``aeamc-agent`` and ``microblock-coordinator``.

Each package is a self-contained virtualenv under ``/opt/<package>`` (dh-virtualenv
style) for the target's own ``/usr/bin/python3.11``:

1. wheels: the three distributions are built from a clean copy of the source tree; their
   dependencies come from ``requirements/constraints.txt`` as wheels, kept in a cache
   (``build/packaging/wheels``) so a rebuild needs no network;
2. the venv is created with the target interpreter in a staging root, at
   ``<stage>/opt/<package>``, and the wheels are installed into it with ``pip --python``
   (no pip inside the venv, no build tools, nothing from the network);
3. the only absolute staging paths a venv holds are made final: script shebangs,
   ``activate`` scripts, ``pyvenv.cfg``; bytecode is compiled with ``/opt/<package>``
   as its path; a scan then proves no staging or source path is left anywhere;
4. ``dpkg-deb --root-owner-group`` packs the tree: no root, no fakeroot.

Run by ``make packages``; ``--help`` lists the options. docs/packaging.md explains why.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from base64 import urlsafe_b64encode
from collections.abc import Iterable, Sequence
from pathlib import Path

import set_version

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGET_PYTHON = "/usr/bin/python3.11"
PYTHON_DEPENDS = "python3 (>= 3.11), python3.11"
MAINTAINER = "AEAMC maintainers <maintainers@users.noreply.r-seed-1d2ce721.example>"
PROJECTS = ("shared", "agent", "coordinator")
#: What a fleet update ships (docs/updates.md): the agent and its protocol core.
RELEASE_PROJECTS = ("shared", "agent")
STAGING_PREFIX = "aeamc-deb-"
#: A PKCS#11 module for `pkcs11:` keys: the operator's own choice (module-path=), so only
#: suggested — SoftHSM2 for a software token, OpenSC's for smart cards and USB tokens.
HSM_SUGGESTS = "softhsm2 | opensc-pkcs11"


@dataclasses.dataclass(frozen=True)
class Package:
    """One Debian package: its name is also the service, the system user and /opt/<name>."""

    name: str
    distribution: str  # the Python distribution installed into the venv
    #: The extras installed with it: every one a setting of the package's configuration
    #: can call for (docs/packaging.md), since nothing can be added to the venv later.
    extras: tuple[str, ...]
    #: Debian packages a setting may use but the operator chooses (a PKCS#11 module).
    suggests: tuple[str, ...]
    command: str  # console script linked into /usr/bin
    conffile: str  # under /etc/aeamc
    alternative_priority: int  # of /usr/bin/aeamc, which both packages provide
    docs: tuple[str, ...]  # under docs/, shipped in /usr/share/doc/<name>
    #: Folders of packaging/ whose files are shipped in /usr/share/<name>/<folder>.
    data: tuple[str, ...]
    summary: str
    description: str
    first_install_note: str

    @property
    def venv(self) -> str:
        return f"/opt/{self.name}"

    @property
    def requirement(self) -> str:
        """What pip installs into the venv: the distribution with its extras."""
        return f"{self.distribution}[{','.join(self.extras)}]" if self.extras else self.distribution


PACKAGES = {
    p.name: p
    for p in (
        Package(
            name="aeamc-agent",
            distribution="aeamc-agent",
            # identity_key = "pkcs11:…"; [wasm] enabled (the default) runs clients' kernels.
            # mDNS is in the agent's own dependencies.
            extras=("hsm", "wasm"),
            suggests=(HSM_SUGGESTS,),
            command="aeamc-agent",
            conffile="agent.toml",
            alternative_priority=10,
            docs=("agent.md", "packaging.md"),
            data=(),
            summary="AEAMC edge agent: energy-aware verified compute on a device",
            description=(
                "Runs compute tasks for a Microblock Coordinator on the local network when\n"
                "the device can afford the energy, signs a Proof-of-Task for each and\n"
                "answers spot-checks. Self-contained Python virtualenv in /opt/aeamc-agent;\n"
                "no web3 and no SQLite bindings on the device."
            ),
            first_install_note=(
                "aeamc-agent: device identity created in /var/lib/aeamc-agent.\n"
                "aeamc-agent: edit /etc/aeamc/agent.toml, then: "
                "systemctl enable --now aeamc-agent"
            ),
        ),
        Package(
            name="microblock-coordinator",
            distribution="aeamc-coordinator",
            # identity_key, ca_key, chain.wallet_key, update role keys as pkcs11: URIs;
            # mDNS and the chain (web3) are in the coordinator's own dependencies.
            extras=("hsm",),
            suggests=(HSM_SUGGESTS,),
            command="aeamc-coordinator",
            conffile="coordinator.toml",
            alternative_priority=20,
            # The runbook the alerts link to, and the alert rules and Grafana dashboard.
            docs=("coordinator.md", "anchoring.md", "runbook.md", "packaging.md"),
            data=("monitoring",),
            summary="AEAMC Microblock Coordinator",
            description=(
                "Enrolls and scores the devices of a LAN, assigns tasks, verifies every\n"
                "proof, forms hash-chained microblocks and anchors them to Ethereum.\n"
                "Self-contained Python virtualenv in /opt/microblock-coordinator."
            ),
            first_install_note=(
                "microblock-coordinator: identity and initial tokens created in\n"
                "microblock-coordinator:   /var/lib/microblock-coordinator "
                "(tokens/operator.token, tokens/client.token)\n"
                "microblock-coordinator: start it with: "
                "systemctl enable --now microblock-coordinator"
            ),
        ),
    )
}


class BuildError(Exception):
    """The build cannot go on; the message says why."""


def log(message: str) -> None:
    print(f"build-debs: {message}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str | os.PathLike[str]], **kwargs: object) -> str:
    """Run ``cmd``; on failure raise with its output, which is otherwise kept quiet."""
    result = subprocess.run(
        [str(c) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )
    if result.returncode != 0:
        raise BuildError(f"{' '.join(map(str, cmd))} failed:\n{result.stdout}")
    return result.stdout


# -- versions ---------------------------------------------------------------------------------


def debian_version(python_version: str) -> str:
    """PEP 440 → Debian, keeping the order: ``1.0~rc1 < 1.0 < 1.0+post1 < 1.0.1``."""
    version = re.sub(r"\.post(?=\d)", "+post", python_version)
    return re.sub(r"(?<=\d)\.?(a|b|rc|dev)(?=\d)", r"~\1", version)


# -- wheels -----------------------------------------------------------------------------------


def build_own_wheels(
    source: Path, work: Path, projects: Sequence[str] = PROJECTS
) -> tuple[Path, str]:
    """Wheels of the distributions, built from a clean copy of ``source``."""
    copies, wheels = work / "src", work / "own-wheels"
    ignore = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc")
    for project in projects:
        shutil.copytree(source / project, copies / project, ignore=ignore)
    # The repository venv has the pinned setuptools; elsewhere pip fetches one.
    isolation = ["--no-build-isolation"] if _has_setuptools() else []
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", wheels]
        + isolation
        + [copies / p for p in projects]
    )
    versions = {}
    for wheel in wheels.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        versions[name] = version
    if len(set(versions.values())) != 1 or len(versions) != len(projects):
        raise BuildError(f"the distributions must have one version, found {versions}")
    return wheels, next(iter(versions.values()))


def build_release(source: Path, out: Path) -> list[Path]:
    """The wheels of an agent release for ``aeamc-coordinator release publish``."""
    with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX) as tmp:
        wheels, _ = build_own_wheels(source, Path(tmp), RELEASE_PROJECTS)
        out.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copy2(w, out / w.name)) for w in sorted(wheels.glob("*.whl"))]


def _has_setuptools() -> bool:
    return importlib.util.find_spec("setuptools") is not None


def fetch_dependency_wheels(
    own: Path, cache: Path, constraints: Path, dists: Iterable[str]
) -> None:
    """Every pinned dependency as a wheel for the target interpreter, offline when cached."""
    cache.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "--python", TARGET_PYTHON, "wheel", "-q"]
    args = ["-w", cache, "-c", constraints, "--find-links", own, "--find-links", cache, *dists]
    try:
        run([*base, "--no-index", *args])
    except BuildError:
        log(f"fetching wheels into {cache}")
        run([*base, *args])
    for stale in cache.glob("aeamc_*"):  # ours are rebuilt every time, never cached
        stale.unlink()


# -- the venv ---------------------------------------------------------------------------------


def build_venv(
    pkg: Package, stage: Path, version: str, wheels: Sequence[Path], constraints: Path
) -> Path:
    venv = stage / pkg.venv.lstrip("/")
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([TARGET_PYTHON, "-m", "venv", "--without-pip", venv])
    links = [arg for w in wheels for arg in ("--find-links", w)]
    pip = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q"]
    run(
        [
            *pip,
            *("--no-index", "--no-compile", "--no-warn-script-location", *links),
            *("-c", constraints, f"{pkg.requirement}=={version}", f"aeamc-shared=={version}"),
        ]
    )
    make_final(venv, pkg.venv)
    compile_bytecode(venv, stage)
    return venv


def make_final(venv: Path, final: str) -> None:
    """Rewrite the staging path to the final one where a venv keeps absolute paths."""
    staged = str(venv)
    for path in (venv / "bin").iterdir():
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if staged.encode() not in data:
            continue
        fixed = data.replace(staged.encode(), final.encode())
        path.write_bytes(fixed)
        _fix_record(venv, path, fixed)
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(staged, final))


def _fix_record(venv: Path, script: Path, data: bytes) -> None:
    """Keep each RECORD's hash and size of a rewritten script true."""
    digest = urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    for record in venv.glob("lib/python3*/site-packages/*.dist-info/RECORD"):
        lines = record.read_text().splitlines()
        changed = False
        for i, line in enumerate(lines):
            name = line.split(",", 1)[0]
            if name.endswith(f"/bin/{script.name}"):
                lines[i] = f"{name},sha256={digest},{len(data)}"
                changed = True
        if changed:
            record.write_text("\n".join(lines) + "\n")


def compile_bytecode(venv: Path, stage: Path) -> None:
    """Bytecode as the target will import it, with /opt paths in tracebacks.

    checked-hash pycs stay valid whatever mtimes dpkg gives the sources, and the
    service, whose /opt is read-only, never tries to write any.
    """
    site = next(venv.glob("lib/python3*/site-packages"))
    final = "/" + str(site.relative_to(stage))
    # compileall exits 1 for the odd file that does not compile (some packages ship
    # templates named .py); those are simply imported from source if ever imported.
    compileall = [venv / "bin" / "python", "-m", "compileall", "-q", "-j", "0"]
    subprocess.run(
        [*compileall, "--invalidation-mode", "checked-hash", "-d", final, site],
        stdout=subprocess.DEVNULL,
        check=False,
    )


def assert_relocated(root: Path, forbidden: Iterable[str]) -> None:
    """No file may still name the staging area or the source checkout."""
    needles = [s.encode() for s in forbidden]
    leaks = []
    for path in root.rglob("*"):
        if path.is_symlink():
            target = os.readlink(path).encode()
            if any(n in target for n in needles):
                leaks.append(path)
        elif path.is_file() and any(n in path.read_bytes() for n in needles):
            leaks.append(path)
    if leaks:
        shown = "\n  ".join(str(p.relative_to(root)) for p in leaks[:20])
        raise BuildError(f"build paths left in {len(leaks)} files:\n  {shown}")


# -- the package tree -------------------------------------------------------------------------


def add_files(pkg: Package, stage: Path, source: Path) -> None:
    def put(dest: str, src: Path) -> None:
        target = stage / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)

    usr_bin = stage / "usr" / "bin"
    usr_bin.mkdir(parents=True)
    (usr_bin / pkg.command).symlink_to(f"{pkg.venv}/bin/{pkg.command}")
    put(f"/lib/systemd/system/{pkg.name}.service", HERE / "systemd" / f"{pkg.name}.service")
    put(f"/etc/aeamc/{pkg.conffile}", HERE / "etc" / pkg.conffile)
    (stage / "etc" / "aeamc" / f"{pkg.conffile}.d").mkdir()
    doc = f"/usr/share/doc/{pkg.name}"
    put(f"{doc}/copyright", HERE / "copyright")
    for name in pkg.docs:
        put(f"{doc}/{name}", source / "docs" / name)
    for folder in pkg.data:
        for path in sorted((HERE / folder).iterdir()):
            if path.is_file():
                put(f"/usr/share/{pkg.name}/{folder}/{path.name}", path)


def maintainer_scripts(pkg: Package) -> dict[str, str]:
    values = {
        "PACKAGE": pkg.name,
        "COMMAND": pkg.command,
        "CONFFILE": f"/etc/aeamc/{pkg.conffile}",
        "ALT_PRIORITY": str(pkg.alternative_priority),
        "GECOS": pkg.summary.split(":")[0],
        "FIRST_INSTALL_NOTE": pkg.first_install_note,
    }
    scripts = {}
    for name in ("postinst", "prerm", "postrm"):
        text = (HERE / "debian" / f"{name}.in").read_text()
        text = re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], text)
        scripts[name] = text
    return scripts


def shlib_depends(stage: Path, work: Path) -> list[str]:
    """Debian dependencies of the compiled extensions, from dpkg-shlibdeps."""
    objects = [p for p in stage.rglob("*.so*") if p.is_file() and not p.is_symlink() and _elf(p)]
    if not objects:
        return []
    tree = work / "shlibdeps"
    (tree / "debian").mkdir(parents=True, exist_ok=True)
    (tree / "debian" / "control").write_text("Source: x\n\nPackage: x\nArchitecture: any\n")
    # Libraries a wheel vendors (auditwheel's ``<name>.libs``, found through $ORIGIN) are
    # part of the package: named as search paths, they need no Debian package.
    vendored = sorted({p.parent for p in objects if p.parent.name.endswith(".libs")})
    out = run(
        ["dpkg-shlibdeps", "-O", "--ignore-missing-info", "--warnings=0"]
        + [f"-l{d}" for d in vendored]
        + [f"-e{p}" for p in objects],
        cwd=tree,
    )
    match = re.search(r"^shlibs:Depends=(.*)$", out, re.MULTILINE)
    return [d.strip() for d in match.group(1).split(",")] if match else []


def _elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def write_control(pkg: Package, stage: Path, version: str, arch: str, depends: list[str]) -> None:
    control = stage / "DEBIAN"
    control.mkdir()
    sizes = 0
    md5sums = []
    for path in sorted(stage.rglob("*")):
        rel = path.relative_to(stage)
        if rel.parts[0] == "DEBIAN":
            continue
        if path.is_file() and not path.is_symlink():
            sizes += (path.stat().st_size + 1023) // 1024
            md5sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}")  # noqa: S324
        else:
            sizes += 1
    description = "\n".join(f" {line}" if line else " ." for line in pkg.description.split("\n"))
    fields = {
        "Package": pkg.name,
        "Version": version,
        "Architecture": arch,
        "Maintainer": MAINTAINER,
        "Installed-Size": str(sizes),
        "Depends": ", ".join([PYTHON_DEPENDS, *depends, "adduser"]),
        **({"Suggests": ", ".join(pkg.suggests)} if pkg.suggests else {}),
        "Section": "net",
        "Priority": "optional",
        "Description": f"{pkg.summary}\n{description}",
    }
    (control / "control").write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
    (control / "conffiles").write_text(f"/etc/aeamc/{pkg.conffile}\n")
    (control / "md5sums").write_text("\n".join(md5sums) + "\n")
    for name, text in maintainer_scripts(pkg).items():
        (control / name).write_text(text)
        (control / name).chmod(0o755)


def normalise(stage: Path, epoch: int) -> None:
    """0755 or 0644 by the executable bit, and one timestamp (SOURCE_DATE_EPOCH)."""
    for path in [stage, *stage.rglob("*")]:
        if not path.is_symlink():
            executable = path.is_dir() or path.stat().st_mode & 0o111
            path.chmod(0o755 if executable else 0o644)
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def source_date_epoch(source: Path) -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return int(out)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return int(time.time())


def build_package(
    pkg: Package,
    *,
    source: Path,
    work: Path,
    out: Path,
    version: str,
    arch: str,
    wheels: Sequence[Path],
    compression: str,
    epoch: int,
) -> Path:
    stage = work / "stage" / pkg.name
    constraints = source / "requirements" / "constraints.txt"
    build_venv(pkg, stage, version, wheels, constraints)
    add_files(pkg, stage, source)
    assert_relocated(stage, [str(work), str(source), str(REPO)])
    deb_version = debian_version(version)
    write_control(pkg, stage, deb_version, arch, shlib_depends(stage, work))
    normalise(stage, epoch)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"{pkg.name}_{deb_version}_{arch}.deb"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    run(
        ["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", stage, deb],
        env=env,
    )
    return deb


def check_tools() -> None:
    missing = [t for t in ("dpkg-deb", "dpkg-shlibdeps") if shutil.which(t) is None]
    if not Path(TARGET_PYTHON).exists():
        missing.append(f"{TARGET_PYTHON} (package python3.11)")
    if missing:
        raise BuildError(f"missing: {', '.join(missing)} (see requirements/debian.txt)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/build.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="default: dist/")
    parser.add_argument(
        "--source", type=Path, default=REPO, help="source tree to package (default: this one)"
    )
    parser.add_argument(
        "--package",
        action="append",
        choices=sorted(PACKAGES),
        help="build only this package (repeatable; default: both)",
    )
    parser.add_argument(
        "--wheel-cache",
        type=Path,
        default=REPO / "build" / "packaging" / "wheels",
        help="dependency wheels kept between builds (default: build/packaging/wheels)",
    )
    parser.add_argument(
        "-Z",
        "--compression",
        choices=["xz", "zstd", "gzip"],
        default="xz",
        help="xz (default) is the smallest and readable by every dpkg; zstd is much faster",
    )
    parser.add_argument(
        "--release",
        action="store_true",
        help="build only the wheels of an agent release (fleet update), into --out",
    )
    args = parser.parse_args(argv)
    source = args.source.resolve()
    if args.release:
        try:
            for wheel in build_release(source, args.out.resolve()):
                log(str(wheel))
        except BuildError as exc:
            log(str(exc))
            return 1
        return 0
    try:
        check_tools()
        declared = set_version.current(source)
        if len(set(declared.values())) != 1:
            raise BuildError(f"__version__ differs between distributions: {declared}")
        arch = run(["dpkg", "--print-architecture"]).strip()
        packages = [PACKAGES[n] for n in (args.package or sorted(PACKAGES))]
        with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX) as tmp:
            work = Path(tmp)
            started = time.monotonic()
            own, version = build_own_wheels(source, work)
            cache = args.wheel_cache.resolve()
            constraints = source / "requirements" / "constraints.txt"
            fetch_dependency_wheels(own, cache, constraints, [p.requirement for p in packages])
            epoch = source_date_epoch(source)
            for pkg in packages:
                deb = build_package(
                    pkg,
                    source=source,
                    work=work,
                    out=args.out.resolve(),
                    version=version,
                    arch=arch,
                    wheels=[own, cache],
                    compression=args.compression,
                    epoch=epoch,
                )
                log(f"{deb} ({deb.stat().st_size // 1024} KiB)")
            log(f"done in {time.monotonic() - started:.0f} s")
    except BuildError as exc:
        log(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
