"""Install, run, upgrade, roll back, remove and purge both packages for real.

dpkg runs inside a throwaway copy-on-write root (tests/packaging/throwaway.py): the
maintainer scripts create real system users and directories, all of it in a private
layer, never on this host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aeamc.shared.identity import device_id_for
from tests.hsm.conftest import MODULE_CANDIDATES

from .conftest import AGENT, COORDINATOR, Build, clean_env
from .throwaway import Throwaway, unavailable

# Building the packages (twice, for upgrades) and installing them in a container take
# longer than the suite's default 300 s on a machine busy with other tests.
pytestmark = pytest.mark.timeout(900)

if (reason := unavailable()) is not None:
    pytest.skip(reason, allow_module_level=True)

AS_AGENT = "setpriv --reuid=aeamc-agent --regid=aeamc-agent --clear-groups --reset-env"
AS_COORDINATOR = (
    "setpriv --reuid=microblock-coordinator --regid=microblock-coordinator --clear-groups "
    "--reset-env"
)
STATE = {AGENT: "/var/lib/aeamc-agent", COORDINATOR: "/var/lib/microblock-coordinator"}
CONFFILE = {AGENT: "/etc/aeamc/agent.toml", COORDINATOR: "/etc/aeamc/coordinator.toml"}

# A stand-in for systemctl that records its calls, so that maintainer scripts (and
# `service`) can be watched talking to a systemd that is "running" (/run/systemd/system).
# This host's policy-rc.d (if any) would forbid starting and stopping: replaced.
FAKE_SYSTEMD = """
printf '#!/bin/sh\\nexit 0\\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
mkdir -p /run/systemd/system /tmp/fake-bin
cat > /tmp/fake-bin/systemctl <<'EOF'
#!/bin/sh
echo "systemctl $*" >> /tmp/systemctl.log
case "$*" in
    *is-active*) [ -e /tmp/fake-active ] ;;
    *is-enabled*) echo enabled ;;
esac
EOF
chmod +x /tmp/fake-bin/systemctl
: > /tmp/systemctl.log
export PATH=/tmp/fake-bin:$PATH
"""


def deb(build: Build, package: str) -> str:
    """The .deb's path inside the throwaway root (the builds' parent is on /mnt)."""
    return f"/mnt/{build.debs.name}/{build.deb(package).name}"


def sandbox(base: Path, debs: Build) -> Throwaway:
    box = Throwaway(base, debs.debs.parent)
    if (problem := box.probe()) is not None:
        pytest.skip(problem)
    return box


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, debs: Build) -> Throwaway:
    """A root where both packages were just installed, side by side."""
    box = sandbox(tmp_path_factory.mktemp("installed"), debs)
    out = box.out(f"dpkg -i {deb(debs, AGENT)} {deb(debs, COORDINATOR)}")
    assert "device identity created in /var/lib/aeamc-agent" in out
    assert "identity and initial tokens created" in out
    return box


def test_users_state_and_conffiles(installed: Throwaway) -> None:
    for package in (AGENT, COORDINATOR):
        user = installed.out(f"getent passwd {package}").strip().split(":")
        assert int(user[2]) < 1000  # a system user
        assert user[5:] == [STATE[package], "/usr/sbin/nologin"]
        stat = installed.out(
            f"stat -c '%U:%G %a' {STATE[package]} {STATE[package]}/identity.key {CONFFILE[package]}"
        )
        assert stat.split("\n")[:3] == [
            f"{package}:{package} 700",
            f"{package}:{package} 600",
            f"root:{package} 640",  # it may hold an enrollment token
        ]
    tokens = installed.out(f"ls {STATE[COORDINATOR]}/tokens").split()
    assert tokens == ["client.token", "operator.token"]


def test_commands(installed: Throwaway, debs: Build) -> None:
    out = installed.out("aeamc-agent --version; aeamc-coordinator --version; aeamc --version")
    assert out.split("\n")[:3] == [
        f"aeamc-agent {debs.version}",
        f"aeamc-coordinator {debs.version}",
        f"aeamc {debs.version}",
    ]
    # Both packages offer /usr/bin/aeamc; the coordinator's (with chain support) wins.
    assert installed.out("readlink -f /usr/bin/aeamc").strip() == (
        "/opt/microblock-coordinator/bin/aeamc"
    )


def test_agent_status_as_its_user(installed: Throwaway) -> None:
    status = json.loads(installed.out(f"{AS_AGENT} aeamc-agent status --json"))
    assert status["running"] is False
    assert status["identity_error"] is None
    assert re.fullmatch(r"[0-9a-f]{32}", status["device_id"])


def until_coordinator_port(pid: str, log: str, tries: int, indent: str = " " * 8) -> str:
    """Shell lines (for a script indented by ``indent``) that wait until the coordinator
    has written its port file, failing with its ``log`` if process ``$pid`` died first."""
    lines = [
        f"for i in $(seq {tries}); do",
        f"    [ -s {STATE[COORDINATOR]}/coordinator.port ] && break",
        f"    kill -0 ${pid} || {{ cat {log} >&2; exit 1; }}",
        "    sleep 0.2",
        "done",
    ]
    return ("\n" + indent).join(lines)


def test_coordinator_runs_and_answers_status(installed: Throwaway) -> None:
    out = installed.out(
        f"""
        sed -i -e 's/^port = 8443/port = 0/' -e 's/^mdns = true/mdns = false/' \
            {CONFFILE[COORDINATOR]}
        {AS_COORDINATOR} aeamc-coordinator --config {CONFFILE[COORDINATOR]} run 2>/tmp/run.log &
        pid=$!
        trap 'kill $pid 2>/dev/null' EXIT
        {until_coordinator_port("pid", "/tmp/run.log", 100)}
        aeamc-coordinator status --json
        """,
    )
    assert json.loads(out)["health"]["status"] == "ok"


def test_units_verify_where_installed(installed: Throwaway) -> None:
    result = installed.run(
        "systemd-analyze verify --man=no aeamc-agent.service microblock-coordinator.service"
    )
    assert result.stdout + result.stderr == ""


def test_service_command_maps_to_systemctl(installed: Throwaway) -> None:
    log = installed.out(
        FAKE_SYSTEMD + "service microblock-coordinator restart; cat /tmp/systemctl.log"
    )
    assert "systemctl restart microblock-coordinator.service" in log.splitlines()


def test_postinst_is_idempotent(installed: Throwaway, debs: Build) -> None:
    script = f"""
        before=$(sha256sum {STATE[AGENT]}/identity.key {STATE[COORDINATOR]}/identity.key)
        for p in {AGENT} {COORDINATOR}; do
            /var/lib/dpkg/info/$p.postinst configure {debs.version}
            /var/lib/dpkg/info/$p.postinst configure {debs.version}
        done
        after=$(sha256sum {STATE[AGENT]}/identity.key {STATE[COORDINATOR]}/identity.key)
        [ "$before" = "$after" ]
        getent passwd {AGENT} {COORDINATOR} | wc -l
        dpkg-statoverride --list | grep -c /etc/aeamc/
    """
    result = installed.run(script)
    assert result.stdout.split()[-2:] == ["2", "2"]
    assert "created" not in result.stdout  # no new identity, no new tokens


def test_upgrade_rollback_remove_purge(
    tmp_path_factory: pytest.TempPathFactory, debs: Build, next_debs: Build
) -> None:
    box = sandbox(tmp_path_factory.mktemp("lifecycle"), debs)
    both = f"{deb(debs, AGENT)} {deb(debs, COORDINATOR)}"
    both_next = f"{deb(next_debs, AGENT)} {deb(next_debs, COORDINATOR)}"
    fingerprint = (
        f"sha256sum {STATE[AGENT]}/identity.key {STATE[COORDINATOR]}/identity.key"
        f" {STATE[COORDINATOR]}/tokens/operator.token {CONFFILE[AGENT]}"
    )
    box.out(
        f"""
        dpkg -i {both}
        echo '# edited by the administrator' >> {CONFFILE[AGENT]}
        echo 'mdns = false' > {CONFFILE[AGENT]}.d/10-local.toml
        systemctl enable {AGENT}.service {COORDINATOR}.service 2>/dev/null
        """
    )
    before = box.out(fingerprint)

    # Upgrade while "running": prerm stops the service, postinst starts it again.
    out = box.out(
        f"{FAKE_SYSTEMD} touch /tmp/fake-active; dpkg -i {both_next}; cat /tmp/systemctl.log"
    )
    assert "systemctl stop aeamc-agent.service" in out
    assert "systemctl start aeamc-agent.service" in out
    assert "systemctl start microblock-coordinator.service" in out
    assert "identity" not in out  # nothing created again
    assert box.out("aeamc-agent --version; aeamc-coordinator --version").split() == [
        "aeamc-agent",
        next_debs.version,
        "aeamc-coordinator",
        next_debs.version,
    ]
    assert box.out(fingerprint) == before  # identities, tokens, edited conffile
    assert box.out(f"cat {CONFFILE[AGENT]}.d/10-local.toml") == "mdns = false\n"
    assert box.out(f"systemctl is-enabled {AGENT}.service").strip() == "enabled"

    # Rolling back is installing the previous .deb.
    box.out(f"dpkg -i {both}")
    assert box.out("aeamc-agent --version").split() == ["aeamc-agent", debs.version]
    assert box.out(fingerprint) == before

    # remove: the service stops, the software goes; configuration, state and users stay.
    out = box.out(
        f"{FAKE_SYSTEMD} touch /tmp/fake-active; dpkg -r {AGENT} {COORDINATOR};"
        " cat /tmp/systemctl.log"
    )
    assert "systemctl stop microblock-coordinator.service" in out
    left = box.run(
        f"ls /opt/{AGENT} /opt/{COORDINATOR} /usr/bin/aeamc-agent /usr/bin/aeamc", check=False
    )
    assert left.stdout == ""
    assert box.out(fingerprint) == before
    assert box.out(f"getent passwd {AGENT} {COORDINATOR} | wc -l").strip() == "2"
    assert box.run("update-alternatives --list aeamc", check=False).returncode != 0

    # Installing again finds everything as it was.
    box.out(f"dpkg -i {both_next}")
    assert box.out(fingerprint) == before

    # purge: configuration, state, drop-ins, users and enablement links all go.
    box.out(f"dpkg -P {AGENT} {COORDINATOR}")
    gone = box.run(
        f"ls -d /etc/aeamc {STATE[AGENT]} {STATE[COORDINATOR]} "
        "/etc/systemd/system/multi-user.target.wants/aeamc-agent.service",
        check=False,
    )
    assert gone.stdout == ""
    assert box.run(f"getent passwd {AGENT}", check=False).returncode == 2
    assert box.run(f"getent group {COORDINATOR}", check=False).returncode == 2
    assert box.out("dpkg-statoverride --list | grep -c /etc/aeamc/ || true").strip() == "0"
    assert "config-files" not in box.out(f"dpkg -l {AGENT} {COORDINATOR} 2>&1 || true")


def test_drop_ins_override_the_conffile(installed: Throwaway) -> None:
    script = f"""
        trap 'rm -f {CONFFILE[AGENT]}.d/50-test.toml {CONFFILE[COORDINATOR]}.d/50-test.toml' EXIT
        echo 'coordinator_url = "https://192.0.2.7:8443"' > {CONFFILE[AGENT]}.d/50-test.toml
        {AS_AGENT} aeamc-agent status --json
        printf '[server]\\nno_such_setting = 1\\n' > {CONFFILE[COORDINATOR]}.d/50-test.toml
        rc=0; aeamc-coordinator status 2>/dev/null || rc=$?
        echo "coordinator exit $rc"
    """
    out = installed.out(script)
    status, _, last = out.rpartition("coordinator exit ")
    assert json.loads(status)["coordinator"]["url"] == "https://192.0.2.7:8443"
    assert last.strip() == "78"  # the drop-in was read, and its bad key refused


# -- keys in an HSM ---------------------------------------------------------------------------

HSM_PIN, HSM_SO_PIN, HSM_TOKEN = "4321", "87654321", "aeamc"
#: Where each service's SoftHSM2 token lives in the throwaway root (SOFTHSM2_CONF there).
HSM_DIR = {p: f"/var/lib/aeamc-hsm/{p}" for p in (AGENT, COORDINATOR)}
HSM_KEY = {AGENT: "device", COORDINATOR: "coordinator"}
COMMAND = "aeamc-coordinator"


def softhsm_module() -> str:
    """The host's SoftHSM2 PKCS#11 module, which the throwaway root sees at the same path."""
    for path in MODULE_CANDIDATES:
        if Path(path).exists():
            return path
    pytest.fail("SoftHSM2 is not installed: apt-get install -y softhsm2 (requirements/debian.txt)")


def hsm_uri(package: str, module: str) -> str:
    """The RFC 7512 URI of the service's identity key, PIN from a file only it can read."""
    query = f"module-path={module}&pin-source=file://{HSM_DIR[package]}/user.pin"
    return f"pkcs11:token={HSM_TOKEN};object={HSM_KEY[package]}?{query}"


def token_public_key(upper: Path, package: str, module: str) -> bytes:
    """The Ed25519 public key of the service's token key, read straight from the token
    files the throwaway root left in its upper layer, by python-pkcs11 in a separate
    interpreter (this process may already have SoftHSM2 loaded with another token)."""
    conf = upper.parent / f"softhsm2-{package}.conf"
    conf.write_text(
        f"directories.tokendir = {upper}{HSM_DIR[package]}/tokens\n"
        "objectstore.backend = file\nlog.level = ERROR\n"
    )
    code = (
        "import sys, pkcs11\n"
        "from pkcs11 import Attribute, ObjectClass\n"
        "token = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])\n"
        "with token.open(user_pin=sys.argv[3]) as s:\n"
        "    key = s.get_key(object_class=ObjectClass.PUBLIC_KEY, label=sys.argv[4])\n"
        "    sys.stdout.write(key[Attribute.EC_POINT].hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, module, HSM_TOKEN, HSM_PIN, HSM_KEY[package]],
        capture_output=True,
        text=True,
        env={**clean_env(), "SOFTHSM2_CONF": str(conf)},
        check=True,
        timeout=60,
    ).stdout
    point = bytes.fromhex(out)
    # CKA_EC_POINT is the DER OCTET STRING of the 32-byte key (PKCS#11 3.0, §2.3.7).
    return point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point


def test_packaged_services_sign_with_keys_in_softhsm(
    tmp_path_factory: pytest.TempPathFactory, debs: Build
) -> None:
    """Both packages as installed, each with its identity key in a SoftHSM2 token: the
    venvs under /opt hold python-pkcs11, the coordinator answers with the id of its token
    key, and the agent enrolls under the id of its own."""
    module = softhsm_module()
    box = sandbox(tmp_path_factory.mktemp("hsm"), debs)
    box.out(f"dpkg -i {deb(debs, AGENT)} {deb(debs, COORDINATOR)}")
    coordinator_uri, agent_uri = hsm_uri(COORDINATOR, module), hsm_uri(AGENT, module)
    hsm_env = {p: f"env SOFTHSM2_CONF={HSM_DIR[p]}/softhsm2.conf" for p in HSM_DIR}
    coordinator = f"{AS_COORDINATOR} {hsm_env[COORDINATOR]} /opt/{COORDINATOR}/bin/{COMMAND}"
    agent = f"{AS_AGENT} {hsm_env[AGENT]} /opt/{AGENT}/bin/aeamc-agent"
    script = f"""
        # One SoftHSM2 token per service, in a directory only that service's user owns.
        for p in {AGENT} {COORDINATOR}; do
            d=/var/lib/aeamc-hsm/$p
            mkdir -p $d/tokens
            printf 'directories.tokendir = %s/tokens\\nobjectstore.backend = file\\n' $d \
                > $d/softhsm2.conf
            SOFTHSM2_CONF=$d/softhsm2.conf softhsm2-util --init-token --free --label {HSM_TOKEN} \
                --so-pin {HSM_SO_PIN} --pin {HSM_PIN} >/dev/null
            (umask 077; echo {HSM_PIN} > $d/user.pin)
            chown -R $p:$p $d
            # A fresh identity: the one postinst made in a file goes, with its state.
            find /var/lib/$p -mindepth 1 -delete
        done

        sed -i -e 's/^port = 8443/port = 0/' -e 's/^mdns = true/mdns = false/' \
            -e '/^state_dir = /a identity_key = "{coordinator_uri}"' {CONFFILE[COORDINATOR]}
        {coordinator} --config {CONFFILE[COORDINATOR]} init >/tmp/coordinator-init.log
        {coordinator} --config {CONFFILE[COORDINATOR]} run 2>/tmp/coordinator.log &
        cpid=$!
        trap 'kill $cpid $apid 2>/dev/null' EXIT
        {until_coordinator_port("cpid", "/tmp/coordinator.log", 150)}
        port=$(cat {STATE[COORDINATOR]}/coordinator.port)
        {coordinator} --config {CONFFILE[COORDINATOR]} status --json > /tmp/status.json
        token=$({coordinator} --config {CONFFILE[COORDINATOR]} token create --role enroll \
            | sed -n 's/.*"token": *"\\([^"]*\\)".*/\\1/p')

        cat > {CONFFILE[AGENT]} <<EOF
        state_dir = "{STATE[AGENT]}"
        identity_key = "{agent_uri}"
        coordinator_url = "https://127.0.0.1:$port"
        enrollment_token = "$token"
        [listen]
        host = "127.0.0.1"
        port = 0
        [mdns]
        enabled = false
        EOF
        {agent} --config {CONFFILE[AGENT]} init >/tmp/agent-init.log
        {agent} --config {CONFFILE[AGENT]} run 2>/tmp/agent.log &
        apid=$!
        for i in $(seq 150); do
            {coordinator} --config {CONFFILE[COORDINATOR]} devices list --json > /tmp/devices.json
            grep -q device_id /tmp/devices.json && break
            kill -0 $apid || {{ cat /tmp/agent.log >&2; exit 1; }}
            sleep 0.2
        done
        {agent} --config {CONFFILE[AGENT]} status --json > /tmp/agent-status.json
        python3 -c 'import json, sys; print(json.dumps({{n: json.load(open(f"/tmp/{{n}}.json"))
            for n in ("status", "devices", "agent-status")}}))'
        ls {STATE[AGENT]} {STATE[COORDINATOR]}
    """
    out = box.out(textwrap.dedent(script))
    first, _, files = out.partition("\n")
    report = json.loads(first)
    # The keys are the tokens': no identity file was written.
    assert "identity.key" not in files.split()
    coordinator_id = device_id_for(token_public_key(box.upper, COORDINATOR, module))
    device_id = device_id_for(token_public_key(box.upper, AGENT, module))
    assert report["status"]["health"]["status"] == "ok"
    assert report["status"]["health"]["coordinator_id"] == coordinator_id
    assert report["agent-status"]["device_id"] == device_id
    # Enrolling is signed by the device key: the coordinator knows the device by its id.
    assert [d["device_id"] for d in report["devices"]] == [device_id]
