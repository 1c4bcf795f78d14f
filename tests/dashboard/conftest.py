"""One coordinator, one fleet and one browser for this directory: starting them is
most of the cost, and every test reads the state it needs from the API at that moment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.dashboard.support import (
    CHROMIUM_ARGS,
    DashboardCoordinator,
    Fleet,
    chromium_path,
)


@pytest.fixture(scope="package")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardCoordinator]:
    proc = DashboardCoordinator(tmp_path_factory.mktemp("dashboard") / "coord")
    proc.init()
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="package")
def enroll_token(coordinator: DashboardCoordinator) -> str:
    return str(coordinator.operator("POST", "/v1/tokens", {"role": "enroll", "uses": 50})["token"])


@pytest.fixture(scope="package")
def fleet(coordinator: DashboardCoordinator, enroll_token: str) -> Iterator[Fleet]:
    fleet = Fleet(coordinator.url)
    for _ in range(2):
        fleet.add(enroll_token)
    yield fleet
    fleet.close()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    # The coordinator's certificate is from its own CA, which this browser profile does
    # not trust; the browser alone skips that check (every other client verifies it).
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, ignore_https_errors=True)
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def login(page: Page, coordinator: DashboardCoordinator, view: str = "overview") -> None:
    """Log in through the form, as an operator would, and open ``view``."""
    page.goto(f"{coordinator.url}/dashboard/#/{view}")
    page.get_by_label("Operator token").fill(coordinator.token("operator"))
    page.get_by_role("button", name="Log in").click()
    page.locator("#nav").wait_for(state="visible")


@pytest.fixture
def logged_in(page: Page, coordinator: DashboardCoordinator) -> Page:
    login(page, coordinator)
    return page


def policy_path() -> Path:
    return Path(__file__).resolve().parents[2] / "docs" / "privacy-policy.md"
