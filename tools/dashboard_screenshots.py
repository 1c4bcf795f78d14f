"""Regenerate the dashboard screenshots in docs/images/ from a real, working coordinator.

    .venv/bin/python tools/dashboard_screenshots.py [--seconds 60] [--out docs/images]

Starts a coordinator in a temporary directory, a small fleet of protocol-level devices
(one left pending), submits tasks at a varying rate so the charts have a shape, then logs
in with headless Debian Chromium and saves the overview and the microblock explorer.
Nothing in the pictures is staged: every number is what that coordinator reported.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.dashboard.support import (  # noqa: E402
    CHROMIUM_ARGS,
    DashboardCoordinator,
    Fleet,
    chromium_path,
    wait_for,
)

VIEWPORT = {"width": 1360, "height": 960}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run work")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--devices", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        coordinator = DashboardCoordinator(
            Path(tmp) / "coord", settings={"blocks": {"interval_s": 4.0}}
        )
        coordinator.init()
        coordinator.start()
        fleet = Fleet(coordinator.url)
        try:
            token = coordinator.operator("POST", "/v1/tokens", {"role": "enroll", "uses": 99})
            for _ in range(args.devices):
                fleet.add(token["token"])
            fleet.add(None)  # an operator would see it waiting for approval
            # The overview is taken while work still flows, so its rate is not zero.
            work = threading.Thread(target=_run_work, args=(coordinator, args.seconds))
            work.start()
            try:
                _shoot(coordinator, args.out, overview_at=time.monotonic() + args.seconds - 6)
            finally:
                work.join()
        finally:
            fleet.close()
            coordinator.stop()
    return 0


def _run_work(coordinator: DashboardCoordinator, seconds: float) -> None:
    """Submit tasks at a rate that rises and falls, and wait for them to settle."""
    started = time.monotonic()
    second = 0
    while time.monotonic() - started < seconds:
        per_second = 1 + round(2.5 * (1 + math.sin(second / 6)))
        coordinator.submit(per_second)
        second += 1
        time.sleep(max(0.0, started + second - time.monotonic()))


def _checked_block(coordinator: DashboardCoordinator) -> int:
    """A block of a few receipts, all spot-checks decided: the most kinds of verdict, then
    the most passes, so the picture shows what verdicts look like."""

    def find() -> tuple[int, int, int] | None:  # height 0 is a fine answer: never return it bare
        blocks = coordinator.request("GET", "/v1/microblocks?limit=1000")[1]["microblocks"]
        best: tuple[int, int, int] | None = None
        for b in blocks:
            if not 4 <= b["receipt_count"] <= 16:
                continue
            view: dict[str, Any] = coordinator.request("GET", f"/v1/microblocks/{b['height']}")[1]
            verdicts = [r["spot_check"] for r in view["receipts"]]
            if "pending" not in verdicts and "passed" in verdicts:
                score = (len(set(verdicts)), verdicts.count("passed"), b["height"])
                best = max(best or score, score)
        return best

    return wait_for(find, timeout=60, interval=1.0)[2]


def _shoot(coordinator: DashboardCoordinator, out: Path, overview_at: float) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, color_scheme="light")
        page = context.new_page()
        page.goto(f"{coordinator.url}/dashboard/")
        page.get_by_role("button", name="Accept").click()
        page.get_by_label("Operator token").fill(coordinator.token("operator"))
        page.get_by_role("button", name="Log in").click()
        page.locator("#chart-throughput svg path.line").first.wait_for(state="attached")
        page.locator(".toast.show").wait_for(state="detached")
        time.sleep(max(2.5, overview_at - time.monotonic()))
        page.screenshot(path=str(out / "dashboard-overview.png"), full_page=True)

        height = _checked_block(coordinator)
        page.goto(f"{coordinator.url}/dashboard/#/explorer/{height}")
        page.locator("#receipts-table").wait_for()
        page.wait_for_timeout(2500)
        page.screenshot(path=str(out / "dashboard-explorer.png"), full_page=True)
        browser.close()
    print(f"wrote {out / 'dashboard-overview.png'} and {out / 'dashboard-explorer.png'}")


if __name__ == "__main__":
    sys.exit(main())
