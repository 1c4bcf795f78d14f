"""What the dashboard tests (and ``tools/dashboard_screenshots.py``) drive: a real
coordinator process serving the dashboard, protocol-level devices on an event loop of
their own thread, and headless Debian Chromium through Playwright."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support.coordinator import CoordinatorProcess
from tests.support.device import GOOD_TELEMETRY, SimDevice

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
SHA_TASK = {"kind": "sha256-chain", "params": {"seed": "ab" * 32, "iterations": 200}, "chunks": 8}


def chromium_path() -> str:
    """Debian's Chromium; its absence is a broken setup, reported as a failure, not a skip."""
    path = shutil.which(CHROMIUM) or shutil.which("chromium")
    if path is None:
        raise AssertionError(
            "chromium is not installed: tools/ensure-debian-packages requirements/debian.txt"
        )
    return path


@dataclass
class DashboardCoordinator(CoordinatorProcess):
    """A real coordinator process, started through :mod:`tests.dashboard.launcher`."""

    daemon_module = "tests.dashboard.launcher"
    run_directory = Path(__file__).resolve().parents[2]

    def operator(self, method: str, path: str, body: Any = None) -> Any:
        status, out = self.request(method, path, body, token=self.token("operator"))
        assert status < 300, (status, out)
        return out

    def submit(self, n: int = 1) -> list[str]:
        client = self.token("client")
        ids = []
        for _ in range(n):
            status, body = self.request("POST", "/v1/tasks", SHA_TASK, token=client)
            assert status == 202, body
            ids.append(body["task_id"])
        return ids


@dataclass
class Browserless:
    """A cookie-keeping HTTP client, to check what the browser would be sent and refused."""

    url: str
    #: TLS 1.3 trusting the coordinator's CA (``CoordinatorProcess.ssl_context()``).
    ssl_context: ssl.SSLContext
    jar: http.cookiejar.CookieJar = field(default_factory=http.cookiejar.CookieJar)

    def __post_init__(self) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.ssl_context),
            urllib.request.HTTPCookieProcessor(self.jar),
            _NoRedirect(),
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, str], Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with self.opener.open(req, timeout=30) as resp:
                status, hdrs, payload = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            status, hdrs, payload = exc.code, exc.headers, exc.read()
        ctype = hdrs.get("Content-Type", "")
        out = json.loads(payload) if ctype.startswith("application/json") and payload else payload
        return (
            status,
            {k.lower(): v for k, v in hdrs.items()}
            | {"set-cookie": "\n".join(hdrs.get_all("Set-Cookie") or [])},
            out,
        )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def varied_telemetry(i: int, tick: int) -> dict[str, Any]:
    """Plausible, slowly changing readings, so EPS moves the way a real fleet's does."""
    i %= 3  # every reading keeps EPS above the default eligibility threshold of 0.5
    return {
        **GOOD_TELEMETRY,
        "battery_pct": 100 - 5 * i - (tick * (i + 1)) % 15,
        "charging": (i + tick // 20) % 4 != 3,
        "cpu_temp_mc": 38_000 + 3_000 * i + (tick * 700 * (i + 1)) % 9_000,
        "cpu_load_permille": (150 * i + tick * 37) % 900,
        "net_latency_us": 2_000 + 1_500 * i,
    }


class Fleet:
    """SimDevices that keep heartbeating on a loop in a thread of their own.

    The browser is driven synchronously from the test's thread; the devices must meanwhile
    answer the coordinator's assignments and challenges, so they cannot share that thread.
    """

    def __init__(self, coordinator_url: str, heartbeat_s: float = 1.0) -> None:
        self.url = coordinator_url
        self.heartbeat_s = heartbeat_s
        self.devices: list[SimDevice] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._beats: list[asyncio.Future[None]] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(
        self,
        token: str | None,
        telemetry: Callable[[int, int], dict[str, Any]] = varied_telemetry,
        **device: Any,
    ) -> SimDevice:
        """A device that enrolls (active with ``token``, pending without) and heartbeats."""
        index = len(self.devices)

        async def start() -> SimDevice:
            d = await SimDevice(self.url, **device).start()
            if token is None:
                status, body = await d.enroll()
                assert status == 202 and body["state"] == "pending", body
            else:
                await d.join(token)
            return d

        d = self.run(start())
        self.devices.append(d)
        self._beats.append(
            asyncio.run_coroutine_threadsafe(self._heartbeats(d, index, telemetry), self.loop)
        )
        return d

    async def _heartbeats(
        self, d: SimDevice, index: int, telemetry: Callable[[int, int], dict[str, Any]]
    ) -> None:
        tick = 0
        while True:
            await asyncio.sleep(self.heartbeat_s)
            tick += 1
            try:
                await d.heartbeat(telemetry(index, tick))
            except Exception:  # a refused heartbeat (pending, quarantined) is expected
                await asyncio.sleep(self.heartbeat_s)

    def close(self) -> None:
        for beat in self._beats:
            beat.cancel()

        async def stop() -> None:
            for d in self.devices:
                await d.stop()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def wait_for(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s (last: {last!r})")
