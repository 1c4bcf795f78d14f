"""Adversarial input against one real coordinator process.

Real state first (devices in every state, a task proved, spot-checked and in a block, an
open assignment), then a database snapshot, then well over 10,000 malformed, forged,
replayed and misdirected requests to every route of the OpenAPI document, then the
snapshot again. Every request must get a 4xx with ``{"error": {"code", "message"}}`` (or
a 2xx on a read), nothing may answer 5xx, and the database must be exactly as before.

The families run in file order and share one coordinator; the last test checks the totals.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aeamc.shared.identity import SigningKey, sign_message
from aeamc.shared.messages import TASK_ID_PATTERN
from aeamc.shared.proofs import Trace
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import GOOD_TELEMETRY, enroll_fields, fresh_pot

from .harness import Fuzzer, snapshot
from .payloads import (
    INVALID_OBJECT,
    WRONG_VALUES,
    bad_json_bodies,
    delete,
    dumps,
    flip_hex,
    get,
    huge_bodies,
    object_paths,
    paths,
    replace,
    resign,
)
from .setup_state import HEARTBEAT_WINDOW_S, SETTINGS, State, build_state

pytestmark = pytest.mark.timeout(600)

MIN_REQUESTS = 10_000
MISSING = "__missing__"
#: Proof freshness window (``protocol.pot_window_s``, default).
POT_WINDOW_MS = 300_000
FUZZ = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
#: Routes the document must list (new ones are picked up from the document itself).
EXPECTED_ROUTES = {
    ("POST", "/v1/enroll"),
    ("POST", "/v1/heartbeats"),
    ("POST", "/v1/proofs"),
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/{task_id}"),
    ("POST", "/v1/tokens"),
    ("GET", "/v1/devices"),
    ("GET", "/v1/devices/{device_id}"),
    ("POST", "/v1/devices/{device_id}/approve"),
    ("POST", "/v1/devices/{device_id}/quarantine"),
    ("GET", "/v1/microblocks"),
    ("GET", "/v1/microblocks/{height}"),
    ("GET", "/v1/microblocks/{height}/raw"),
    ("GET", "/v1/receipts/{task_id}/{device_id}/proof"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/privacy"),
    ("POST", "/dashboard/login"),
}
#: Writes that parse (and so refuse) a malformed body before anything else.
BODY_FIRST = {
    ("POST", p)
    for p in (
        "/v1/enroll",
        "/v1/heartbeats",
        "/v1/proofs",
        "/v1/tasks",
        "/v1/tokens",
        "/v1/devices/{device_id}/approve",
        "/v1/devices/{device_id}/quarantine",
        "/dashboard/login",
    )
}
ALL_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")

#: Writes whose body is optional: an empty one is no body, and the action proceeds.
OPTIONAL_BODY = {"/approve", "/quarantine"}


class Env:
    def __init__(self, coord: CoordinatorProcess, state: State, fuzzer: Fuzzer) -> None:
        self.coord = coord
        self.state = state
        self.fuzzer = fuzzer
        self.before: dict[str, Any] = {}
        doc = json.loads(fuzzer.send("GET", "/v1/openapi.json").reply)
        self.routes = sorted(
            (m.upper(), p)
            for p, ops in doc["paths"].items()
            for m in ops
            if m.upper() in {"GET", "POST", "PUT", "DELETE", "PATCH"}
        )
        self.other_key = SigningKey.from_seed(b"\x07" * 32)

    # -- path parameters ------------------------------------------------------------------

    def fill(self, template: str, value: str | None = None) -> str:
        """The template with real ids, or every parameter set to ``value`` (raw)."""
        s = self.state
        real = {
            "device_id": s.device.device_id,
            "task_id": s.done_task,
            "height": str(s.block_height),
            "name": "dashboard.js",
        }
        out = template
        for name, v in real.items():
            out = out.replace("{" + name + "}", v if value is None else value)
        return out

    def guard(self, method: str, path: str) -> str | None:
        """The token that gets a request past authentication on this route, if any."""
        if path.startswith("/v1/devices") or path in ("/v1/tokens", "/v1/status"):
            return self.state.operator
        if path.startswith("/v1/tasks"):
            return self.state.client
        if path == "/dashboard/samples":
            return self.state.operator
        return None

    def send(self, method: str, path: str, body: bytes | None = None, **kw: Any) -> Any:
        return self.fuzzer.send(method, path, body, **kw)


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    coord = CoordinatorProcess(tmp_path_factory.mktemp("fuzz") / "coord", settings=SETTINGS)
    coord.init()
    coord.start()
    try:
        state = asyncio.run(build_state(coord))
        fuzzer = Fuzzer("127.0.0.1", coord.port, coord.ssl_context(state.device))
        e = Env(coord, state, fuzzer)
        e.before = snapshot(coord.state_dir / "coordinator.db")
        e.started = time.monotonic()  # type: ignore[attr-defined]
        yield e
        fuzzer.close()
    finally:
        coord.stop()


def check(fuzz_env: Env) -> None:
    failures = fuzz_env.fuzzer.take_failures()
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:50])


# -- every route, every method, every parameter ---------------------------------------------


def test_openapi_lists_every_route(fuzz_env: Env) -> None:
    missing = EXPECTED_ROUTES - set(fuzz_env.routes)
    assert not missing, missing


BAD_PARAMS = [
    "",
    "-1",
    "0" * 31,
    "A" * 32,
    "g" * 32,
    "0" * 33,
    "1e3",
    "0x10",
    " 1",
    "1 ",
    "+1",
    "１",  # fullwidth digit: int() would accept it
    str(2**53),
    str(2**53 + 1),
    str(2**64),
    "9" * 4000,
    "x" * 3_000,
    "..",
    "../..",
    "../../../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e",
    "%00",
    "a%00b",
    "%ff%fe",
    "%",
    "%zz",
    "é",
    "💥",
    "\u202e",
    "null",
    "undefined",
    "{device_id}",
    "*",
    "' OR 1=1 --",
    "%0d%0aX-Injected: 1",
]


def _quoted(value: str) -> list[str]:
    """The raw value where it is valid in a request line, and its percent-encoding."""
    out = [urllib.parse.quote(value, safe="")]
    if value.isascii() and " " not in value and value.isprintable():
        out.append(value)
    return out


def test_routes_methods_and_path_parameters(fuzz_env: Env) -> None:
    s = fuzz_env.state
    templates = sorted({p for _, p in fuzz_env.routes})
    for template in templates:
        variants = [fuzz_env.fill(template)]
        if "{" in template:
            variants += [fuzz_env.fill(template, q) for v in BAD_PARAMS for q in _quoted(v)]
            # Real devices of every kind, one parameter at a time.
            for dev in (s.pending, s.quarantined):
                variants.append(template.replace("{device_id}", dev.device_id))
        for path in variants:
            for method in ALL_METHODS:
                registered = (method, template) in fuzz_env.routes
                tokens: list[str | None] = [None, "wrong", s.client, s.operator, s.enroll_token]
                for token in tokens:
                    if registered and method != "GET":
                        # Past authentication a write may act: only routes known to read
                        # (and refuse) their body first get the token that opens them.
                        if token == s.operator and (method, template) not in BODY_FIRST:
                            continue
                        fuzz_env.send(method, path, b"{", token=token)
                    else:
                        fuzz_env.send(method, path, token=token)
    # A method no HTTP parser knows: refused by aiohttp's protocol layer, before the app,
    # with a plain-text 400 (see test_invalid_http).
    # Paths that match no route at all.
    for path in (
        "/v1",
        "/v1/",
        "/v1/nope",
        "/v1/devices/",
        "/v1/tasks/",
        "/v1/microblocks/0/raw/x",
        "/v1/receipts/x",
        "/" + "a" * 3000,
        "/%00",
        "/v1/../v1/health",
        "/v1/%2e%2e/v1/status",
        "//v1//health",
        "/dashboard/static/..%2f..%2fdashboard%2fweb.py",
        "/dashboard/static/%2e%2e/%2e%2e/web.py",
    ):
        for method in ("GET", "POST", "DELETE"):
            fuzz_env.send(method, path, b"{" if method == "POST" else None, token=s.operator)
    check(fuzz_env)


@FUZZ
@given(
    data=st.data(),
    param=st.text(min_size=0, max_size=300)
    | st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)
def test_hypothesis_path_parameters(fuzz_env: Env, data: st.DataObject, param: str) -> None:
    s = fuzz_env.state
    template = data.draw(st.sampled_from([p for _, p in fuzz_env.routes if "{" in p]))
    method = next(m for m, p in fuzz_env.routes if p == template)
    value = urllib.parse.quote(param, safe="")
    token = data.draw(st.sampled_from([None, s.client, s.operator]))
    fuzz_env.send(
        method, fuzz_env.fill(template, value), b"{" if method == "POST" else None, token=token
    )


def test_query_parameters(fuzz_env: Env) -> None:
    s = fuzz_env.state
    for path in ("/v1/tasks", "/v1/microblocks", "/dashboard/samples"):
        for name in ("limit", "from", "state", "since", "x"):
            for v in BAD_PARAMS:
                for q in _quoted(v):
                    fuzz_env.send("GET", f"{path}?{name}={q}", token=s.operator)
            fuzz_env.send("GET", f"{path}?{name}=1&{name}=2", token=s.operator)
            fuzz_env.send("GET", f"{path}?{name}", token=s.operator)
    check(fuzz_env)


# -- bodies ---------------------------------------------------------------------------------


def _post_routes(fuzz_env: Env) -> list[tuple[str, str, str | None]]:
    """Every write route with a real path, and the token that gets past authentication on
    the routes that refuse a bad body first (the others get their body without it)."""
    return [
        (m, fuzz_env.fill(p), fuzz_env.guard(m, p) if (m, p) in BODY_FIRST else None)
        for m, p in fuzz_env.routes
        if m != "GET"
    ]


def test_bad_json_every_post_route(fuzz_env: Env) -> None:
    for method, path, token in _post_routes(fuzz_env):
        for _label, body in bad_json_bodies():
            if not body and path.endswith(tuple(OPTIONAL_BODY)):
                continue  # no body at all: a valid approval or quarantine
            fuzz_env.send(method, path, body, token=token)
    check(fuzz_env)


def test_huge_bodies_every_post_route(fuzz_env: Env) -> None:
    for method, path, token in _post_routes(fuzz_env):
        for _label, body in huge_bodies():
            fuzz_env.send(method, path, body, token=token)
    check(fuzz_env)


CONTENT_TYPES = [
    None,
    "",
    "text/plain",
    "application/jsonx",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=zz",
    "application/json; charset=utf-16",
    "APPLICATION/JSON",
    "application/*",
    "application/json, text/plain",
    "\u00e9/json",
]


def test_wrong_content_types(fuzz_env: Env) -> None:
    bodies = [dumps(INVALID_OBJECT), b"token=nope&x=1", b"--zz\r\nbroken", b"\x00\xff"]
    for method, path, token in _post_routes(fuzz_env):
        for ctype in CONTENT_TYPES:
            for body in bodies:
                headers = {} if ctype is None else {"Content-Type": ctype}
                fuzz_env.send(method, path, body, headers=headers, content_type=None, token=token)
    check(fuzz_env)


@FUZZ
@given(data=st.data(), body=st.binary(max_size=2000))
def test_hypothesis_random_bytes(fuzz_env: Env, data: st.DataObject, body: bytes) -> None:
    method, path, token = data.draw(st.sampled_from(_post_routes(fuzz_env)))
    if not body and path.endswith(tuple(OPTIONAL_BODY)):
        body = b"{"  # no body at all would be a valid approval or quarantine
    fuzz_env.send(method, path, body, token=token)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=12), children, max_size=8)
    ),
    max_leaves=40,
)


@FUZZ
@given(data=st.data(), value=JSON)
def test_hypothesis_random_json(fuzz_env: Env, data: st.DataObject, value: Any) -> None:
    method, path, token = data.draw(st.sampled_from(_post_routes(fuzz_env)))
    # With a working token an object could be a valid order (``{}`` creates an enrollment
    # token); the unknown member keeps it refused however the rest looks.
    if isinstance(value, dict):
        value = {**value, **INVALID_OBJECT}
    fuzz_env.send(method, path, dumps(value), token=token)


# -- message templates and per-field mutations -------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _stale() -> int:
    return now_ms() - 3_600_000


def _split(route: str) -> tuple[str, str]:
    """``"DELETE /path"`` or a bare path (a POST)."""
    method, _, path = route.rpartition(" ")
    return method or "POST", path


def _privacy(key: SigningKey, device_id: str, action: str, ts: int | None = None) -> dict[str, Any]:
    body = {
        "type": "privacy",
        "device_id": device_id,
        "action": action,
        "timestamp": now_ms() if ts is None else ts,
    }
    return sign_message(body, key)


def privacy_routes(fuzz_env: Env) -> dict[str, str]:
    """Routes a device authorises with a signed privacy request, by action."""
    dev = fuzz_env.state.device.device_id
    out = {}
    if ("DELETE", "/v1/devices/{device_id}") in fuzz_env.routes:
        out["erase"] = f"DELETE /v1/devices/{dev}"
    if ("POST", "/v1/devices/{device_id}/export") in fuzz_env.routes:
        out["export"] = f"/v1/devices/{dev}/export"
    return out


def templates(fuzz_env: Env) -> list[tuple[str, str | None, dict[str, Any], SigningKey | None]]:
    """(path, token, message, re-signing key): messages that are refused as they stand,
    each for one reason a mutation cannot remove (stale, duplicate, invalid role…)."""
    s = fuzz_env.state
    enroll = {**s.enroll_msg, "timestamp": _stale()}
    poa = {**s.poas[-1], "timestamp": _stale()}
    open_proof = s.device.proof_for(s.open_assignment)
    # The right PoT with a wrong output: refused by the digest check whatever else changes.
    wrong_output = bytearray(bytes.fromhex(open_proof["output"]))
    wrong_output[0] ^= 1
    open_proof["output"] = wrong_output.hex()
    return [
        ("/v1/enroll", None, enroll, s.device.key),
        ("/v1/heartbeats", None, poa, s.device.key),
        ("/v1/proofs", None, s.done_proof, s.device.key),
        ("/v1/proofs", None, open_proof, s.device.key),
        (
            "/v1/tasks",
            s.client,
            {
                "kind": "sha256-chain",
                "params": {"seed": "ab" * 32, "iterations": 200},
                "chunks": 8,
                "replicas": 1,
                "deadline": 2**40,
                "task_id": "fuzz-open",  # this client's own reference: a duplicate at best
            },
            None,
        ),
        ("/v1/tokens", s.operator, {"role": "root", "label": "x", "ttl_s": 60, "uses": 1}, None),
        (f"/v1/devices/{s.device.device_id}/quarantine", s.operator, {"reason": 5}, None),
        (f"/v1/devices/{s.pending.device_id}/approve", s.operator, {"reason": 5}, None),
    ] + [
        (route, None, _privacy(s.device.key, s.device.device_id, action, _stale()), s.device.key)
        for action, route in privacy_routes(fuzz_env).items()
    ]


def _signed_parts(msg: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Where the signed objects sit: the message itself, or the proof's ``pot``."""
    return [("pot",)] if "pot" in msg else [()] if "signature" in msg else []


def _variants(
    msg: dict[str, Any], path: tuple[Any, ...], mutated: dict[str, Any], key: SigningKey | None
) -> list[dict[str, Any]]:
    """The mutation as is, and with the signed object signed again by the device's key."""
    out = [mutated]
    if key is None:
        return out
    for part in _signed_parts(msg):
        if path[: len(part)] != part or path == part:
            continue
        inner = get(mutated, part) if part else mutated
        if not isinstance(inner, dict):
            continue
        signed = resign(inner, key)
        if signed is not None:
            out.append(replace(mutated, part, signed) if part else signed)
    return out


def _unsafe(route: str, path: tuple[Any, ...], value: Any) -> bool:
    """Mutations that could make a template valid: never sent."""
    if route == "/v1/tokens" and path == ("role",):
        return value == MISSING or value in ("operator", "client", "enroll")
    if route == "/v1/tasks" and path == ("task_id",):
        # Without one the coordinator picks a fresh id; any other valid one is new.
        return value == MISSING or (
            isinstance(value, str) and re.fullmatch(TASK_ID_PATTERN, value) is not None
        )
    if route.startswith("/v1/devices/") and path == ("reason",):
        return value == MISSING or (isinstance(value, str) and len(value) <= 200)
    if route == "/v1/proofs" and path[-1:] in {("execution_time_ms",), ("cpu_time_ms",)}:
        return True  # free-form numbers: any valid one is a valid proof of the open task
    # A timestamp near now could make a stale template fresh.
    return path[-1:] == ("timestamp",) and isinstance(value, int) and abs(value - now_ms()) < 10**7


def test_wrong_type_missing_and_unknown_members(fuzz_env: Env) -> None:
    for route, token, msg, key in templates(fuzz_env):
        assert fuzz_env.send(*_split(route), dumps(msg), token=token).status >= 400
        for path in list(paths(msg)):
            for value in [*WRONG_VALUES, MISSING]:
                if _unsafe(route, path, value):
                    continue
                mutated = delete(msg, path) if value == MISSING else replace(msg, path, value)
                for variant in _variants(msg, path, mutated, key):
                    fuzz_env.send(*_split(route), dumps(variant), token=token)
        for obj_path in list(object_paths(msg)):
            mutated = replace(msg, (*obj_path, "zz_unknown"), 1) if obj_path else {**msg, "zz": 1}
            for variant in _variants(msg, (*obj_path, "zz"), mutated, key):
                fuzz_env.send(*_split(route), dumps(variant), token=token)
        # Oversized arrays and deep nesting inside an otherwise well-formed message.
        for path in list(paths(msg)):
            for value in ([0] * 100_000, ["a" * 64] * 1_000, _nest(100)):
                if isinstance(get(msg, path), (list, dict)) or path[-1] in ("params", "kinds"):
                    for variant in _variants(msg, path, replace(msg, path, value), key):
                        fuzz_env.send(*_split(route), dumps(variant), token=token)
    check(fuzz_env)


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@FUZZ
@given(data=st.data(), value=JSON)
def test_hypothesis_message_mutations(fuzz_env: Env, data: st.DataObject, value: Any) -> None:
    route, token, msg, key = data.draw(st.sampled_from(templates(fuzz_env)))
    path = data.draw(st.sampled_from(list(paths(msg))))
    if _unsafe(route, path, value):
        return
    mutated = replace(msg, path, value)
    variants = _variants(msg, path, mutated, key)
    fuzz_env.send(*_split(route), dumps(data.draw(st.sampled_from(variants))), token=token)


# -- protocol attacks: forgery, replay, freshness, cross-type, unknown parties ------------------


def _poa(key: SigningKey, device_id: str, seq: int, ts: int | None = None) -> dict[str, Any]:
    body = {
        "type": "poa",
        "device_id": device_id,
        "timestamp": now_ms() if ts is None else ts,
        "seq": seq,
        "telemetry": GOOD_TELEMETRY,
    }
    return sign_message(body, key)


def _enroll(key: SigningKey, **over: Any) -> dict[str, Any]:
    return sign_message({**enroll_fields(key, "https://127.0.0.1:9"), **over}, key)


def test_forged_signatures(fuzz_env: Env) -> None:
    s = fuzz_env.state
    other = fuzz_env.other_key
    dev = s.device
    last_seq = len(s.poas)
    # A fresh heartbeat with a new seq: valid but for its signature.
    for signer in (other, s.pending.key, s.quarantined.key):
        body = _poa(signer, dev.device_id, last_seq + 100)
        fuzz_env.send("POST", "/v1/heartbeats", dumps(body))
    genuine = _poa(dev.key, dev.device_id, last_seq + 100)
    for i in range(len(genuine["signature"])):
        fuzz_env.send(
            "POST",
            "/v1/heartbeats",
            dumps({**genuine, "signature": flip_hex(genuine["signature"], i)}),
        )
    for sig in ("", "00" * 64, "ff" * 64, genuine["signature"].upper(), genuine["signature"][:-2]):
        fuzz_env.send("POST", "/v1/heartbeats", dumps({**genuine, "signature": sig}))
    # Any other member changed after signing.
    for k in ("timestamp", "seq"):
        fuzz_env.send("POST", "/v1/heartbeats", dumps({**genuine, k: genuine[k] + 1}))
    fuzz_env.send(
        "POST",
        "/v1/heartbeats",
        dumps({**genuine, "telemetry": {**GOOD_TELEMETRY, "battery_pct": 1}}),
    )
    # Enrollment under the device's id with another key, and the device's key under another id.
    fuzz_env.send("POST", "/v1/enroll", dumps(_enroll(other, device_id=dev.device_id)))
    fuzz_env.send("POST", "/v1/enroll", dumps(_enroll(other, public_key=dev.key.public_key.hex())))
    good = _enroll(other)  # valid, and never sent unmodified: it would enroll a new device
    for i in range(0, len(good["signature"]), 3):
        fuzz_env.send(
            "POST", "/v1/enroll", dumps({**good, "signature": flip_hex(good["signature"], i)})
        )
    # A proof for the open task signed by another key, and each byte of a real PoT flipped.
    proof = s.device.proof_for(s.open_assignment)
    fuzz_env.send(
        "POST",
        "/v1/proofs",
        dumps({**proof, "pot": sign_message(proof["pot"], other)}),
    )
    pot_json = json.dumps(proof["pot"])
    for i, ch in enumerate(pot_json):
        if ch not in "0123456789abcdef":
            continue
        try:
            tampered = json.loads(pot_json[:i] + ("0" if ch != "0" else "1") + pot_json[i + 1 :])
        except ValueError:
            continue
        if tampered.get("execution_metadata") != proof["pot"]["execution_metadata"]:
            tampered["signature"] = "00" * 64  # a changed number is still refused unsigned
        fuzz_env.send("POST", "/v1/proofs", dumps({**proof, "pot": tampered}))
    # Every byte of the output.
    out = proof["output"]
    for i in range(0, len(out), 2):
        fuzz_env.send("POST", "/v1/proofs", dumps({**proof, "output": flip_hex(out, i)}))
    for output in ("", out + "00", out[:-2], out.upper(), "zz"):
        fuzz_env.send("POST", "/v1/proofs", dumps({**proof, "output": output}))
    check(fuzz_env)


def test_replays_and_freshness(fuzz_env: Env) -> None:
    s = fuzz_env.state
    dev = s.device
    last_seq = len(s.poas)
    # The real messages byte for byte: stale now.
    for _ in range(20):
        fuzz_env.send("POST", "/v1/enroll", dumps(s.enroll_msg))
        for poa in s.poas:
            fuzz_env.send("POST", "/v1/heartbeats", dumps(poa))
    # The accepted proof again: a duplicate.
    for _ in range(20):
        fuzz_env.send("POST", "/v1/proofs", dumps(s.done_proof))
    # Fresh heartbeats with old seqs: replays.
    for seq in (0, 1, last_seq - 1, last_seq):
        for _ in range(5):
            fuzz_env.send("POST", "/v1/heartbeats", dumps(_poa(dev.key, dev.device_id, seq)))
    # Valid seqs with timestamps outside the window on either side, and absurd ones.
    window = HEARTBEAT_WINDOW_S * 1000
    for ts in (
        now_ms() - window - 1_000,
        now_ms() + window + 1_000,
        now_ms() - 3_600_000,
        now_ms() + 3_600_000,
        0,
        2**53 - 1,
    ):
        fuzz_env.send(
            "POST", "/v1/heartbeats", dumps(_poa(dev.key, dev.device_id, last_seq + 50, ts))
        )
        fuzz_env.send("POST", "/v1/enroll", dumps(_enroll(dev.key, timestamp=ts)))
        fuzz_env.send("POST", "/v1/enroll", dumps(_enroll(fuzz_env.other_key, timestamp=ts)))
    # The open task's proof is valid but for its timestamp: outside the proof window.
    for ts in (
        now_ms() - POT_WINDOW_MS - 5_000,
        now_ms() + POT_WINDOW_MS + 5_000,
        now_ms() - 86_400_000,
        now_ms() + 86_400_000,
        0,
        2**53 - 1,
    ):
        proof = s.device.proof_for(s.open_assignment, timestamp=ts)
        fuzz_env.send("POST", "/v1/proofs", dumps(proof))
    # A proof for a task the device was not assigned, and for a task that does not exist.
    for a in (s.done_assignment, s.open_assignment):
        for task_id in ("no-such-task", "fuzz-open2", s.done_task):
            trace = Trace((b"\x01" * 32,) * a.chunks)
            pot = fresh_pot(dev.key, dev.device_id, task_id, trace)
            fuzz_env.send("POST", "/v1/proofs", dumps({"pot": pot.to_dict(), "output": "00"}))
    check(fuzz_env)


def test_devices_in_every_state_and_unknown(fuzz_env: Env) -> None:
    s = fuzz_env.state
    unknown = SigningKey.from_seed(b"\x09" * 32)
    for _ in range(10):
        # Unknown: never enrolled.
        fuzz_env.send("POST", "/v1/heartbeats", dumps(_poa(unknown, unknown.device_id, 1)))
        proof = s.device.proof_for(s.open_assignment)
        pot = sign_message({**proof["pot"], "device_id": unknown.device_id}, unknown)
        fuzz_env.send("POST", "/v1/proofs", dumps({**proof, "pot": pot}))
        # Pending: heartbeats refused; an enrollment with a token that does not exist.
        fuzz_env.send("POST", "/v1/heartbeats", dumps(_poa(s.pending.key, s.pending.device_id, 1)))
        fuzz_env.send("POST", "/v1/enroll", dumps(_enroll(s.pending.key, token="no-such-token")))
        fuzz_env.send("POST", "/v1/enroll", dumps(_enroll(s.pending.key, token=s.client)))
        fuzz_env.send("POST", "/v1/enroll", dumps(_enroll(s.pending.key, token=s.operator)))
        # Quarantined: everything refused, even a fresh, well-signed enrollment.
        q = s.quarantined
        fuzz_env.send("POST", "/v1/heartbeats", dumps(_poa(q.key, q.device_id, 1)))
        fuzz_env.send("POST", "/v1/enroll", dumps(_enroll(q.key)))
        fuzz_env.send("POST", "/v1/enroll", dumps(_enroll(q.key, token=s.enroll_token)))
        pot = sign_message({**proof["pot"], "device_id": q.device_id}, q.key)
        fuzz_env.send("POST", "/v1/proofs", dumps({**proof, "pot": pot}))
        fuzz_env.send(
            "POST",
            f"/v1/devices/{q.device_id}/approve",
            dumps({"reason": "approved"}),
            token=s.operator,
        )
        fuzz_env.send("POST", f"/v1/devices/{q.device_id}/approve", None, token=s.operator)
        # Operator actions on devices that do not exist.
        for action in ("approve", "quarantine"):
            fuzz_env.send(
                "POST", f"/v1/devices/{unknown.device_id}/{action}", None, token=s.operator
            )
            fuzz_env.send(
                "POST",
                f"/v1/devices/{unknown.device_id}/{action}",
                dumps({"reason": "x"}),
                token=s.operator,
            )
        # Unknown tasks and receipts.
        for task_id in ("no-such-task", "fuzz-open", s.done_task):
            fuzz_env.send("GET", f"/v1/tasks/{task_id}", token=s.client)
            fuzz_env.send("GET", f"/v1/receipts/{task_id}/{s.device.device_id}/proof")
            fuzz_env.send("GET", f"/v1/receipts/{task_id}/{unknown.device_id}/proof")
        fuzz_env.send("GET", "/v1/microblocks/999999")
        fuzz_env.send("GET", "/v1/microblocks/999999/raw")
    check(fuzz_env)


def test_cross_type_messages(fuzz_env: Env) -> None:
    s = fuzz_env.state
    dev = s.device
    proof = s.device.proof_for(s.open_assignment)
    fresh_poa = _poa(dev.key, dev.device_id, len(s.poas) + 1)  # never sent where it is valid
    fresh_enroll = _enroll(fuzz_env.other_key)  # never sent where it is valid
    messages = {
        "enroll": fresh_enroll,
        "poa": fresh_poa,
        "pot": proof["pot"],
        "assignment": dict(s.open_assignment.to_dict()),
        "done-assignment": dict(s.done_assignment.to_dict()),
        "proof": proof,
    }
    targets = {
        "/v1/enroll": {"enroll"},
        "/v1/heartbeats": {"poa"},
        "/v1/proofs": {"proof"},
    }
    privacy = privacy_routes(fuzz_env)
    for action, route in privacy.items():
        # Fresh and well signed, for the other action (never for its own route).
        other = "export" if action == "erase" else "erase"
        messages[f"privacy-{other}"] = _privacy(dev.key, dev.device_id, other)
        targets[route] = {f"privacy-{action}"}
        for signer in (fuzz_env.other_key, s.pending.key, s.quarantined.key):
            fuzz_env.send(*_split(route), dumps(_privacy(signer, dev.device_id, action)))
        for did in (s.pending.device_id, s.quarantined.device_id, "0" * 32):
            fuzz_env.send(*_split(route), dumps(_privacy(dev.key, did, action)))
        for ts in (now_ms() - 3_600_000, now_ms() + 3_600_000, 0, 2**53 - 1):
            fuzz_env.send(*_split(route), dumps(_privacy(dev.key, dev.device_id, action, ts)))
        genuine = _privacy(dev.key, dev.device_id, action)  # never sent unmodified
        for i in range(0, 128, 2):
            forged = {**genuine, "signature": flip_hex(genuine["signature"], i)}
            fuzz_env.send(*_split(route), dumps(forged))
        fuzz_env.send(*_split(route), dumps({**genuine, "timestamp": genuine["timestamp"] + 1}))
    for _ in range(5):
        for route, valid in targets.items():
            for name, msg in list(messages.items()):
                if name in valid:
                    continue
                fuzz_env.send(*_split(route), dumps(msg))
                if not (route == "/v1/proofs" and name == "pot"):  # that is the valid proof
                    fuzz_env.send(*_split(route), dumps({"pot": msg, "output": proof["output"]}))
                # The type relabelled, signature kept: the signature covers the type.
                for t in ("enroll", "poa", "pot", "assignment", "challenge", "opening", "privacy"):
                    if msg.get("type") not in (None, t):
                        relabelled = {**msg, "type": t}
                        fuzz_env.send(*_split(route), dumps(relabelled))
                        fuzz_env.send(
                            *_split(route), dumps({"pot": relabelled, "output": proof["output"]})
                        )
        # Messages to the routes of the other side.
        for path in ("/v1/tasks", "/v1/tokens", "/dashboard/login"):
            for msg in messages.values():
                fuzz_env.send(
                    "POST",
                    path,
                    dumps({**msg, **INVALID_OBJECT}),
                    token=fuzz_env.guard("POST", path),
                )
    check(fuzz_env)


# -- authentication ----------------------------------------------------------------------------


def test_bearer_tokens(fuzz_env: Env) -> None:
    s = fuzz_env.state
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer  "},
        {"Authorization": "Basic " + s.operator},
        {"Authorization": "Token " + s.operator},
        {"Authorization": s.operator},
        {"Authorization": "Bearer " + s.operator + "x"},
        {"Authorization": "Bearer " + s.operator[:-1]},
        {"Authorization": "Bearer " + s.operator.upper()},
        {"Authorization": "Bearer " + s.client},
        {"Authorization": "Bearer " + s.enroll_token},
        {"Authorization": "Bearer " + "a" * 7_000},
        {"Authorization": "Bearer %00"},
        {"Authorization": "Bearer " + s.operator + ", Bearer " + s.operator},
        {"Cookie": "aeamc_session=" + "a" * 64},
        {"Cookie": "aeamc_session="},
        {"Cookie": "a" * 4_000},
    ]
    for method, template in fuzz_env.routes:
        path = fuzz_env.fill(template)
        for h in headers:
            body = b"{" if method == "POST" else None
            for _ in range(2):
                fuzz_env.send(method, path, body, headers=h)
    # Wrong roles on every guarded route, with bodies that would be valid for the right role.
    wrong_role = {
        ("POST", "/v1/tasks"): [s.enroll_token],
        ("POST", "/v1/tokens"): [s.client, s.enroll_token],
        ("GET", "/v1/devices"): [s.client, s.enroll_token],
        ("GET", "/v1/status"): [s.client, s.enroll_token],
        ("GET", "/v1/tasks"): [s.enroll_token],
    }
    bodies = {
        "/v1/tasks": {
            "kind": "sha256-chain",
            "params": {"seed": "ab" * 32, "iterations": 2},
            "chunks": 1,
        },
        "/v1/tokens": {"role": "operator"},
    }
    for (method, path), toks in wrong_role.items():
        for tok in toks:
            for _ in range(10):
                body = dumps(bodies[path]) if path in bodies else None
                fuzz_env.send(method, path, body, token=tok)
    for action in ("approve", "quarantine"):
        for tok in (s.client, s.enroll_token, None, "nope"):
            fuzz_env.send("POST", f"/v1/devices/{s.pending.device_id}/{action}", None, token=tok)
            fuzz_env.send("POST", f"/v1/devices/{s.device.device_id}/{action}", None, token=tok)
    # Dashboard login with wrong tokens, as JSON and as a form, from odd origins.
    for tok in ("", " ", "nope", s.client, s.enroll_token, "a" * 10_000, s.operator + "x"):
        fuzz_env.send("POST", "/dashboard/login", dumps({"token": tok}))
        fuzz_env.send(
            "POST",
            "/dashboard/login",
            urllib.parse.urlencode({"token": tok}).encode(),
            content_type="application/x-www-form-urlencoded",
        )
    for origin in ("null", "http://evil.example", "", "http://127.0.0.1:1", "\u00e9"):
        fuzz_env.send(
            "POST", "/dashboard/login", dumps({"token": "nope"}), headers={"Origin": origin}
        )
    check(fuzz_env)


def test_invalid_http(fuzz_env: Env) -> None:
    """Requests that are not HTTP/1.1 never reach the app: aiohttp's parser answers them with
    a plain-text 4xx (so they are exempt from the JSON shape), but never with a 5xx."""
    raw_requests = [
        b"FOO /v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /v1/\x00health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /v1/devices/" + b"x" * 10_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /v1/tasks/" + b"%00" * 5_000 + b" HTTP/1.1\r\n\r\n",
        b"POST /v1/heartbeats HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/heartbeats HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}",
        b"POST /v1/heartbeats HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /v1/health HTTP/1.1\r\nBad Header\r\n\r\n",
    ]
    for raw in raw_requests:
        with (
            socket.create_connection(("127.0.0.1", fuzz_env.coord.port), timeout=30) as plain,
            fuzz_env.coord.ssl_context().wrap_socket(plain, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(raw)
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        fuzz_env.fuzzer.sent += 1
        status_line = reply.split(b"\r\n", 1)[0]
        assert re.match(rb"HTTP/1\.[01] 4\d\d ", status_line), (raw[:80], reply[:300])


def dashboard_login(fuzz_env: Env) -> tuple[str, str]:
    """The operator logs in to the dashboard: its session cookie and its CSRF token."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", fuzz_env.coord.port, timeout=30, context=fuzz_env.coord.ssl_context()
    )
    conn.request(
        "POST",
        "/dashboard/login",
        dumps({"token": fuzz_env.state.operator}),
        {"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    csrf = json.loads(resp.read())["csrf_token"]
    cookie = resp.getheader("Set-Cookie", "").split(";")[0]
    conn.close()
    return cookie, str(csrf)


def test_dashboard_session_cookie_without_csrf(fuzz_env: Env) -> None:
    """The session cookie alone (no or a wrong CSRF header, a foreign Origin) changes nothing."""
    cookie, csrf = dashboard_login(fuzz_env)
    fuzz_env.fuzzer.sent += 1
    assert cookie.startswith("aeamc_session=")
    s = fuzz_env.state
    bad_csrf = [None, "", "x", csrf[:-1], csrf + "x", csrf.upper(), "a" * 5_000]
    for method, template in fuzz_env.routes:
        if method == "GET":
            continue
        path = fuzz_env.fill(template)
        for value in bad_csrf:
            headers = {"Cookie": cookie}
            if value is not None:
                headers["X-AEAMC-CSRF"] = value
            for body in (None, b"{}", dumps({"reason": "x"})):
                if path == "/dashboard/login" and body is not None:
                    continue  # login checks the token in its body, not the cookie
                fuzz_env.send(method, path, body, headers=headers)
        for origin in ("http://evil.example", "null"):
            headers = {"Cookie": cookie, "X-AEAMC-CSRF": csrf, "Origin": origin}
            if path != "/dashboard/login":
                fuzz_env.send(method, path, b"{}", headers=headers)
    # Reads with the cookie work; the quarantined device stays out of reach of approval.
    fuzz_env.send("GET", "/v1/devices", headers={"Cookie": cookie})
    fuzz_env.send("GET", f"/v1/devices/{s.device.device_id}", headers={"Cookie": cookie})
    check(fuzz_env)


# -- edge cases that once answered 5xx --------------------------------------------------------


def test_login_deeply_nested_json_is_a_400(fuzz_env: Env) -> None:
    bodies = dict(bad_json_bodies())
    for label in ("deep arrays", "deep objects", "deep unterminated"):
        ex = fuzz_env.send("POST", "/dashboard/login", bodies[label])
        assert ex.status == 400, ex.describe()
        assert json.loads(ex.reply)["error"]["code"] == "invalid_json"


def test_non_utf8_bearer_token_is_a_401(fuzz_env: Env) -> None:
    exchanges = [
        fuzz_env.send("GET", "/v1/devices", headers={"Authorization": "Bearer \u00e9\u00ff"}),
        fuzz_env.send("GET", "/v1/status", headers={"Authorization": "Bearer \u00e9"}),
        fuzz_env.send("POST", "/v1/tokens", b"{", headers={"Authorization": "Bearer \u00ff"}),
        fuzz_env.send("POST", "/dashboard/login", b'{"token": "\\ud800"}'),
    ]
    assert [e.status for e in exchanges] == [401] * 4, [e.describe() for e in exchanges]


def test_non_utf8_session_cookie_is_ignored(fuzz_env: Env) -> None:
    exchanges = [
        fuzz_env.send("GET", path, headers={"Cookie": "aeamc_session=\u00e9; other=1"})
        for path in ("/v1/health", "/v1/devices", "/metrics", "/privacy")
    ]
    assert [e.status for e in exchanges] == [200, 401, 200, 200], [e.describe() for e in exchanges]


def test_login_unparsable_forms_are_a_400(fuzz_env: Env) -> None:
    cases = [
        ("multipart/form-data", b"token=nope"),
        ("multipart/form-data; boundary=zz", b"token=nope"),
        ("multipart/form-data; boundary=zz", b"--zz\r\nbroken"),
        ("application/x-www-form-urlencoded", b"token=\xff"),
    ]
    exchanges = [
        fuzz_env.send(
            "POST", "/dashboard/login", body, headers={"Content-Type": c}, content_type=None
        )
        for c, body in cases
    ]
    assert all(e.status == 400 for e in exchanges), [e.describe() for e in exchanges]


def test_login_unparsable_origin_is_a_403(fuzz_env: Env) -> None:
    ex = fuzz_env.send(
        "POST", "/dashboard/login", dumps({"token": "nope"}), headers={"Origin": "http://["}
    )
    assert ex.status == 403, ex.describe()


def test_non_utf8_csrf_header_is_a_403(fuzz_env: Env) -> None:
    cookie, _ = dashboard_login(fuzz_env)
    ex = fuzz_env.send(
        "POST", "/v1/tokens", b"{}", headers={"Cookie": cookie, "X-AEAMC-CSRF": "\u00e9"}
    )
    assert ex.status == 403, ex.describe()


# -- the totals -----------------------------------------------------------------------------------


def test_bad_certificate_requests(fuzz_env: Env) -> None:
    """Well-signed enrollments of known devices whose CSR is garbage, for another curve,
    tampered with or too large: refused, no certificate issued, nothing stored."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from aeamc.shared.runtime import tls

    p384 = ec.generate_private_key(ec.SECP384R1())
    good = bytearray(tls.make_csr(tls.generate_key(), fuzz_env.state.device.device_id))
    tampered = bytes(good[:-3]) + bytes([good[-3] ^ 0x01]) + bytes(good[-2:])
    bad_csrs: list[Any] = [
        "zz",
        "0",
        "00",
        "30" * 10,
        tampered.hex(),
        tls.make_csr(p384, fuzz_env.state.device.device_id).hex(),  # type: ignore[arg-type]
        "ab" * 2049,
        123,
        None,
        ["30"],
    ]
    for device in (fuzz_env.state.device, fuzz_env.state.pending):
        for csr in bad_csrs:
            fuzz_env.send("POST", "/v1/enroll", dumps(_enroll(device.key, csr=csr)))


def test_totals_health_and_no_state_change(fuzz_env: Env) -> None:
    fuzzer = fuzz_env.fuzzer
    elapsed = time.monotonic() - fuzz_env.started  # type: ignore[attr-defined]
    print(f"\nfuzz: {fuzzer.sent} requests in {elapsed:.1f} s")
    check(fuzz_env)
    assert not fuzzer.reported, f"{len(fuzzer.reported)} bad answers in the families above"
    assert fuzzer.sent >= MIN_REQUESTS, fuzzer.sent
    assert fuzz_env.coord.process is not None and fuzz_env.coord.process.poll() is None
    status, body = fuzz_env.coord.request("GET", "/v1/health")
    assert status == 200 and body["status"] == "ok", body
    # The state the fuzz ran against is really there (so "unchanged" means something).
    before = fuzz_env.before
    assert len(before["devices"]) == 3 and len(before["heartbeats"]) == len(fuzz_env.state.poas)
    assert before["proofs"] and before["blocks"] and before["spot_checks"]
    assert len(before["assignments"]) == 2 and len(before["tasks"]) == 2
    after = snapshot(fuzz_env.coord.state_dir / "coordinator.db")
    changed = {
        t for t in set(fuzz_env.before) | set(after) if fuzz_env.before.get(t) != after.get(t)
    }
    assert not changed, {t: (fuzz_env.before.get(t), after.get(t)) for t in changed}
