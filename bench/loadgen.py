"""Load generators: each benchmark drives the system under test from a process of its own,
so the load's CPU never counts as the coordinator's and the coordinator's never slows
the load generator's clock.

``python -m bench.loadgen MODE ...`` prints its results as JSON on stdout (one object, or
one per line for the interactive ``proofs`` mode). Every device here is a real protocol
participant: its own Ed25519 key, real enrollment with a token, real signed messages
built with ``aeamc.shared``; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import time
from typing import Any

import aiohttp
import nacl.signing
from aiohttp import web

from aeamc.shared import proofs
from aeamc.shared.identity import SigningKey, sign_message
from aeamc.shared.messages import Assignment, Enroll, parse_signed, sign
from aeamc.shared.tasks.registry import discover

from .procs import raise_fd_limit
from .transport import transport

TELEMETRY = {
    "battery_pct": 90,
    "charging": True,
    "cpu_temp_mc": 40_000,
    "cpu_load_permille": 100,
    "net_latency_us": 2_000,
    "mem_available_kb": 1 << 20,
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def device_key(seed: str, i: int) -> SigningKey:
    """Deterministic keys, so a later run can speak for devices enrolled by an earlier one."""
    return SigningKey.from_seed(hashlib.sha256(f"{seed}/{i}".encode()).digest())


def enroll_body(key: SigningKey, token: str, endpoint: str | None = None) -> dict[str, Any]:
    body = {
        "type": "enroll",
        "public_key": key.public_key.hex(),
        "device_id": key.device_id,
        "timestamp": now_ms(),
        "capabilities": {
            "kinds": ["sha256-chain"],
            "cpus": 2,
            "mem_mb": 1024,
            "battery": True,
            "version": "0.1.0",
            "endpoint": endpoint,
        },
        "token": token,
    }
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


def session(limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=transport().client_ssl(), limit=limit)
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
    """D enrolled devices behind one HTTP endpoint (a path each) that accept assignments."""

    def __init__(self, url: str, devices: int) -> None:
        self.url = url
        self.keys = [SigningKey.from_seed(os.urandom(32)) for _ in range(devices)]
        self.by_id = {k.device_id: k for k in self.keys}
        self.traces: dict[tuple[str, str], proofs.Trace] = {}
        self.ready: list[tuple[str, str]] = []
        self.kind = discover().get("sha256-chain")
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/d/{i}/v1/assignments", self._assignment)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=transport().server_ssl())
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def endpoint(self, key: SigningKey) -> str:
        return f"{transport().url(self.port)}/d/{key.device_id}"

    async def _assignment(self, request: web.Request) -> web.Response:
        a = parse_signed(await request.json(), Assignment)
        outputs = tuple(self.kind.run_chunk(a.params, i, a.chunks) for i in range(a.chunks))
        self.traces[(a.task_id, a.device_id)] = proofs.Trace(outputs)
        self.ready.append((a.task_id, a.device_id))
        return web.json_response({"accepted": True}, status=202)

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


async def proofs_mode(args: argparse.Namespace) -> None:
    """Prepare ``--tasks`` real assignments, then run timed submissions read from stdin:
    ``single N CONCURRENCY`` or ``batch N BATCH CONCURRENCY``."""
    devs = ProofDevices(args.url, args.devices)
    await devs.start()
    async with session(64) as s:
        for key in devs.keys:
            status, body = await post_json(
                s, args.url + "/v1/enroll", enroll_body(key, args.enroll_token, devs.endpoint(key))
            )
            assert status == 202 and body["state"] == "active", body
            for seq in (1, 2):
                status, body = await post_json(s, args.url + "/v1/heartbeats", poa_body(key, seq))
                assert status == 202, body
        auth = {"Authorization": f"Bearer {args.client_token}"}
        task = {"kind": "sha256-chain", "chunks": 4}
        await gather_limited(
            [
                post_json(
                    s,
                    args.url + "/v1/tasks",
                    {**task, "params": {"seed": os.urandom(32).hex(), "iterations": 1}},
                    headers=auth,
                )
                for _ in range(args.tasks)
            ],
            32,
        )
        deadline = time.monotonic() + 300
        while len(devs.ready) < args.tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        emit({"ready": len(devs.ready)})
        loop = asyncio.get_running_loop()
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
            n = int(line[1])
            take, devs.ready = devs.ready[:n], devs.ready[n:]
            bodies = [devs.submission(t, d) for t, d in take]  # signed now: fresh
            if line[0] == "single":
                emit(await _send_single(args.url, bodies, int(line[2])))
            else:
                emit(await _send_batches(args.url, bodies, int(line[2]), int(line[3])))
    await devs.stop()


async def _timed(url: str, path: str, payloads: list[bytes], concurrency: int) -> dict[str, Any]:
    statuses: list[tuple[int, Any]] = []
    queue = list(reversed(payloads))
    headers = {"Content-Type": "application/json"}
    async with session(concurrency) as s:
        # One warm-up connection per worker, so connection set-up is not in the timing.
        await asyncio.gather(*(s.get(url + "/v1/health") for _ in range(concurrency)))

        async def worker() -> None:
            while queue:
                data = queue.pop()
                async with s.post(url + path, data=data, headers=headers) as resp:
                    statuses.append((resp.status, json.loads(await resp.read())))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "replies": statuses}


async def _send_single(url: str, bodies: list[dict[str, Any]], conc: int) -> dict[str, Any]:
    payloads = [json.dumps(b, separators=(",", ":")).encode() for b in bodies]
    got = await _timed(url, "/v1/proofs", payloads, conc)
    ok = sum(1 for st, _ in got["replies"] if st == 202)
    errors = [b for st, b in got["replies"] if st != 202][:3]
    return {
        "mode": "single",
        "proofs": len(bodies),
        "accepted": ok,
        "seconds": got["seconds"],
        "errors": errors,
    }


async def _send_batches(
    url: str, bodies: list[dict[str, Any]], batch: int, conc: int
) -> dict[str, Any]:
    payloads = [
        json.dumps({"proofs": bodies[i : i + batch]}, separators=(",", ":")).encode()
        for i in range(0, len(bodies), batch)
    ]
    got = await _timed(url, "/v1/proofs/batch", payloads, conc)
    results = [r for st, b in got["replies"] if st == 200 for r in b["results"]]
    ok = sum(1 for r in results if r["status"] == 202)
    errors = [r for r in results if r["status"] != 202][:3]
    errors += [b for st, b in got["replies"] if st != 200][:3]
    return {
        "mode": "batch",
        "batch": batch,
        "proofs": len(bodies),
        "accepted": ok,
        "seconds": got["seconds"],
        "errors": errors,
    }


# -- fleet scale ----------------------------------------------------------------------------------


class KeepAlive:
    """One device's own keep-alive HTTP/1.1 connection, as a real device holds one."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None or self.writer.is_closing():
            ssl_ctx = transport().client_ssl()
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, ssl=ssl_ctx or None
            )
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def fleet_mode(args: argparse.Namespace) -> None:
    raise_fd_limit()
    host, port = args.url.split("//", 1)[1].rsplit(":", 1)
    keys = [device_key(args.seed, i) for i in range(args.devices)]
    conns = [KeepAlive(host, int(port)) for _ in keys]
    started = time.perf_counter()
    enroll_errors = 0

    async def enroll(i: int) -> None:
        nonlocal enroll_errors
        body = json.dumps(enroll_body(keys[i], args.enroll_token)).encode()
        try:
            if await conns[i].post("/v1/enroll", body) != 202:
                enroll_errors += 1
        except (OSError, ValueError, asyncio.IncompleteReadError):
            enroll_errors += 1

    await gather_limited([enroll(i) for i in range(len(keys))], 256)
    enroll_s = time.perf_counter() - started
    samples: list[tuple[float, float, int]] = []  # (sent at, latency s, status)
    t0 = time.perf_counter() + 1.0
    measure_from = t0 + args.interval  # every device has sent once: the fleet is at pace
    stop_at = measure_from + args.duration
    emit_ready = asyncio.Event()

    async def device(i: int) -> None:
        rng = random.Random(i)
        next_at = t0 + rng.uniform(0, args.interval)
        while next_at < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            sent = time.perf_counter()
            body = json.dumps(poa_body(keys[i], now_ms())).encode()
            try:
                status = await asyncio.wait_for(conns[i].post("/v1/heartbeats", body), 30)
            except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
                status = 0
                conns[i].close()
                conns[i].writer = None
            samples.append((sent, time.perf_counter() - sent, status))
            next_at += args.interval

    async def announce() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        emit({"measuring": True})
        emit_ready.set()

    await asyncio.gather(announce(), *(device(i) for i in range(len(keys))))
    for c in conns:
        c.close()
    window = [s for s in samples if measure_from <= s[0] < stop_at]
    ok = [s for s in window if s[2] == 202]
    emit(
        {
            "devices": len(keys),
            "enroll_seconds": enroll_s,
            "enroll_errors": enroll_errors,
            "window_s": args.duration,
            "sent": len(window),
            "accepted": len(ok),
            "errors": len(window) - len(ok),
            "latencies_ms": [round(s[1] * 1000, 3) for s in window],
            "seconds_into_window": [round(s[0] - measure_from, 3) for s in window],
        }
    )


# -- latency: submit a task, wait for its accepted proof -----------------------------------------


async def latency_mode(args: argparse.Namespace) -> None:
    auth = {"Authorization": f"Bearer {args.client_token}"}
    task_ids = []
    async with session(2) as s:
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
    pr.add_argument("--enroll-token", required=True)
    pr.add_argument("--client-token", required=True)
    pr.add_argument("--devices", type=int, default=10)
    pr.add_argument("--tasks", type=int, required=True)
    fl = sub.add_parser("fleet")
    fl.add_argument("--url", required=True)
    fl.add_argument("--enroll-token", required=True)
    fl.add_argument("--devices", type=int, required=True)
    fl.add_argument("--seed", default="fleet")
    fl.add_argument("--interval", type=float, default=5.0)
    fl.add_argument("--duration", type=float, default=20.0)
    la = sub.add_parser("latency")
    la.add_argument("--url", required=True)
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
