// The operator dashboard of the AEAMC Microblock Coordinator.
//
// Plain JavaScript, no dependencies and no build step: it must work offline on a LAN.
// It reads the coordinator's own JSON API every two seconds while the tab is visible.
// The operator token never reaches this script: the login exchanges it for an HttpOnly
// session cookie, and changes carry the session's CSRF token in X-AEAMC-CSRF.
// Everything shown comes from the API and is inserted as text, never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const CONSENT_KEY = "aeamc.consent";
  const RATE_WINDOW_MS = 10000;
  const MAX_DEVICE_ROWS = 500;
  const BLOCKS_PER_PAGE = 20;
  const MIN_SPAN_MS = 60000;

  const state = {
    csrf: null,
    view: "overview",
    selectedBlock: null,
    blocksTop: null, // highest height listed; null follows the newest block
    status: null,
    health: null,
    samples: [],
    lastSampleT: 0,
    serverOffsetMs: 0,
    devices: [],
    timer: null,
    running: false,
    again: false,
  };

  const $ = (selector) => document.querySelector(selector);

  // Build an element; children are nodes or strings (always inserted as text).
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function s(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- formatting ---------------------------------------------------------------------------

  const DASH = "—";
  const nf = new Intl.NumberFormat();
  const num = (n) => (typeof n === "number" ? nf.format(n) : DASH);
  const short = (hex, n = 12) => (typeof hex === "string" && hex.length > n ? `${hex.slice(0, n)}…` : hex || DASH);
  const serverNow = () => Date.now() + state.serverOffsetMs;
  const plural = (n, word) => `${num(n)} ${word}${n === 1 ? "" : "s"}`;

  function ago(ms) {
    if (typeof ms !== "number") return DASH;
    const s = Math.max(0, Math.round((serverNow() - ms) / 1000));
    if (s < 2) return "just now";
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(ms).toLocaleString();
  }

  function duration(seconds) {
    if (typeof seconds !== "number") return DASH;
    const d = Math.floor(seconds / 86400);
    const hh = Math.floor((seconds % 86400) / 3600);
    const mm = Math.floor((seconds % 3600) / 60);
    if (d) return `${d} d ${hh} h`;
    if (hh) return `${hh} h ${mm} min`;
    if (mm) return `${mm} min`;
    return `${seconds} s`;
  }

  const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const clockSeconds = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const when = (ms) => (typeof ms === "number" ? new Date(ms).toLocaleString() : DASH);
  const badge = (value, kind = value) => h("span", { class: `badge badge-${String(kind).replace(/\s+/g, "-")}` }, value);

  function counts(obj, order) {
    const parts = [];
    for (const key of order) if (obj && obj[key]) parts.push(`${num(obj[key])} ${key}`);
    return parts.join(" · ");
  }

  // A link only for URLs that cannot run script: http(s) or a path on this origin.
  function safeHref(url) {
    return typeof url === "string" && /^(https?:\/\/|\/(?!\/))/i.test(url) ? url : null;
  }

  // -- consent --------------------------------------------------------------------------------

  function consent() {
    try {
      return JSON.parse(localStorage.getItem(CONSENT_KEY) || "null");
    } catch {
      return null;
    }
  }

  function showConsent(show) {
    $("#consent").hidden = !show;
    document.body.classList.toggle("consent-open", show); // keep the page's end reachable
  }

  function choose(choice) {
    // The only thing this page stores in the browser, and only once you have chosen.
    localStorage.setItem(CONSENT_KEY, JSON.stringify({ choice, at: new Date().toISOString(), version: 1 }));
    showConsent(false);
    toast(choice === "all" ? "Choice saved: accepted." : "Choice saved: only necessary.");
  }

  // -- API ------------------------------------------------------------------------------------

  class AuthError extends Error {}

  async function api(path, options = {}) {
    const method = options.method || "GET";
    const headers = { Accept: "application/json" };
    let body;
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    if (method !== "GET") headers["X-AEAMC-CSRF"] = state.csrf || "";
    const response = await fetch(path, { method, headers, body, credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      loggedOut("Your session has ended. Log in again.");
      throw new AuthError("logged out");
    }
    let data = null;
    if (response.status !== 204) {
      try {
        data = await response.json();
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : response.statusText;
      throw new Error(`${response.status}: ${message}`);
    }
    return data;
  }

  // -- session --------------------------------------------------------------------------------

  async function login(event) {
    event.preventDefault();
    const error = $("#login-error");
    error.hidden = true;
    const token = $("#token").value.trim();
    if (!token) return;
    let response;
    try {
      response = await fetch("/dashboard/login", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token }),
        credentials: "same-origin",
      });
    } catch {
      error.textContent = "The coordinator cannot be reached.";
      error.hidden = false;
      return;
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      error.textContent =
        response.status === 403 && data && data.error && data.error.code === "forbidden"
          ? "This token is valid, but it is not an operator token."
          : "This token is not accepted.";
      error.hidden = false;
      return;
    }
    $("#token").value = "";
    start(data.csrf_token);
  }

  async function logout() {
    try {
      await api("/dashboard/logout", { method: "POST" });
    } catch {
      // Logged out either way: the cookie is gone or was already invalid.
    }
    loggedOut("You are logged out.");
  }

  function loggedOut(message) {
    state.csrf = null;
    clearTimeout(state.timer);
    state.samples = [];
    state.lastSampleT = 0;
    $("#nav").hidden = true;
    $("#session-box").hidden = true;
    for (const view of document.querySelectorAll(".view")) view.hidden = true;
    $("#view-login").hidden = false;
    if (message) toast(message);
    $("#token").focus();
  }

  function start(csrf) {
    state.csrf = csrf;
    $("#view-login").hidden = true;
    $("#nav").hidden = false;
    $("#session-box").hidden = false;
    route();
  }

  // -- routing and polling --------------------------------------------------------------------

  function route() {
    if (!state.csrf) return;
    const [view, arg] = (location.hash.replace(/^#\/?/, "") || "overview").split("/");
    state.view = ["overview", "devices", "explorer", "flags"].includes(view) ? view : "overview";
    const selected = state.view === "explorer" && /^\d+$/.test(arg || "") ? Number(arg) : null;
    if (selected !== state.selectedBlock) state.blockView = null;
    state.selectedBlock = selected;
    for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${state.view}`;
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.view === state.view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    render();
    tick();
  }

  async function tick() {
    if (state.running) {
      state.again = true;
      return;
    }
    clearTimeout(state.timer);
    if (!state.csrf) return;
    state.running = true;
    try {
      await refresh();
      setConnection(true);
    } catch (error) {
      if (!(error instanceof AuthError)) setConnection(false, error);
    } finally {
      state.running = false;
    }
    if (!state.csrf) return;
    if (state.again) {
      state.again = false;
      tick();
    } else if (!document.hidden) {
      state.timer = setTimeout(tick, POLL_MS);
    }
  }

  function setConnection(ok, error) {
    const conn = $("#conn");
    const text = ok ? `Live · ${new Date().toLocaleTimeString()}` : "Connection lost, retrying…";
    conn.className = ok ? "conn ok" : "conn lost";
    conn.title = ok ? "Refreshed every 2 seconds" : String(error && error.message);
    conn.textContent = text;
    // Announce changes of the connection only, not every refresh.
    if (conn.dataset.ok !== undefined && conn.dataset.ok !== String(ok)) {
      toast(ok ? "Connection restored." : "Connection to the coordinator lost, retrying…", !ok);
    }
    conn.dataset.ok = String(ok);
  }

  async function refresh() {
    const [status, health, samples] = await Promise.all([
      api("/v1/status"),
      api("/v1/health"),
      api(`/dashboard/samples?since=${state.lastSampleT}`),
    ]);
    state.status = status;
    state.health = health;
    state.serverOffsetMs = samples.now - Date.now();
    if (samples.samples.length) {
      state.samples.push(...samples.samples);
      state.samples = state.samples.slice(-1800);
      state.lastSampleT = state.samples[state.samples.length - 1].t;
    }
    if (state.view === "overview") {
      state.tasks = (await api("/v1/tasks?limit=8")).tasks;
    } else if (state.view === "devices") {
      state.devices = (await api("/v1/devices")).devices;
    } else if (state.view === "explorer") {
      await loadBlocks();
    } else if (state.view === "flags") {
      const [flags, history, releases] = await Promise.all([
        api("/v1/flags"),
        api("/v1/flags/history"),
        api("/v1/releases"),
      ]);
      state.flags = flags.flags;
      state.flagHistory = history.history;
      state.releases = releases;
    }
    render();
  }

  function render() {
    renderHeader();
    if (state.view === "overview") renderOverview();
    else if (state.view === "devices") renderDevices();
    else if (state.view === "explorer") renderExplorer();
    else if (state.view === "flags") {
      renderFlags();
      renderReleases();
    }
  }

  // -- agent releases (fleet updates) -----------------------------------------------------------

  function renderReleases() {
    const data = state.releases || { releases: [], fleet_versions: {} };
    const versions = Object.entries(data.fleet_versions || {});
    $("#fleet-versions").textContent = versions.length
      ? "Fleet: " + versions.map(([v, n]) => `${v} on ${n} ${n === 1 ? "device" : "devices"}`).join(", ")
      : "No devices yet.";
    $("#releases-table tbody").replaceChildren(
      ...data.releases.map((r) =>
        h(
          "tr",
          {},
          h("td", { class: "mono" }, r.version),
          h("td", { class: "num" }, `${r.percent} %`),
          h("td", {}, r.state === "halted" ? `halted: ${r.halt_reason || ""}` : r.state),
          h("td", { class: "num" }, String(r.progress.updated)),
          h("td", { class: "num" }, String(r.progress.failed)),
          h("td", { class: "num" }, String(r.progress.targeted)),
          h("td", { class: "num" }, String(r.progress.running)),
        ),
      ),
    );
    $("#releases-empty").hidden = data.releases.length > 0;
  }

  // -- flags ----------------------------------------------------------------------------------

  function renderFlags() {
    const flags = state.flags || [];
    const body = $("#flags-table tbody");
    // Keep a field the operator is typing in: rebuild only when the data changed.
    const key = JSON.stringify(flags);
    if (body.dataset.key !== key) {
      body.dataset.key = key;
      body.replaceChildren(
        ...flags.map((f) => {
          const input = h("input", { type: "number", min: "0", max: "100", step: "1", value: String(f.percent), "aria-label": `Rollout of ${f.name} in percent` });
          const button = h("button", { type: "button", class: "button small primary", onclick: (e) => setFlag(f.name, input.value, e.currentTarget) }, "Set");
          return h(
            "tr",
            {},
            h("td", { class: "mono" }, f.name),
            h("td", { class: "num" }, `${f.percent} %`),
            h("td", {}, ago(f.updated_at)),
            h("td", {}, f.updated_by || "—"),
            h("td", { class: "actions" }, input, button),
          );
        }),
      );
    }
    $("#flags-empty").hidden = flags.length > 0;
    const history = (state.flagHistory || []).slice(-50).reverse();
    $("#flag-history").replaceChildren(
      ...history.map((x) =>
        h("li", {}, `${x.name}: ${x.from_percent === null ? "new" : x.from_percent + " %"} → ${x.to_percent} % by ${x.by || "—"}, ${ago(x.at)}`),
      ),
    );
  }

  async function setFlag(name, value, button) {
    const percent = Number(value);
    if (!Number.isInteger(percent) || percent < 0 || percent > 100) {
      toast("A rollout is a whole number from 0 to 100.", true);
      return;
    }
    button.disabled = true;
    try {
      await api(`/v1/flags/${encodeURIComponent(name)}`, { method: "PUT", body: { percent } });
      toast(`${name} set to ${percent} %.`);
    } catch (error) {
      if (!(error instanceof AuthError)) toast(`Setting ${name} failed: ${error.message}`, true);
    } finally {
      button.disabled = false;
      tick();
    }
  }

  function renderHeader() {
    const pending = state.status && state.status.devices ? state.status.devices.pending || 0 : 0;
    const pill = $("#nav-pending");
    pill.hidden = !pending;
    pill.textContent = pending ? `${pending} pending` : "";
  }

  // -- overview -------------------------------------------------------------------------------

  function setStat(id, value, sub) {
    const card = document.getElementById(id);
    card.querySelector(".value").textContent = value;
    card.querySelector(".sub").textContent = sub || "";
  }

  function proofRate() {
    const recent = state.samples.filter((x) => x.t >= state.lastSampleT - RATE_WINDOW_MS);
    if (recent.length < 2) return null;
    const first = recent[0];
    const last = recent[recent.length - 1];
    const seconds = (last.t - first.t) / 1000;
    return seconds > 0 ? Math.max(0, last.proofs - first.proofs) / seconds : null;
  }

  function renderOverview() {
    const st = state.status;
    if (!st) return;
    const devices = st.devices || {};
    const tasks = st.tasks || {};
    const checks = st.spot_checks || {};
    const proofs = Object.values(st.proofs || {}).reduce((a, b) => a + b, 0);
    $("#coord-meta").textContent =
      `Coordinator ${short(st.coordinator_id, 16)} · cluster ${st.cluster_id} · up ${duration(st.uptime_s)}`;
    setStat("stat-devices", num(devices.active || 0), counts(devices, ["pending", "stale", "quarantined"]) || "none pending");
    setStat("stat-tasks", num(tasks.completed || 0), counts(tasks, ["queued", "running", "disputed", "failed"]) || "nothing waiting");
    const rate = proofRate();
    setStat("stat-rate", rate === null ? DASH : rate.toFixed(rate < 10 ? 2 : 1), `${plural(proofs, "proof")} accepted in all`);
    setStat("stat-blocks", num(st.blocks), `${plural(st.unblocked_receipts || 0, "receipt")} waiting for a block`);
    renderAnchors(st.anchoring);
    setStat("stat-checks", num(checks.passed || 0), counts(checks, ["failed", "unanswered", "pending"]) || "no other verdicts");
    renderAlerts();
    renderCharts();
    renderTasks();
  }

  function renderAnchors(a) {
    if (!a) {
      setStat("stat-anchors", DASH, "anchoring is not reported by this coordinator");
      return;
    }
    if (a.enabled === false) {
      setStat("stat-anchors", DASH, "anchoring is disabled");
      return;
    }
    const age = a.last_final_anchor_age_s;
    const parts = [
      a.state,
      typeof a.unanchored_blocks === "number" ? `${num(a.unanchored_blocks)} not yet anchored` : null,
      age === null || age === undefined ? "no final anchor yet" : `last final ${duration(age)} ago`,
      a.embedded ? "embedded chain" : null,
    ].filter(Boolean);
    setStat("stat-anchors", typeof a.blocks_anchored === "number" ? num(a.blocks_anchored) : DASH, parts.join(" · "));
  }

  function renderAlerts() {
    const box = $("#alerts");
    const health = state.health || {};
    const alerts = Array.isArray(health.alerts) ? health.alerts : null;
    const degraded = Array.isArray(health.degraded) ? health.degraded : [];
    box.replaceChildren();
    if (alerts === null && !degraded.length && health.status === "ok") {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    if (health.status && health.status !== "ok") {
      box.append(h("p", { class: "alert alert-critical" }, `Coordinator status: ${health.status}`));
    }
    if (degraded.length) {
      box.append(h("p", { class: "alert alert-warning" }, `Degraded: ${degraded.map(String).join(", ")}`));
    }
    if (alerts !== null && !alerts.length) {
      box.append(h("p", { class: "alert alert-ok" }, "No alerts firing."));
    }
    for (const alert of alerts || []) {
      const href = safeHref(alert.runbook_url);
      box.append(
        h(
          "div",
          { class: `alert alert-${alert.severity === "critical" ? "critical" : "warning"}`, role: "alert" },
          h("strong", {}, String(alert.name || "alert")),
          " ",
          badge(String(alert.severity || "warning")),
          h("span", { class: "alert-summary" }, String(alert.summary || "")),
          h("span", { class: "meta" }, typeof alert.since_ms === "number" ? `firing since ${ago(alert.since_ms)}` : ""),
          href ? h("a", { href, rel: "noopener" }, "Runbook") : null,
        ),
      );
    }
  }

  function renderTasks() {
    const tbody = $("#tasks-table tbody");
    const tasks = state.tasks || [];
    $("#tasks-empty").hidden = tasks.length > 0;
    tbody.replaceChildren(
      ...tasks.map((t) =>
        h(
          "tr",
          {},
          h("td", {}, h("code", { title: t.task_id }, short(t.task_id, 16))),
          h("td", {}, t.kind),
          h("td", { class: "num" }, num(t.chunks)),
          h("td", { class: "num" }, num(t.replicas)),
          h("td", {}, badge(t.state)),
          h("td", {}, ago(t.created_at)),
          h("td", {}, t.completed_at ? ago(t.completed_at) : DASH),
        ),
      ),
    );
  }

  // -- charts (inline SVG) --------------------------------------------------------------------

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * magnitude) return step * magnitude;
    return 10 * magnitude;
  }

  function throughputSeries(samples) {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = (samples[i].t - samples[i - 1].t) / 1000;
      if (dt <= 0) continue;
      out.push({ t: samples[i].t, y: Math.max(0, samples[i].proofs - samples[i - 1].proofs) / dt });
    }
    return out;
  }

  // Runs of consecutive points with a value (a gap in the data is a gap in the line).
  function runs(points, key = "y") {
    const out = [];
    let run = [];
    for (const p of points) {
      if (p[key] === null || p[key] === undefined) {
        if (run.length) out.push(run);
        run = [];
      } else run.push(p);
    }
    if (run.length) out.push(run);
    return out;
  }

  function drawChart(figure, { points, band, yMax, format, label, empty }) {
    const plot = figure.querySelector(".plot");
    const width = Math.max(280, Math.floor(plot.clientWidth || 560));
    const height = 190;
    const pad = { left: 44, right: 12, top: 12, bottom: 26 };
    // The window is an upper bound: a young coordinator's history fills the whole width.
    const t1 = state.lastSampleT || serverNow();
    const first = state.samples.length ? state.samples[0].t : t1;
    const t0 = Math.min(Math.max(t1 - Number($("#window").value) * 1000, first), t1 - MIN_SPAN_MS);
    const windowMs = t1 - t0;
    const stamp = (t) => (windowMs <= 600000 ? clockSeconds(t) : clock(t));
    const x = (t) => pad.left + ((t - t0) / windowMs) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (1 - v / yMax) * (height - pad.top - pad.bottom);
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label });
    for (const fraction of [0, 0.5, 1]) {
      const v = yMax * fraction;
      svg.append(s("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "grid" }));
      svg.append(s("text", { x: pad.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, format(v)));
    }
    svg.append(s("text", { x: pad.left, y: height - 6, class: "tick" }, stamp(t0)));
    svg.append(s("text", { x: (pad.left + width - pad.right) / 2, y: height - 6, class: "tick", "text-anchor": "middle" }, stamp((t0 + t1) / 2)));
    svg.append(s("text", { x: width - pad.right, y: height - 6, class: "tick", "text-anchor": "end" }, stamp(t1)));
    const visible = points.filter((p) => p.t >= t0);
    if (band) {
      for (const run of runs(visible, "lo")) {
        if (run.length < 2) continue;
        const upper = run.map((p) => `${x(p.t).toFixed(1)},${y(p.hi).toFixed(1)}`);
        const lower = run.map((p) => `${x(p.t).toFixed(1)},${y(p.lo).toFixed(1)}`).reverse();
        svg.append(s("polygon", { points: [...upper, ...lower].join(" "), class: "band" }));
      }
    }
    for (const run of runs(visible)) {
      const d = run.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.y).toFixed(1)}`).join("");
      svg.append(s("path", { d, class: "line" }));
      if (run.length === 1) svg.append(s("circle", { cx: x(run[0].t), cy: y(run[0].y), r: 2.5, class: "dot" }));
    }
    if (visible.length < 2) {
      svg.append(s("text", { x: width / 2, y: height / 2, class: "empty-text", "text-anchor": "middle" }, empty));
    }
    plot.replaceChildren(svg);
  }

  function renderCharts() {
    const throughput = throughputSeries(state.samples);
    const peak = throughput.reduce((m, p) => Math.max(m, p.y), 0);
    const latest = throughput.length ? throughput[throughput.length - 1].y : null;
    drawChart($("#chart-throughput"), {
      points: throughput,
      yMax: niceMax(peak),
      format: (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(1)),
      label: latest === null ? "Throughput: no samples yet" : `Throughput: now ${latest.toFixed(2)} proofs per second, peak ${peak.toFixed(2)}`,
      empty: "Collecting samples…",
    });
    const eps = state.samples.map((p) => ({ t: p.t, y: p.eps_mean, lo: p.eps_min, hi: p.eps_max }));
    const last = eps.length ? eps[eps.length - 1] : null;
    drawChart($("#chart-eps"), {
      points: eps,
      band: true,
      yMax: 1,
      format: (v) => v.toFixed(1),
      label: last && last.y !== null ? `EPS of active devices: mean ${last.y.toFixed(2)}, from ${last.lo.toFixed(2)} to ${last.hi.toFixed(2)}` : "EPS: no active device has reported telemetry",
      empty: "No active device with telemetry yet",
    });
  }

  // -- devices --------------------------------------------------------------------------------

  const STATE_ORDER = { pending: 0, active: 1, stale: 2, quarantined: 3 };

  function battery(d) {
    const t = d.telemetry;
    if (!t || t.battery_pct === null || t.battery_pct === undefined) {
      return d.capabilities && d.capabilities.battery === false ? "mains" : DASH;
    }
    return `${t.battery_pct} %${t.charging ? " ⚡" : ""}`;
  }

  function temperature(d) {
    const mc = d.telemetry ? d.telemetry.cpu_temp_mc : null;
    return typeof mc === "number" ? `${(mc / 1000).toFixed(1)} °C` : DASH;
  }

  function actions(d) {
    const id = short(d.device_id, 8);
    const buttons = [];
    if (d.state === "pending") {
      buttons.push(
        h("button", { type: "button", class: "button small primary", "aria-label": `Approve device ${id}`, onclick: (e) => approve(d.device_id, e.currentTarget) }, "Approve"),
      );
    }
    if (d.state !== "quarantined") {
      buttons.push(
        h("button", { type: "button", class: "button small danger-outline", "aria-label": `Quarantine device ${id}`, onclick: () => askQuarantine(d.device_id) }, "Quarantine"),
      );
    }
    return buttons;
  }

  function renderDevices() {
    const tbody = $("#devices-table tbody");
    const wanted = $("#device-state").value;
    const search = $("#device-search").value.trim().toLowerCase();
    const all = state.devices || [];
    const shown = all
      .filter((d) => (!wanted || d.state === wanted) && (!search || d.device_id.includes(search)))
      .sort((a, b) => (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9) || a.device_id.localeCompare(b.device_id));
    const rows = shown.slice(0, MAX_DEVICE_ROWS);
    // Rows are kept by device id and updated in place, so focus survives each refresh.
    const existing = new Map([...tbody.rows].map((r) => [r.dataset.device, r]));
    rows.forEach((d, index) => {
      let row = existing.get(d.device_id);
      existing.delete(d.device_id);
      if (!row) {
        row = h("tr", { "data-device": d.device_id });
        for (let i = 0; i < 9; i++) row.append(h("td"));
        [2, 3, 4, 5, 6].forEach((i) => row.cells[i].classList.add("num"));
      }
      const cells = row.cells;
      const key = `${d.device_id}|${d.state}|${d.eligibility || ""}|${d.state_reason || ""}`;
      if (row.dataset.key !== key) {
        row.dataset.key = key;
        cells[0].replaceChildren(
          h("code", { title: d.device_id }, short(d.device_id, 16)),
          h("span", { class: "meta block" }, d.capabilities ? `v${d.capabilities.version} · ${d.capabilities.cpus} CPU` : ""),
        );
        const why = d.state === "active" && d.eligibility ? d.eligibility : d.state_reason;
        cells[1].replaceChildren(badge(d.state), why ? h("span", { class: "meta block" }, why) : "");
        cells[8].replaceChildren(...actions(d));
        cells[8].className = "actions-cell";
      }
      cells[2].textContent = typeof d.eps === "number" ? d.eps.toFixed(2) : DASH;
      cells[3].textContent = battery(d);
      cells[4].textContent = temperature(d);
      cells[5].textContent = typeof d.reputation === "number" ? d.reputation.toFixed(2) : DASH;
      cells[6].textContent = num(d.record ? d.record.completed : null);
      cells[7].textContent = ago(d.last_seen);
      if (tbody.rows[index] !== row) tbody.insertBefore(row, tbody.rows[index] || null);
    });
    for (const row of existing.values()) row.remove();
    const empty = $("#devices-empty");
    empty.hidden = rows.length > 0;
    empty.textContent = all.length ? "No device matches this filter." : "No device has enrolled yet.";
    $("#devices-note").textContent =
      shown.length > rows.length
        ? `Showing ${rows.length} of ${shown.length} devices: narrow the filter to see the others.`
        : `${plural(all.length, "device")} enrolled.`;
  }

  async function approve(deviceId, button) {
    button.disabled = true;
    try {
      await api(`/v1/devices/${deviceId}/approve`, { method: "POST" });
      toast(`Device ${short(deviceId, 8)} approved.`);
    } catch (error) {
      if (!(error instanceof AuthError)) toast(`Approval failed: ${error.message}`, true);
    } finally {
      button.disabled = false;
      tick();
    }
  }

  function askQuarantine(deviceId) {
    const dialog = $("#quarantine-dialog");
    dialog.dataset.device = deviceId;
    $("#q-device").textContent = deviceId;
    $("#q-error").hidden = true;
    dialog.showModal();
  }

  async function quarantine(event) {
    const dialog = $("#quarantine-dialog");
    if (!event.submitter || event.submitter.value !== "confirm") return; // Cancel closes it
    event.preventDefault();
    const deviceId = dialog.dataset.device;
    const reason = $("#q-reason").value.trim() || "quarantined by the operator";
    try {
      await api(`/v1/devices/${deviceId}/quarantine`, { method: "POST", body: { reason } });
      dialog.close();
      toast(`Device ${short(deviceId, 8)} quarantined.`);
      tick();
    } catch (error) {
      if (error instanceof AuthError) {
        dialog.close();
        return;
      }
      $("#q-error").textContent = error.message;
      $("#q-error").hidden = false;
    }
  }

  // -- explorer -------------------------------------------------------------------------------

  async function loadBlocks() {
    const total = state.status ? state.status.blocks : 0;
    state.blockList = [];
    state.blockView = null;
    if (total > 0) {
      const top = Math.min(state.blocksTop ?? total - 1, total - 1);
      const from = Math.max(0, top - BLOCKS_PER_PAGE + 1);
      const listing = await api(`/v1/microblocks?from=${from}&limit=${top - from + 1}`);
      state.blockList = listing.microblocks.slice().reverse();
    }
    if (state.selectedBlock !== null) {
      try {
        state.blockView = await api(`/v1/microblocks/${state.selectedBlock}`);
      } catch (error) {
        if (error instanceof AuthError) throw error;
        state.blockView = { error: error.message };
      }
    }
  }

  function renderExplorer() {
    const total = state.status ? state.status.blocks : 0;
    const list = state.blockList || [];
    $("#chain-meta").textContent = `${plural(total, "block")} in the chain`;
    $("#blocks-empty").hidden = total > 0;
    $("#blocks-table tbody").replaceChildren(
      ...list.map((b) =>
        h(
          "tr",
          { "aria-current": b.height === state.selectedBlock ? "true" : null },
          h("td", { class: "num" }, h("a", { href: `#/explorer/${b.height}` }, String(b.height))),
          h("td", {}, ago(b.timestamp)),
          h("td", { class: "num" }, num(b.receipt_count)),
          h("td", {}, h("code", { title: b.hash }, short(b.hash, 12))),
        ),
      ),
    );
    const top = list.length ? list[0].height : null;
    const bottom = list.length ? list[list.length - 1].height : null;
    $("#blocks-range").textContent = list.length ? `${bottom}–${top}` : "";
    $("#blocks-newer").disabled = top === null || top >= total - 1;
    $("#blocks-older").disabled = bottom === null || bottom <= 0;
    renderBlock();
  }

  function dl(entries) {
    return h("dl", { class: "fields" }, ...entries.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  const ANCHOR_LABELS = {
    state: "State",
    tx_hash: "Transaction",
    confirmations: "Confirmations",
    block_number: "Chain block",
    chain_id: "Chain id",
    contract: "Contract",
    root: "Merkle root",
    leaf_index: "Leaf index",
    tree_size: "Tree size",
  };

  function anchorSection(anchor) {
    if (anchor === null || typeof anchor !== "object") {
      return h("p", { class: "meta" }, "Not anchored yet.");
    }
    const keys = [...Object.keys(ANCHOR_LABELS).filter((k) => k in anchor), ...Object.keys(anchor).filter((k) => !(k in ANCHOR_LABELS))];
    return dl(
      keys
        .filter((k) => anchor[k] === null || typeof anchor[k] !== "object")
        .map((k) => [ANCHOR_LABELS[k] || k.replace(/_/g, " "), h("code", { class: "wrap" }, anchor[k] === null ? DASH : String(anchor[k]))]),
    );
  }

  function renderBlock() {
    const box = $("#block-detail");
    const view = state.blockView;
    if (state.selectedBlock === null || !view) {
      box.replaceChildren(h("p", { class: "empty" }, "Select a block to see its header, receipts and spot-check verdicts."));
      return;
    }
    if (view.error) {
      box.replaceChildren(h("p", { class: "error" }, `Block ${state.selectedBlock}: ${view.error}`));
      return;
    }
    const header = view.header || {};
    const receipts = view.receipts || [];
    const verdicts = {};
    for (const r of receipts) verdicts[r.spot_check] = (verdicts[r.spot_check] || 0) + 1;
    const height = view.height;
    const children = [
      h("div", { class: "detail-head" },
        h("h2", { id: "block-title" }, `Block ${height}`),
        h("a", { href: `/v1/microblocks/${height}/raw`, download: `microblock-${height}.bin`, class: "button small" }, "Raw bytes"),
      ),
      dl([
        ["Hash", h("code", { class: "wrap" }, view.block_hash)],
        ["Previous", height > 0 ? h("a", { href: `#/explorer/${height - 1}` }, h("code", { class: "wrap" }, header.previous_hash)) : h("code", { class: "wrap" }, header.previous_hash)],
        ["Formed", when(header.timestamp)],
        ["Cluster", String(header.cluster_id)],
        ["Format", `version ${header.version} (magic ${header.magic})`],
        ["Payload hash", h("code", { class: "wrap" }, header.payload_hash)],
        ["Receipts", num(header.receipt_count)],
      ]),
    ];
    if ("anchor" in view) {
      children.push(h("h3", {}, "Anchor"), anchorSection(view.anchor));
    }
    children.push(
      h("h3", {}, "Receipts ", h("span", { class: "meta" }, Object.entries(verdicts).map(([k, n]) => `${n} ${k}`).join(" · "))),
      h("div", { class: "table-wrap" },
        h("table", { id: "receipts-table" },
          h("thead", {}, h("tr", {},
            h("th", { scope: "col", class: "num" }, "#"),
            h("th", { scope: "col" }, "Task"),
            h("th", { scope: "col" }, "Device"),
            h("th", { scope: "col" }, "Signature"),
            h("th", { scope: "col" }, "Spot-check"),
          )),
          h("tbody", {}, ...receipts.map((r, i) =>
            h("tr", { "data-task": r.task_id, "data-device": r.device_id },
              h("td", { class: "num" }, String(i)),
              h("td", {}, h("code", { title: r.task_id }, short(r.task_id, 16))),
              h("td", {}, h("code", { title: r.device_id }, short(r.device_id, 16))),
              h("td", {}, h("code", { title: r.signature }, short(r.signature, 12))),
              h("td", { class: "verdict" }, badge(r.spot_check)),
            ),
          )),
        ),
      ),
    );
    box.replaceChildren(...children);
  }

  // -- toast ----------------------------------------------------------------------------------

  let toastTimer = null;
  function toast(message, isError = false) {
    const box = $("#toast");
    box.textContent = message;
    box.className = `toast show${isError ? " error" : ""}`;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      box.className = "toast";
    }, 4000);
  }

  // -- start-up -------------------------------------------------------------------------------

  async function init() {
    showConsent(consent() === null);
    $("#consent-accept").addEventListener("click", () => choose("all"));
    $("#consent-necessary").addEventListener("click", () => choose("necessary"));
    $("#cookie-settings").addEventListener("click", () => {
      showConsent(true);
      $("#consent-necessary").focus();
    });
    $("#login-form").addEventListener("submit", login);
    $("#logout").addEventListener("click", logout);
    $("#quarantine-form").addEventListener("submit", quarantine);
    $("#device-state").addEventListener("change", renderDevices);
    $("#device-search").addEventListener("input", renderDevices);
    $("#window").addEventListener("change", renderCharts);
    $("#blocks-newer").addEventListener("click", () => pageBlocks(+1));
    $("#blocks-older").addEventListener("click", () => pageBlocks(-1));
    window.addEventListener("hashchange", route);
    window.addEventListener("resize", () => state.view === "overview" && renderCharts());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    let session = { authenticated: false };
    try {
      const response = await fetch("/dashboard/session", { credentials: "same-origin", cache: "no-store" });
      session = await response.json();
    } catch {
      toast("The coordinator cannot be reached.", true);
    }
    if (session.authenticated) start(session.csrf_token);
    else {
      $("#view-login").hidden = false;
      $("#token").focus();
    }
  }

  function pageBlocks(direction) {
    const total = state.status ? state.status.blocks : 0;
    const top = state.blocksTop ?? total - 1;
    const next = top + direction * BLOCKS_PER_PAGE;
    state.blocksTop = next >= total - 1 ? null : Math.max(BLOCKS_PER_PAGE - 1, next);
    tick();
  }

  init();
})();
