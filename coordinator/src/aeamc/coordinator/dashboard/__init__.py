"""The operator dashboard: a single page served by the coordinator itself, working offline
on the LAN (no CDN, no build step), plus the privacy policy at ``/privacy``.

``add_dashboard_routes(app, coordinator)`` is all the API needs to call.
"""

from __future__ import annotations

from .web import (
    COOKIE_NAME,
    CSRF_HEADER,
    add_dashboard_routes,
    openapi_paths,
    session_auth_middleware,
)

__all__ = [
    "COOKIE_NAME",
    "CSRF_HEADER",
    "add_dashboard_routes",
    "openapi_paths",
    "session_auth_middleware",
]
