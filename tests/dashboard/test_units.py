"""The dashboard's pure parts: the Markdown subset (and that it cannot inject markup),
sessions, fleet samples, and the route table the API document is built from."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from aeamc.coordinator.dashboard import markdown
from aeamc.coordinator.dashboard.samples import Sampler
from aeamc.coordinator.dashboard.sessions import SessionStore
from aeamc.coordinator.dashboard.web import (
    DASHBOARD_KEY,
    add_dashboard_routes,
    openapi_paths,
    session_auth_middleware,
)
from aeamc.shared.eps import EpsConfig
from aeamc.shared.messages import Telemetry
from tests.support.device import GOOD_TELEMETRY

DOC = """# Title <b>bold</b>

A paragraph with `<code>` and **strong** and *em*,
continued on a second line. <script>alert(1)</script>

- first item
  continues here
- [a link](https://example.org/?a=1&b=2) and [bad](javascript:alert(1))
- <https://example.org/auto>

3. third
4. fourth

| key | value |
| --- | --- |
| `a\\|b` | <img src=x onerror=alert(1)> |
| short |

```sh
echo "<not html>" && exit 1
```

> quoted *text*

---
"""


def test_markdown_subset() -> None:
    out = markdown.render(DOC)
    assert '<h1 id="title-bboldb">Title &lt;b&gt;bold&lt;/b&gt;</h1>' in out
    assert (
        "<p>A paragraph with <code>&lt;code&gt;</code> and <strong>strong</strong> and "
        "<em>em</em>, continued on a second line. "
        "&lt;script&gt;alert(1)&lt;/script&gt;</p>"
    ) in out
    assert "<li>first item continues here</li>" in out
    assert '<a href="https://example.org/?a=1&amp;b=2">a link</a>' in out
    assert "[bad](javascript:alert(1))" in out and 'href="javascript' not in out
    assert '<a href="https://example.org/auto">https://example.org/auto</a>' in out
    assert '<ol start="3"><li>third</li><li>fourth</li></ol>' in out
    assert '<th scope="col">key</th>' in out
    assert "<td><code>a|b</code></td><td>&lt;img src=x onerror=alert(1)&gt;</td>" in out
    assert "<tr><td>short</td><td></td></tr>" in out  # a short row is padded
    assert (
        '<pre><code class="language-sh">echo &quot;&lt;not html&gt;&quot; &amp;&amp; exit 1'
        "</code></pre>"
    ) in out
    assert "<blockquote><p>quoted <em>text</em></p></blockquote>" in out
    assert out.endswith("<hr>")
    for tag in ("<script", "<img", "<b>"):
        assert tag not in out


def test_markdown_headings_and_slugs() -> None:
    source = "# One\n\n```\n# not a heading\n```\n\n## Two: `code` & [link](/x)\n"
    assert [(h.level, h.text, h.anchor) for h in markdown.headings(source)] == [
        (1, "One", "one"),
        (2, "Two: code & link", "two-code-link"),
    ]
    assert markdown.slug("¿?") == "section"


def test_sessions_expire_and_are_bounded() -> None:
    now = [1_000]
    store = SessionStore(lambda: now[0], lifetime_ms=100, max_sessions=2)
    first, session = store.create("token-1")
    assert store.get(first) is session
    assert session.csrf_matches(session.csrf_token)
    assert not session.csrf_matches(None) and not session.csrf_matches("x")
    assert store.get(None) is None and store.get("x" * 200) is None
    now[0] += 1
    second, _ = store.create("token-2")
    now[0] += 1
    third, _ = store.create("token-3")  # the oldest makes room
    assert store.get(first) is None and store.get(second) is not None and len(store) == 2
    now[0] += 99  # the second has lived its 100 ms, the third not quite
    assert store.get(second) is None and store.get(third) is not None
    store.drop(third)
    assert store.get(third) is None and len(store) == 0


def _device(state: str, battery: int | None) -> SimpleNamespace:
    telemetry = None
    if battery is not None:
        telemetry = Telemetry(**{**GOOD_TELEMETRY, "battery_pct": battery})
    return SimpleNamespace(state=state, telemetry=telemetry)


def test_sampler_summarises_active_devices() -> None:
    clock = [5_000]
    coordinator: Any = SimpleNamespace(
        devices={
            "a": _device("active", 100),
            "b": _device("active", 50),
            "c": _device("active", None),
            "d": _device("pending", 10),
        },
        eps_config=EpsConfig(),
        counters={"proofs_accepted": 7, "blocks": 2},
        clock=lambda: clock[0],
    )
    sampler = Sampler(coordinator, capacity=2)
    first = sampler.take()
    assert (first.t, first.proofs, first.blocks, first.active) == (5_000, 7, 2, 3)
    assert first.eps_min is not None and first.eps_max is not None
    assert first.eps_min < first.eps_mean < first.eps_max  # type: ignore[operator]
    coordinator.devices = {}
    for t in (6_000, 7_000):
        clock[0] = t
        sampler.take()
    assert [s["t"] for s in sampler.since(0)] == [6_000, 7_000]  # capacity 2
    assert sampler.since(6_000)[0]["eps_mean"] is None


def test_routes_match_their_openapi_description() -> None:
    app = web.Application(middlewares=[])
    add_dashboard_routes(app, object())  # type: ignore[arg-type]
    served = {
        (r.method, r.resource.canonical)  # type: ignore[union-attr]
        for r in app.router.routes()
        if r.method != "HEAD"
    }
    documented = {(m.upper(), p) for p, ops in openapi_paths().items() for m in ops}
    assert served == documented
    assert all(path == "/" or not path.startswith("/v1/") for _, path in served)
    assert app.middlewares[-1] is session_auth_middleware
    assert DASHBOARD_KEY in app


@pytest.mark.parametrize("document", [openapi_paths()])
def test_openapi_operations_are_complete(document: dict[str, Any]) -> None:
    for ops in document.values():
        for op in ops.values():
            # Each status it can answer, by its number (no 4XX catch-all), 413 and 429 too.
            assert op["summary"] and {"413", "429"} <= set(op["responses"])
            assert all(status.isdigit() for status in op["responses"]), op["responses"]


def test_every_dashboard_file_is_shipped() -> None:
    """Each page, asset and the policy copy is matched by the package-data globs."""
    import fnmatch
    import tomllib
    from pathlib import Path

    import aeamc.coordinator.dashboard as package

    root = Path(package.__file__).parent
    pyproject = Path(__file__).resolve().parents[2] / "coordinator" / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    globs = data["aeamc.coordinator.dashboard"]
    files = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc")
    ]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, g) for g in globs), name
