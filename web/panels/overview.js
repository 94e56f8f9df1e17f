// Overview: each backend from /readyz (mode, health, version, latency), counts and trends.
import { barChart, color, donut, sparkline } from "../charts.js";
import { attempt, badge, card, errorBox, h, panelHeader } from "../ui.js";

const CAPABILITIES = ["storage", "search", "jobs", "events", "realtime", "notify", "payments", "users"];
const history = []; // total /readyz latency over this page's life, newest last

async function readiness(api) {
  const started = performance.now();
  // 503 still carries every backend's status (problem+json with `backends`).
  const response = await api.raw("GET", "/readyz", { allow: [503] });
  const body = await response.json();
  return { backends: body.backends || [], ok: response.ok, detail: body.detail, roundTrip: performance.now() - started };
}

function backendCard(b) {
  return h(
    "article",
    { class: "card backend", "aria-label": `${b.name} backend` },
    h(
      "div",
      { class: "backend-head" },
      h("span", { class: "backend-name" }, h("span", { class: `dot ${b.ok ? "dot-ok" : "dot-bad"}`, "aria-hidden": "true" }), b.name),
      badge(b.ok ? "healthy" : "down", b.ok ? "ok" : "bad"),
    ),
    h(
      "dl",
      { class: "kv" },
      h("dt", {}, "Backend"), h("dd", {}, b.backend),
      h("dt", {}, "Mode"), h("dd", {}, badge(b.mode, b.mode === "embedded" ? "accent" : "neutral")),
      h("dt", {}, "Version"), h("dd", {}, b.version || "—"),
      h("dt", {}, "Latency"), h("dd", {}, `${Number(b.latency_ms || 0).toFixed(1)} ms`),
    ),
    b.detail ? h("p", { class: b.ok ? "hint" : "alert alert-error" }, b.detail) : null,
  );
}

function stat(label, value) {
  return h("div", { class: "card stat" }, h("span", { class: "stat-value" }, String(value)), h("span", { class: "stat-label" }, label));
}

async function counts(api) {
  const [tenants, keys] = await Promise.all([
    api.isRoot ? attempt(null, () => api.all("/v1/tenants")) : Promise.resolve(null),
    attempt(null, () => api.all("/v1/keys")),
  ]);
  const installed = CAPABILITIES.filter((c) => api.has(c)).length;
  return { tenants: tenants ? tenants.length : "—", keys: keys ? keys.length : "—", installed };
}

export async function render(el, api) {
  const body = h("div", {});
  const refresh = h("button", { type: "button", class: "btn btn-secondary" }, "Refresh");
  el.replaceChildren(panelHeader("Overview", `Health of every backend, in tenant ${api.tenant}.`, refresh), body);

  async function draw() {
    let ready;
    try {
      ready = await readiness(api);
    } catch (error) {
      body.className = "stack";
    body.replaceChildren(errorBox(error));
      return;
    }
    if (!api.session) return; // signed out (or the session ended) while this was in flight
    history.push(ready.roundTrip);
    while (history.length < 6) history.push((await readiness(api)).roundTrip); // a first trend, not a dot
    if (history.length > 30) history.shift();
    const c = await counts(api);
    const healthy = ready.backends.filter((b) => b.ok).length;
    const status = ready.ok
      ? h("div", { class: "alert alert-ok", role: "status" }, ready.backends.length === 1 ? "The one backend is healthy." : `All ${ready.backends.length} backends are healthy.`)
      : h("div", { class: "alert alert-error", role: "alert" }, ready.detail || "Some backends are down.");
    const capParts = [
      { label: "installed", value: c.installed, color: "var(--accent)" },
      { label: "not installed", value: CAPABILITIES.length - c.installed, color: "var(--border)" },
    ];
    body.className = "stack";
    body.replaceChildren(
      status,
      h("div", { class: "grid grid-4" }, stat("Backends healthy", `${healthy} / ${ready.backends.length}`), stat("Tenants", c.tenants), stat(`Keys in ${api.tenant}`, c.keys), stat("Capabilities installed", `${c.installed} / ${CAPABILITIES.length}`)),
      h("h2", { class: "section-title" }, "Backends"),
      h("div", { class: "grid grid-3" }, ready.backends.map(backendCard)),
      h(
        "div",
        { class: "grid grid-2" },
        card("Backend latency", barChart(ready.backends.map((b, i) => ({ label: b.name, value: Number(b.latency_ms || 0), color: b.ok ? color(i) : "var(--bad)" })), { title: "Health-check latency per backend in milliseconds", format: (v) => `${v.toFixed(1)} ms` })),
        card(
          "Readiness round trip",
          sparkline(history, { title: `Round trip of /readyz over the last ${history.length} checks; latest ${history.at(-1).toFixed(0)} ms` }),
          h("p", { class: "hint" }, `Latest ${history.at(-1).toFixed(0)} ms · refreshed every 10 s while this page is open`),
        ),
      ),
      card(
        "Capabilities",
        h(
          "div",
          { class: "spread" },
          donut(capParts, { title: `${c.installed} of ${CAPABILITIES.length} capabilities installed`, center: `${c.installed}/${CAPABILITIES.length}` }),
          h("div", { class: "badges", style: "flex:1" }, CAPABILITIES.map((cap) => badge(cap, api.has(cap) ? "ok" : "neutral"))),
        ),
      ),
    );
  }

  refresh.addEventListener("click", draw);
  await draw();
  const timer = setInterval(draw, 10000);
  return () => clearInterval(timer);
}
