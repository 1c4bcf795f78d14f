"""The dashboard's HTTP surface on a real coordinator: what is public, what needs a login,
which cookie is set when, and how a cookie-authenticated change is guarded against CSRF."""

from __future__ import annotations

import html

from aeamc.coordinator.alerts import evaluate
from aeamc.coordinator.dashboard import markdown
from aeamc.coordinator.dashboard.web import (
    CONTENT_SECURITY_POLICY,
    policy_source,
    runbook_source,
)
from tests.dashboard.conftest import policy_path
from tests.dashboard.support import Browserless, DashboardCoordinator, Fleet, wait_for


def test_privacy_policy_is_public_and_sets_no_cookie(coordinator: DashboardCoordinator) -> None:
    client = Browserless(coordinator.url, coordinator.ssl_context())
    status, headers, body = client.request("GET", "/privacy")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["set-cookie"] == ""
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    page = body.decode()
    found = markdown.headings(policy_path().read_text())
    assert len(found) >= 6
    for h in found:
        assert f'<h{h.level} id="{h.anchor}">' in page, h
        assert html.escape(h.text, quote=True) in page, h
    for fact in ("30 days", "aeamc-agent privacy export", "aeamc-agent privacy forget"):
        assert fact in page
    assert "<script" not in page


def test_the_served_policy_is_the_documented_one() -> None:
    assert policy_source() == policy_path().read_text(encoding="utf-8")


def test_the_served_runbook_is_the_documented_one() -> None:
    assert runbook_source() == (policy_path().parent / "runbook.md").read_text(encoding="utf-8")


def test_runbook_is_served_without_login_with_every_alerts_anchor(
    coordinator: DashboardCoordinator,
) -> None:
    """Each alert links to ``/runbook#<anchor>``: the page must carry that id."""
    status, headers, body = Browserless(coordinator.url, coordinator.ssl_context()).request(
        "GET", "/runbook"
    )
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["set-cookie"] == ""
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    page = body.decode()
    running = [(0, 500, 9.0)] * 20
    anchoring = {
        "enabled": True,
        "unanchored_blocks": 1,
        "oldest_unanchored_age_s": 10**6,
        "balance_wei": 1,
        "wallet_burn_wei_per_s": 1,
    }
    alerts = evaluate(running, anchoring, 1000)
    assert len(alerts) == 5
    for alert in alerts:
        path, _, anchor = alert.runbook_url.partition("#")
        assert path == "/runbook"
        assert f' id="{anchor}">' in page, alert


def test_page_and_assets_load_without_login_or_cookies(coordinator: DashboardCoordinator) -> None:
    client = Browserless(coordinator.url, coordinator.ssl_context())
    for path in ("/", "/dashboard"):
        status, headers, _ = client.request("GET", path)
        assert status == 302 and headers["location"] == "/dashboard/"
    status, headers, body = client.request("GET", "/dashboard/")
    assert status == 200 and b'id="login-form"' in body
    assert headers["x-frame-options"] == "DENY"
    for name, media in (
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ):
        status, headers, body = client.request("GET", f"/dashboard/static/{name}")
        assert status == 200 and headers["content-type"].startswith(media) and body
        again = client.request(
            "GET", f"/dashboard/static/{name}", headers={"If-None-Match": headers["etag"]}
        )
        assert again[0] == 304
    for name in ("web.py", "..%2Fweb.py", "index.html"):
        status, _, body = client.request("GET", f"/dashboard/static/{name}")
        assert status == 404 and body["error"]["code"] == "not_found"
    assert not list(client.jar)


def test_logged_out_requests_for_data_are_refused(coordinator: DashboardCoordinator) -> None:
    client = Browserless(coordinator.url, coordinator.ssl_context())
    forged = {"Cookie": "aeamc_session=not-a-session"}
    for path in ("/v1/status", "/v1/devices", "/v1/tasks", "/dashboard/samples"):
        for headers in ({}, forged):
            status, _, body = client.request("GET", path, headers=headers)
            assert status == 401 and body["error"]["code"] == "unauthorized", (path, body)
    status, headers, body = client.request("GET", "/dashboard/session", headers=forged)
    assert status == 200 and body == {"authenticated": False}
    assert 'aeamc_session=""' in headers["set-cookie"] or "Max-Age=0" in headers["set-cookie"]


def test_login_cookie_and_csrf(coordinator: DashboardCoordinator, fleet: Fleet) -> None:
    client = Browserless(coordinator.url, coordinator.ssl_context())
    for body, status in (
        ({"token": "not-a-token"}, 401),
        ({"token": coordinator.token("client")}, 403),
        ({}, 400),
    ):
        assert client.request("POST", "/dashboard/login", body)[0] == status
    assert not list(client.jar)

    status, headers, body = client.request(
        "POST", "/dashboard/login", {"token": coordinator.token("operator")}
    )
    assert status == 200, body
    cookie = headers["set-cookie"]
    assert cookie.startswith("aeamc_session=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
        assert attribute in cookie
    assert "Secure" in cookie  # served over TLS 1.3 only
    assert coordinator.token("operator") not in cookie + str(body)
    csrf = body["csrf_token"]
    assert client.request("GET", "/dashboard/session")[2] == {
        "authenticated": True,
        "csrf_token": csrf,
        "expires_at": body["expires_at"],
    }
    assert client.request("GET", "/v1/devices")[0] == 200
    # A bearer token, when present, is what counts, never the cookie.
    client_token = {"Authorization": f"Bearer {coordinator.token('client')}"}
    assert client.request("GET", "/v1/devices", headers=client_token)[0] == 403

    pending = fleet.add(None)
    approve = f"/v1/devices/{pending.device_id}/approve"
    own_origin = {"Origin": coordinator.url}
    for headers in (
        {},
        own_origin,
        {**own_origin, "X-AEAMC-CSRF": "wrong"},
        {"Origin": "http://evil.example", "X-AEAMC-CSRF": csrf},
    ):
        status, _, out = client.request("POST", approve, headers=headers)
        assert status == 403 and out["error"]["code"] == "forbidden", (headers, out)
    status, _, out = client.request("POST", "/v1/tokens", {"role": "operator"}, headers=own_origin)
    assert status == 403
    assert coordinator.operator("GET", f"/v1/devices/{pending.device_id}")["state"] == "pending"

    status, _, out = client.request("POST", approve, headers={**own_origin, "X-AEAMC-CSRF": csrf})
    assert status == 200 and out["state"] == "active"
    wait_for(
        lambda: coordinator.operator("GET", f"/v1/devices/{pending.device_id}")["state"] == "active"
    )

    assert client.request("POST", "/dashboard/logout")[0] == 403
    status, headers, _ = client.request("POST", "/dashboard/logout", headers={"X-AEAMC-CSRF": csrf})
    assert status == 204 and "aeamc_session=" in headers["set-cookie"]
    assert not list(client.jar)
    assert client.request("GET", "/v1/devices")[0] == 401


def test_form_login_and_samples(coordinator: DashboardCoordinator, fleet: Fleet) -> None:
    client = Browserless(coordinator.url, coordinator.ssl_context())
    raw = f"token={coordinator.token('operator')}".encode()
    status, _, body = client.request(
        "POST", "/dashboard/login", raw=raw, content_type="application/x-www-form-urlencoded"
    )
    assert status == 200 and body["csrf_token"]
    # The first sample may predate the fleet's first heartbeats: wait for one after them.
    out = wait_for(
        lambda: (
            (s := client.request("GET", "/dashboard/samples")[2])["samples"]
            and s["samples"][-1]["active"] >= 1
            and s
        )
    )
    latest = out["samples"][-1]
    assert set(latest) == {"t", "proofs", "blocks", "active", "eps_mean", "eps_min", "eps_max"}
    assert latest["active"] >= 1 and 0 <= latest["eps_min"] <= latest["eps_max"] <= 1
    newer = client.request("GET", f"/dashboard/samples?since={latest['t']}")[2]["samples"]
    assert all(s["t"] > latest["t"] for s in newer)
    assert client.request("GET", "/dashboard/samples?since=x")[0] == 400
