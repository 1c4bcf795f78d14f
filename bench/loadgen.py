"""Load generators: each benchmark drives the system under test from a process of its own,
so the load's CPU never counts as the coordinator's and the coordinator's never slows
the load generator's clock.

``python -m bench.loadgen MODE ...`` prints its results as JSON on stdout (one object, or
one per line for the interactive ``proofs`` mode). Every device here is a real protocol
participant: its own Ed25519 key, real enrollment with a token and a CSR, real signed
messages built with ``aeamc.shared``, and its own CA-issued client certificate on every
device route (``bench.transport``); all traffic goes to 127.0.0.1 over TLS 1.3.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import nacl.signing
from aiohttp import web

from aeamc.shared import proofs
from aeamc.shared.identity import SigningKey, sign_message
from aeamc.shared.messages import Assignment, Enroll, parse_signed, sign
from aeamc.shared.tasks.registry import discover
from tests.support.device import GOOD_TELEMETRY, enroll_fields, now_ms

from .procs import raise_fd_limit
from .transport import DeviceTls, endpoints_by_name, transport

T = TypeVar("T")

#: Answers that say "not now, come back after Retry-After": load shed, not errors.
SHED_STATUSES = (429, 503)
#: What every simulated device reports: healthy, charging, cool and idle.
TELEMETRY = GOOD_TELEMETRY


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def device_key(seed: str, i: int) -> SigningKey:
    """Deterministic keys, so a later run can speak for devices enrolled by an earlier one."""
    return SigningKey.from_seed(hashlib.sha256(f"{seed}/{i}".encode()).digest())


def enroll_body(
    key: SigningKey, token: str, csr: str, endpoint: str | None = None
) -> dict[str, Any]:
    body = {**enroll_fields(key, endpoint), "token": token, "csr": csr}
    return sign(Enroll, body, key).to_dict()


def poa_body(key: SigningKey, seq: int) -> dict[str, Any]:
    body = {
        "type": "poa",
        "device_id": key.device_id,
        "timestamp": now_ms(),
        "seq": seq,
        "telemetry": TELEMETRY,
    }
    return sign_message(body, key)


def read_ca(path: str) -> str:
    return Path(path).read_text()


def session(ctx: ssl.SSLContext, limit: int) -> aiohttp.ClientSession:
    """Keep-alive connections with one SSL context: the CA trusted, and — for a device's
    session — its certificate presented."""
    connector = aiohttp.TCPConnector(ssl=ctx, limit=limit)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def post_json(s: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, Any]:
    async with s.post(url, json=body, **kw) as resp:
        raw = await resp.read()
        return resp.status, (json.loads(raw) if raw else None)


async def gather_limited(coros: list[Any], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


# -- the raw Ed25519 reference ----------------------------------------------------------------


def verify_rate(seconds: float) -> dict[str, Any]:
    """Ed25519 verifications per second in this process, PyNaCl, a PoT-sized message."""
    key = nacl.signing.SigningKey(os.urandom(32))
    message = os.urandom(420)
    signed = key.sign(message)
    verify = key.verify_key.verify
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(200):
            verify(signed.message, signed.signature)
        n += 200
    return {"verifies": n, "seconds": time.perf_counter() - start}


# -- proof ingestion ----------------------------------------------------------------------------


class ProofDevices:
    """D enrolled devices behind one HTTPS listener (a path each) that accept assignments.

    Each handshake on the listener gets the certificate of the device the coordinator
    names (``endpoints_by_name``), so the coordinator verifies every push as it does an
    agent's. The socket is bound first (its port goes into each enrollment's endpoint)
    and served once the devices have their certificates.
    """

    def __init__(self, devices: int, ca_pem: str, tls_dir: Path) -> None:
        self.keys = [SigningKey.from_seed(os.urandom(32)) for _ in range(devices)]
        self.by_id = {k.device_id: k for k in self.keys}
        self.tls = {k.device_id: DeviceTls(tls_dir, k.device_id, ca_pem) for k in self.keys}
        self.traces: dict[tuple[str, str], proofs.Trace] = {}
        #: Assignments computed and not yet proved, per device, in arrival order.
        self.ready: dict[str, list[str]] = {k.device_id: [] for k in self.keys}
        self.kind = discover().get("sha256-chain")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/d/{i}/v1/assignments", self._assignment)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        ssl_ctx = endpoints_by_name(self.tls)
        await web.SockSite(self._runner, self._sock, ssl_context=ssl_ctx).start()

    def endpoint(self, key: SigningKey) -> str:
        return f"{transport().url(self.port)}/d/{key.device_id}"

    def ready_count(self) -> int:
        return sum(len(v) for v in self.ready.values())

    async def _assignment(self, request: web.Request) -> web.Response:
        a = parse_signed(await request.json(), Assignment)
        outputs = tuple(self.kind.run_chunk(a.params, i, a.chunks) for i in range(a.chunks))
        self.traces[(a.task_id, a.device_id)] = proofs.Trace(outputs)
        self.ready[a.device_id].append(a.task_id)
        return web.json_response({"accepted": True}, status=202)

    def take(self, n: int) -> dict[str, list[str]]:
        """``n`` ready assignments, as evenly over the devices as they allow."""
        out: dict[str, list[str]] = {d: [] for d in self.ready}
        while n and any(self.ready.values()):
            for d, queue in self.ready.items():
                if n and queue:
                    out[d].append(queue.pop(0))
                    n -= 1
        return out

    def submission(self, task_id: str, device_id: str) -> dict[str, Any]:
        trace = self.traces[(task_id, device_id)]
        pot = proofs.build_pot(
            self.by_id[device_id],
            task_id=task_id,
            device_id=device_id,
            trace=trace,
            nonce=os.urandom(16),
            timestamp=now_ms(),
            execution_time_ms=1,
            cpu_time_ms=1,
        )
        return {"pot": pot.to_dict(), "output": trace.output.hex()}

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._sock.close()


async def proofs_mode(args: argparse.Namespace) -> None:
    """Prepare ``--tasks`` real assignments, then run timed submissions read from stdin:
    ``single N CONNECTIONS`` or ``batch N BATCH CONNECTIONS``. Each device sends only its
    own proofs, over its own mutually authenticated connections (as an agent does)."""
    ca_pem = read_ca(args.ca)
    # Several coordinator nodes (``--url a,b``): device i talks to node i mod n.
    urls = args.url.split(",")
    with tempfile.TemporaryDirectory(prefix="aeamc-bench-devices-") as tls_dir:
        devs = ProofDevices(args.devices, ca_pem, Path(tls_dir))
        to = {k.device_id: urls[i % len(urls)] for i, k in enumerate(devs.keys)}
        async with session(transport().client_ssl(ca_pem), 64) as s:
            for key in devs.keys:
                dev = devs.tls[key.device_id]
                body = enroll_body(key, args.enroll_token, dev.csr_hex(), devs.endpoint(key))
                status, answer = await post_json(s, to[key.device_id] + "/v1/enroll", body)
                assert status == 202 and answer["state"] == "active", answer
                dev.accept(answer)
            await devs.start()
            for key in devs.keys:
                async with session(devs.tls[key.device_id].client_ssl(), 1) as own:
                    for seq in (1, 2):
                        url = to[key.device_id] + "/v1/heartbeats"
                        status, answer = await post_json(own, url, poa_body(key, seq))
                        assert status == 202, answer
            # As agents do: a device that stops heartbeating goes stale and is offered
            # nothing more, however long preparing or measuring takes.
            alive = asyncio.create_task(_keep_alive(devs, to, first_seq=3))
            await _submit_tasks(s, args, urls[0])
        deadline = time.monotonic() + 300
        while devs.ready_count() < args.tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        emit({"ready": devs.ready_count()})
        loop = asyncio.get_running_loop()
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
            taken = devs.take(int(line[1]))
            # Signed now: fresh.
            bodies = {d: [devs.submission(t, d) for t in ts] for d, ts in taken.items()}
            if line[0] == "single":
                emit(await _send_single(to, devs, bodies, int(line[2])))
            else:
                emit(await _send_batches(to, devs, bodies, int(line[2]), int(line[3])))
        alive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await alive  # its sessions closed before the loop ends
        await devs.stop()


async def _keep_alive(
    devs: ProofDevices, to: dict[str, str], first_seq: int, every_s: float = 20.0
) -> None:
    """A signed heartbeat from every device each ``every_s``, until cancelled."""
    seq = first_seq
    sessions = {d: session(devs.tls[d].client_ssl(), 1) for d in to}
    try:
        while True:
            await asyncio.sleep(every_s)
            for key in devs.keys:
                url = to[key.device_id] + "/v1/heartbeats"
                try:
                    status, answer = await post_json(
                        sessions[key.device_id], url, poa_body(key, seq)
                    )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, answer = 0, repr(exc)
                if status != 202:
                    print(f"heartbeat of {key.device_id}: {status} {answer}", file=sys.stderr)
            seq += 1
    finally:
        for own in sessions.values():
            await own.close()


async def _submit_tasks(s: aiohttp.ClientSession, args: argparse.Namespace, url: str) -> None:
    auth = {"Authorization": f"Bearer {args.client_token}"}
    task = {"kind": "sha256-chain", "chunks": 4}
    await gather_limited(
        [
            post_json(
                s,
                url + "/v1/tasks",
                {**task, "params": {"seed": os.urandom(32).hex(), "iterations": 1}},
                headers=auth,
            )
            for _ in range(args.tasks)
        ],
        32,
    )


async def _timed(
    to: dict[str, str],
    path: str,
    devs: ProofDevices,
    payloads: dict[str, list[bytes]],
    connections: int,
) -> dict[str, Any]:
    """Send every device's payloads over its own sessions, ``connections`` in all (at
    least one per device with work), and time from the first request to the last answer."""
    statuses: list[tuple[int, Any]] = []
    headers = {"Content-Type": "application/json"}
    busy = [d for d, p in payloads.items() if p]
    per_device = max(1, connections // max(1, len(busy)))
    sessions = {d: session(devs.tls[d].client_ssl(), per_device) for d in busy}
    try:
        # The handshakes first (one per connection), so they are not in the timing.
        await asyncio.gather(*(_warm(sessions[d], to[d]) for d in busy for _ in range(per_device)))

        async def worker(device_id: str) -> None:
            queue = payloads[device_id]
            while queue:
                data = queue.pop(0)
                url = to[device_id] + path
                async with sessions[device_id].post(url, data=data, headers=headers) as r:
                    statuses.append((r.status, json.loads(await r.read())))

        start = time.perf_counter()
        await asyncio.gather(*(worker(d) for d in busy for _ in range(per_device)))
        seconds = time.perf_counter() - start
    finally:
        for s in sessions.values():
            await s.close()
    return {"seconds": seconds, "replies": statuses, "connections": per_device * len(busy)}


async def _warm(s: aiohttp.ClientSession, url: str) -> None:
    async with s.get(url + "/v1/health") as r:
        await r.read()


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def _send_single(
    to: dict[str, str], devs: ProofDevices, bodies: dict[str, list[dict[str, Any]]], conc: int
) -> dict[str, Any]:
    payloads = {d: [_encode(b) for b in bs] for d, bs in bodies.items()}
    got = await _timed(to, "/v1/proofs", devs, payloads, conc)
    ok = sum(1 for st, _ in got["replies"] if st == 202)
    errors = [b for st, b in got["replies"] if st != 202][:3]
    return {
        "mode": "single",
        "proofs": sum(len(bs) for bs in bodies.values()),
        "accepted": ok,
        "seconds": got["seconds"],
        "connections": got["connections"],
        "errors": errors,
    }


async def _send_batches(
    to: dict[str, str],
    devs: ProofDevices,
    bodies: dict[str, list[dict[str, Any]]],
    batch: int,
    conc: int,
) -> dict[str, Any]:
    payloads = {
        d: [_encode({"proofs": bs[i : i + batch]}) for i in range(0, len(bs), batch)]
        for d, bs in bodies.items()
    }
    got = await _timed(to, "/v1/proofs/batch", devs, payloads, conc)
    results = [r for st, b in got["replies"] if st == 200 for r in b["results"]]
    ok = sum(1 for r in results if r["status"] == 202)
    errors = [r for r in results if r["status"] != 202][:3]
    errors += [b for st, b in got["replies"] if st != 200][:3]
    return {
        "mode": "batch",
        "batch": batch,
        "proofs": sum(len(bs) for bs in bodies.values()),
        "accepted": ok,
        "seconds": got["seconds"],
        "connections": got["connections"],
        "errors": errors,
    }


# -- fleet scale ----------------------------------------------------------------------------------


class KeepAlive:
    """One device's own keep-alive HTTP/1.1 connection over TLS 1.3, as a real device
    holds one: opened once with the device's SSL context, reopened only after an error."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        self.host, self.port, self.ctx = host, port, ctx
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        #: The last answer's ``Retry-After`` in seconds (``None`` without one).
        self.retry_after: int | None = None

    async def connect(self) -> None:
        """The TCP connection and the TLS handshake (the certificate, if any, presented)."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ctx
            )

    async def request(self, path: str, body: bytes) -> tuple[int, bytes]:
        await self.connect()
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            # The server closed the kept-alive connection: an error for this request,
            # and the next one reconnects (as an agent's would).
            raise ConnectionResetError("the connection was closed before an answer")
        length = 0
        self.retry_after = None
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "retry-after" and value.strip().isdigit():
                self.retry_after = int(value)
        raw = await self.reader.readexactly(length) if length else b""
        return int(status_line.split()[1]), raw

    async def post(self, path: str, body: bytes) -> int:
        return (await self.request(path, body))[0]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


async def fleet_mode(args: argparse.Namespace) -> None:
    raise_fd_limit()
    host, port = args.url.split("//", 1)[1].rsplit(":", 1)
    ca_pem = read_ca(args.ca)
    anonymous = transport().client_ssl(ca_pem)  # enrolling: no certificate yet
    tls_dir = Path(args.tls_dir)
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = [device_key(args.seed, i) for i in range(args.devices)]
    conns: list[KeepAlive | None] = [None] * len(keys)
    loop = asyncio.get_running_loop()
    # Key files (fsynced) and SSL contexts (about a ms each) are built off the loop, so
    # the enrollments in flight keep going meanwhile.
    pool = ThreadPoolExecutor(max_workers=8)

    def off_loop(fn: Callable[..., T], *a: Any) -> asyncio.Future[T]:
        return loop.run_in_executor(pool, fn, *a)

    started = time.perf_counter()
    enroll_errors: list[str] = []

    async def enroll(i: int) -> None:
        """As an agent: enroll with a CSR over a connection without a certificate, keep
        the certificate, build the device's own SSL context."""
        dev = await off_loop(DeviceTls, tls_dir, keys[i].device_id, ca_pem)
        body = json.dumps(enroll_body(keys[i], args.enroll_token, dev.csr_hex())).encode()
        first = KeepAlive(host, int(port), anonymous)
        try:
            status, raw = await first.request("/v1/enroll", body)
            if status != 202:
                enroll_errors.append(f"{status}: {raw[:200]!r}")
                return
            dev.accept(json.loads(raw))
            conns[i] = KeepAlive(host, int(port), await off_loop(dev.client_ssl))
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            enroll_errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            first.close()

    async def connect(i: int) -> None:
        """The device's own mutually authenticated keep-alive connection (its handshake),
        and at once its first heartbeat on it, as an agent sends one as soon as it has
        connected: the coordinator closes a connection that sends no request head within
        ``server.header_timeout_s`` of its opening (slowloris), and thousands of
        handshakes take longer than that."""
        conn = conns[i]
        assert conn is not None
        body = json.dumps(poa_body(keys[i], now_ms())).encode()
        try:
            await conn.connect()
            status = await asyncio.wait_for(conn.post("/v1/heartbeats", body), 30)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
            enroll_errors.append(f"{type(exc).__name__}: {exc}")
            conns[i] = None
            return
        if status != 202 and status not in SHED_STATUSES:
            enroll_errors.append(f"first heartbeat: HTTP {status}")

    await gather_limited([enroll(i) for i in range(len(keys))], 256)
    pool.shutdown()
    enroll_s = time.perf_counter() - started
    # Connected once every device is enrolled: the handshakes are timed apart from the
    # enrollments, and no connection has sat idle through all of them.
    started = time.perf_counter()
    await gather_limited([connect(i) for i, c in enumerate(conns) if c is not None], 256)
    connect_s = time.perf_counter() - started
    samples: list[tuple[float, float, int]] = []  # (sent at, latency s, status)
    t0 = time.perf_counter() + 1.0
    measure_from = t0 + args.interval  # every device has sent once: the fleet is at pace
    stop_at = measure_from + args.duration
    emit_ready = asyncio.Event()

    async def device(i: int) -> None:
        conn = conns[i]
        assert conn is not None
        rng = random.Random(i)
        next_at = t0 + rng.uniform(0, args.interval)
        while next_at < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            sent = time.perf_counter()
            body = json.dumps(poa_body(keys[i], now_ms())).encode()
            try:
                status = await asyncio.wait_for(conn.post("/v1/heartbeats", body), 30)
            except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
                status = 0
                conn.close()  # the next heartbeat reconnects, as an agent would
            samples.append((sent, time.perf_counter() - sent, status))
            next_at += args.interval
            if status in SHED_STATUSES:
                # As an agent does: not before Retry-After, plus jitter of its own.
                wait = conn.retry_after or args.interval
                next_at = max(next_at, time.perf_counter() + wait * rng.uniform(1.0, 1.5))

    async def announce() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        emit({"measuring": True})
        emit_ready.set()

    enrolled = [i for i, c in enumerate(conns) if c is not None]
    await asyncio.gather(announce(), *(device(i) for i in enrolled))
    for c in conns:
        if c is not None:
            c.close()
    window = [s for s in samples if measure_from <= s[0] < stop_at]
    ok = [s for s in window if s[2] == 202]
    shed = [s for s in window if s[2] in SHED_STATUSES]
    served = [s for s in window if s[2] not in SHED_STATUSES]
    emit(
        {
            "devices": len(keys),
            "enroll_seconds": enroll_s,
            "connect_seconds": connect_s,
            "enroll_errors": len(enroll_errors),
            "enroll_error_samples": enroll_errors[:3],
            "window_s": args.duration,
            "sent": len(window),
            "accepted": len(ok),
            # Shed (503 overloaded, 429 rate limited: "come back later") apart from errors.
            "shed": len(shed),
            "errors": len(window) - len(ok) - len(shed),
            # Latencies of what was answered in full: a quick 503 would flatter them.
            "latencies_ms": [round(s[1] * 1000, 3) for s in served],
            "seconds_into_window": [round(s[0] - measure_from, 3) for s in served],
        }
    )


# -- latency: submit a task, wait for its accepted proof -----------------------------------------


async def latency_mode(args: argparse.Namespace) -> None:
    auth = {"Authorization": f"Bearer {args.client_token}"}
    task_ids = []
    async with session(transport().client_ssl(read_ca(args.ca)), 2) as s:
        for _ in range(args.tasks):
            body = {
                "kind": "sha256-chain",
                "chunks": args.chunks,
                "params": {"seed": os.urandom(32).hex(), "iterations": args.iterations},
            }
            status, got = await post_json(s, args.url + "/v1/tasks", body, headers=auth)
            assert status == 202, got
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                async with s.get(args.url + f"/v1/tasks/{got['task_id']}", headers=auth) as r:
                    view = await r.json()
                if view["proofs"]:
                    break
                await asyncio.sleep(0.002)
            task_ids.append(got["task_id"])
        rtt = []
        for _ in range(30):
            start = time.perf_counter()
            async with s.get(args.url + "/v1/openapi.json") as r:
                await r.read()
            rtt.append((time.perf_counter() - start) * 1000)
    emit({"tasks": task_ids, "rtt_ms": rtt})


# -- bytes on the wire ------------------------------------------------------------------------


async def proxy_mode(args: argparse.Namespace) -> None:
    """Forward a loopback port to the coordinator, counting the bytes in each direction."""
    counts = {"to_coordinator": 0, "from_coordinator": 0, "connections": 0}

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, key: str) -> None:
        try:
            while data := await r.read(65536):
                counts[key] += len(data)
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        counts["connections"] += 1
        ur, uw = await asyncio.open_connection("127.0.0.1", args.target)
        await asyncio.gather(pipe(r, uw, "to_coordinator"), pipe(ur, w, "from_coordinator"))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    emit({"port": server.sockets[0].getsockname()[1]})
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        emit(dict(counts))
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="AEAMC benchmark load generators")
    sub = p.add_subparsers(dest="mode", required=True)
    v = sub.add_parser("verify")
    v.add_argument("--seconds", type=float, default=2.0)
    pr = sub.add_parser("proofs")
    pr.add_argument("--url", required=True)
    pr.add_argument("--ca", required=True, help="the coordinator's CA certificate (PEM)")
    pr.add_argument("--enroll-token", required=True)
    pr.add_argument("--client-token", required=True)
    pr.add_argument("--devices", type=int, default=10)
    pr.add_argument("--tasks", type=int, required=True)
    fl = sub.add_parser("fleet")
    fl.add_argument("--url", required=True)
    fl.add_argument("--ca", required=True, help="the coordinator's CA certificate (PEM)")
    fl.add_argument("--tls-dir", required=True, help="the devices' TLS keys (kept, reused)")
    fl.add_argument("--enroll-token", required=True)
    fl.add_argument("--devices", type=int, required=True)
    fl.add_argument("--seed", default="fleet")
    fl.add_argument("--interval", type=float, default=5.0)
    fl.add_argument("--duration", type=float, default=20.0)
    la = sub.add_parser("latency")
    la.add_argument("--url", required=True)
    la.add_argument("--ca", required=True, help="the coordinator's CA certificate (PEM)")
    la.add_argument("--client-token", required=True)
    la.add_argument("--tasks", type=int, default=30)
    la.add_argument("--chunks", type=int, default=2)
    la.add_argument("--iterations", type=int, default=1000)
    px = sub.add_parser("proxy")
    px.add_argument("--target", type=int, required=True)
    args = p.parse_args(argv)
    if args.mode == "verify":
        emit(verify_rate(args.seconds))
    else:
        modes = {"proofs": proofs_mode, "fleet": fleet_mode, "latency": latency_mode}
        asyncio.run(modes.get(args.mode, proxy_mode)(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
