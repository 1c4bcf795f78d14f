"""``aeamc-coordinator`` with the dashboard wired into its web application.

It runs the real command line (``python -m tests.dashboard.launcher --config … run``);
the only difference is that the application built by ``build_app`` gets the dashboard's
routes if it does not have them already — so the tests exercise the same process, and
keep doing so unchanged once ``build_app`` adds the routes itself.
"""

from __future__ import annotations

import sys

from aiohttp import web

import aeamc.coordinator.app as app_module
from aeamc.coordinator.dashboard.web import DASHBOARD_KEY, add_dashboard_routes
from aeamc.coordinator.forwarding import Forwarding
from aeamc.coordinator.service import Coordinator

_build_app = app_module.build_app


def build_app(coordinator: Coordinator, forwarding: Forwarding | None = None) -> web.Application:
    app = _build_app(coordinator, forwarding)
    if DASHBOARD_KEY not in app:
        add_dashboard_routes(app, coordinator)
    return app


if __name__ == "__main__":
    app_module.build_app = build_app  # type: ignore[assignment]
    from aeamc.coordinator.cli import main

    sys.exit(main())
