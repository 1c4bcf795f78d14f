"""The dashboard in headless Chromium against a real coordinator with working devices:
consent, cookies, login, live numbers, approving and quarantining devices, and the
microblock explorer."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from playwright.sync_api import BrowserContext, Page, expect

from aeamc.coordinator.alerts import evaluate
from tests.dashboard.conftest import login
from tests.dashboard.support import DashboardCoordinator, Fleet, wait_for
from tests.updates.releases import fake_release

CONSENT = "Cookies on this dashboard"


def _stat(page: Page, card: str) -> str:
    return page.locator(f"#stat-{card} .value").inner_text()


def _as_int(text: str) -> int | None:
    digits = re.sub(r"[^\d]", "", text)
    return int(digits) if digits else None


def test_consent_banner_and_no_cookie_before_login(
    context: BrowserContext, coordinator: DashboardCoordinator
) -> None:
    page = context.new_page()
    page.goto(f"{coordinator.url}/dashboard/")
    banner = page.get_by_role("region", name=CONSENT)
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("no analytics, no tracking")
    expect(page.get_by_label("Operator token")).to_be_visible()
    assert context.cookies() == []

    banner.get_by_role("link", name="Privacy policy").click()
    expect(page.get_by_role("heading", level=1, name="Privacy policy")).to_be_visible()
    expect(page.get_by_role("heading", name="Your rights", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Export and erasure")).to_be_visible()
    assert context.cookies() == []

    page.go_back()
    page.get_by_role("button", name="Accept").click()
    expect(banner).to_be_hidden()
    stored = json.loads(page.evaluate("localStorage.getItem('aeamc.consent')"))
    assert stored["choice"] == "all"
    assert context.cookies() == []

    again = context.new_page()
    again.goto(f"{coordinator.url}/dashboard/")
    expect(again.get_by_label("Operator token")).to_be_visible()
    expect(again.get_by_role("region", name=CONSENT)).to_be_hidden()
    # The choice can be changed at any time.
    again.get_by_role("button", name="Cookie settings").click()
    expect(again.get_by_role("region", name=CONSENT)).to_be_visible()
    again.get_by_role("button", name="Only necessary").click()
    stored = json.loads(again.evaluate("localStorage.getItem('aeamc.consent')"))
    assert stored["choice"] == "necessary"
    assert context.cookies() == []


def test_overview_shows_the_coordinators_live_counts(
    page: Page, context: BrowserContext, coordinator: DashboardCoordinator, fleet: Fleet
) -> None:
    login(page, coordinator)
    (cookie,) = context.cookies()
    assert cookie["name"] == "aeamc_session" and cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts

    def status() -> dict[str, Any]:
        return coordinator.operator("GET", "/v1/status")

    wait_for(lambda: _as_int(_stat(page, "devices")) == status()["devices"].get("active", 0))
    before = status()["tasks"].get("completed", 0)
    wait_for(lambda: _as_int(_stat(page, "tasks")) == before)

    coordinator.submit(3)
    done = wait_for(
        lambda: (n := status()["tasks"].get("completed", 0)) >= before + 3 and n, timeout=30
    )
    wait_for(lambda: _as_int(_stat(page, "tasks")) == done, timeout=10)
    assert done > before
    wait_for(lambda: _as_int(_stat(page, "blocks")) == status()["blocks"], timeout=10)
    assert status()["blocks"] >= 1
    wait_for(lambda: re.fullmatch(r"\d+\.\d+", _stat(page, "rate")), timeout=10)
    anchoring = status().get("anchoring")
    if anchoring is None or not anchoring.get("enabled"):
        assert _stat(page, "anchors") == "—"
    expect(page.locator("#chart-throughput svg path.line").first).to_be_attached()
    expect(page.locator("#chart-eps svg polygon.band").first).to_be_attached()
    expect(page.locator("#tasks-table tbody tr").first).to_be_visible()


def test_devices_page_approves_and_quarantines(
    page: Page, coordinator: DashboardCoordinator, fleet: Fleet
) -> None:
    newcomer = fleet.add(None)
    suspect = fleet.add(None)
    login(page, coordinator, "devices")

    row = page.locator(f'tr[data-device="{newcomer.device_id}"]')
    expect(row.locator(".badge")).to_have_text("pending")
    expect(page.locator("#nav-pending")).to_contain_text("pending")
    row.get_by_role("button", name=re.compile("^Approve")).click()
    wait_for(
        lambda: (
            coordinator.operator("GET", f"/v1/devices/{newcomer.device_id}")["state"] == "active"
        )
    )
    expect(row.locator(".badge")).to_have_text("active")
    expect(row.get_by_role("button", name=re.compile("^Approve"))).to_have_count(0)

    page.locator(f'tr[data-device="{suspect.device_id}"]').get_by_role(
        "button", name=re.compile("^Quarantine")
    ).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(suspect.device_id)
    dialog.get_by_label("Reason").fill("unknown hardware")
    dialog.get_by_role("button", name="Quarantine").click()
    expect(dialog).to_be_hidden()
    device = wait_for(
        lambda: (
            (d := coordinator.operator("GET", f"/v1/devices/{suspect.device_id}"))["state"]
            == "quarantined"
            and d
        )
    )
    assert device["state_reason"] == "unknown hardware"

    worker = page.locator(f'tr[data-device="{fleet.devices[0].device_id}"]')
    expect(worker.locator("td").nth(2)).to_have_text(re.compile(r"^\d\.\d\d$"))  # EPS
    expect(worker.locator("td").nth(3)).to_have_text(re.compile(r"^\d+ %"))  # battery
    expect(worker.locator("td").nth(4)).to_have_text(re.compile(r"°C$"))


def test_explorer_shows_receipts_with_verdicts(
    page: Page, coordinator: DashboardCoordinator, fleet: Fleet
) -> None:
    (task_id,) = coordinator.submit(1)
    client = coordinator.token("client")

    def checked() -> dict[str, Any] | None:
        task = coordinator.request("GET", f"/v1/tasks/{task_id}", token=client)[1]
        proofs = task.get("proofs") or []
        return proofs[0] if proofs and proofs[0]["spot_check"] in ("passed", "failed") else None

    proof = wait_for(checked, timeout=30)
    height = proof["block_height"]
    block = coordinator.request("GET", f"/v1/microblocks/{height}")[1]

    login(page, coordinator, f"explorer/{height}")
    expect(page.get_by_role("heading", name=f"Block {height}")).to_be_visible()
    detail = page.locator("#block-detail")
    expect(detail).to_contain_text(block["block_hash"])
    rows = page.locator("#receipts-table tbody tr")
    expect(rows).to_have_count(len(block["receipts"]))
    for receipt in block["receipts"]:
        row = page.locator(
            f'#receipts-table tr[data-task="{receipt["task_id"]}"]'
            f'[data-device="{receipt["device_id"]}"]'
        )
        expect(row.locator(".verdict")).to_have_text(receipt["spot_check"])
    ours = page.locator(f'#receipts-table tr[data-task="{task_id}"] .verdict')
    expect(ours).to_have_text(proof["spot_check"])
    expect(page.locator("#blocks-table tr[aria-current=true]")).to_contain_text(str(height))

    page.locator("#blocks-table").get_by_role("link", name=str(height), exact=True).click()
    expect(page).to_have_url(re.compile(f"#/explorer/{height}$"))


def test_anchor_and_alerts_appear_when_the_coordinator_reports_them(
    page: Page, coordinator: DashboardCoordinator, fleet: Fleet
) -> None:
    """Fields other parts of the coordinator add: shown when present, never invented."""
    coordinator.submit(1)
    wait_for(lambda: coordinator.operator("GET", "/v1/status")["blocks"] >= 1)
    anchor = {
        "state": "final",
        "tx_hash": "0x" + "ab" * 32,
        "confirmations": 12,
        "block_number": 4242,
        "extra": {"nested": "not shown"},
    }
    alerts = [
        {
            "name": "HighErrorRate",
            "severity": "critical",
            "summary": "7 % of requests failed",
            "since_ms": 0,
            "runbook_url": "javascript:alert(1)",
        }
    ]

    def with_anchor(route: Any) -> None:
        body = route.fetch().json()
        route.fulfill(json={**body, "anchor": anchor})

    def with_alerts(route: Any) -> None:
        route.fulfill(json={**route.fetch().json(), "alerts": alerts})

    page.route(re.compile(r".*/v1/microblocks/0$"), with_anchor)
    page.route(re.compile(r".*/v1/health$"), with_alerts)
    login(page, coordinator)
    alert = page.locator("#alerts .alert-critical")
    expect(alert).to_contain_text("HighErrorRate")
    expect(alert).to_contain_text("7 % of requests failed")
    expect(alert.get_by_role("link")).to_have_count(0)  # not a URL that could run script

    page.goto(f"{coordinator.url}/dashboard/#/explorer/0")
    detail = page.locator("#block-detail")
    expect(detail.get_by_role("heading", name="Anchor")).to_be_visible()
    expect(detail).to_contain_text(anchor["tx_hash"])  # type: ignore[arg-type]
    expect(detail.locator("dd").filter(has_text="4242")).to_have_count(1)
    expect(detail).to_contain_text("Confirmations")
    expect(detail).not_to_contain_text("not shown")


def test_an_alerts_runbook_link_opens_the_runbook_at_its_heading(
    page: Page, coordinator: DashboardCoordinator
) -> None:
    """The link the coordinator puts in an alert leads to the runbook it serves, at the
    alert's own heading, in the operator's browser."""
    failing = [(0, 500, 0.01)] * 20
    (fired,) = evaluate(failing, None, 1000)
    assert fired.name == "HighErrorRate"
    alerts = [{**asdict(fired), "since_ms": 0}]

    def with_alerts(route: Any) -> None:
        route.fulfill(json={**route.fetch().json(), "alerts": alerts})

    page.route(re.compile(r".*/v1/health$"), with_alerts)
    login(page, coordinator)
    link = page.locator("#alerts .alert").get_by_role("link", name="Runbook")
    expect(link).to_have_attribute("href", "/runbook#high-error-rate")
    link.click()
    expect(page).to_have_url(f"{coordinator.url}/runbook#high-error-rate")
    heading = page.locator("h2#high-error-rate")
    expect(heading).to_have_text("High error rate")
    expect(heading).to_be_in_viewport()
    expect(page.get_by_role("navigation", name="Contents")).to_contain_text("Coordinator down")


def test_flags_page_shows_and_changes_a_rollout(
    page: Page, coordinator: DashboardCoordinator
) -> None:
    coordinator.operator("PUT", "/v1/flags/adaptive-heartbeat", {"percent": 10})
    login(page, coordinator, "flags")
    row = page.locator("#flags-table tbody tr").filter(has_text="adaptive-heartbeat")
    expect(row).to_contain_text("10 %")
    row.get_by_label("Rollout of adaptive-heartbeat in percent").fill("100")
    row.get_by_role("button", name="Set").click()
    flag = wait_for(
        lambda: next(
            (
                f
                for f in coordinator.operator("GET", "/v1/flags")["flags"]
                if f["name"] == "adaptive-heartbeat" and f["percent"] == 100
            ),
            None,
        )
    )
    assert flag["percent"] == 100
    expect(row).to_contain_text("100 %")
    history = coordinator.operator("GET", "/v1/flags/history")["history"]
    assert [(h["from_percent"], h["to_percent"]) for h in history] == [(None, 10), (10, 100)]
    expect(page.locator("#flag-history")).to_contain_text("10 % → 100 %")


def test_flags_page_shows_the_agent_releases(
    page: Page, coordinator: DashboardCoordinator, tmp_path: Any
) -> None:
    keys = tmp_path / "keys"
    coordinator.cli("release", "keygen", str(keys))
    coordinator.cli("release", "init", "--keys", str(keys))
    wheels = [str(path) for path in fake_release(tmp_path, "0.7.0")]
    coordinator.cli("release", "publish", *wheels, "--rollout", "25", "--keys", str(keys))
    coordinator.operator("POST", "/v1/releases/0.7.0/halt", {"reason": "checked by hand"})
    login(page, coordinator, "flags")
    row = page.locator("#releases-table tbody tr").filter(has_text="0.7.0")
    expect(row).to_contain_text("25 %")
    expect(row).to_contain_text("halted: checked by hand")
    expect(page.locator("#releases-empty")).to_be_hidden()
    expect(page.locator("#fleet-versions")).to_contain_text("Fleet")
