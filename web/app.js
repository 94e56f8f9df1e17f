// The admin shell: sign-in, navigation, the tenant switcher, and loading each panel as an ES module.
// A panel module exports `render(element, api)` and may return a cleanup function; plugin panels
// (from the `appliance_admin_panels` hook) follow the same contract.
import { createApi, currentSession, signIn } from "./api.js";
import * as ui from "./ui.js";

const { h, icon } = ui;

const PANELS = [
  { id: "overview", title: "Overview", icon: "overview" },
  { id: "tenants", title: "Tenants & keys", icon: "tenants" },
  { id: "storage", title: "Storage", icon: "storage", capability: "storage" },
  { id: "search", title: "Search", icon: "search", capability: "search" },
  { id: "jobs", title: "Jobs", icon: "jobs", capability: "jobs" },
  { id: "events", title: "Events", icon: "events", capability: "events" },
  { id: "realtime", title: "Realtime", icon: "realtime", capability: "realtime" },
  { id: "email", title: "Email", icon: "email", capability: "notify" },
  { id: "payments", title: "Payments", icon: "payments", capability: "payments" },
  { id: "users", title: "Users", icon: "users", capability: "users" },
  { id: "plugins", title: "Plugins", icon: "plugins" },
];

const api = createApi();
api.ui = ui;
let cleanup = null;
let pluginPanels = [];
let capabilityPaths = {};

function show(view) {
  document.getElementById("signin-view").hidden = view !== "signin";
  document.getElementById("app-view").hidden = view !== "app";
}

function showSignIn(message) {
  if (cleanup) cleanup();
  cleanup = null;
  api.session = null;
  show("signin");
  const error = document.getElementById("signin-error");
  error.replaceChildren(message ? h("div", { class: "alert alert-info", role: "status" }, message) : "");
  document.getElementById("signin-key").focus();
}

async function onSignIn(event) {
  event.preventDefault();
  const input = document.getElementById("signin-key");
  const error = document.getElementById("signin-error");
  if (!input.value.trim()) {
    error.replaceChildren(ui.errorBox({ title: "Key required", detail: "paste the root key or an admin-scoped API key" }));
    input.focus();
    return;
  }
  const session = await ui.attempt(error, () => signIn(input.value.trim()));
  input.value = ""; // the key is not kept anywhere: only the HttpOnly cookie remains
  if (session) await start(session);
}

async function start(session) {
  api.session = session;
  api.tenant = session.is_root ? sessionStorage.getItem("appliance.tenant") || session.tenant : session.tenant;
  show("app");
  document.getElementById("who").textContent = session.is_root ? "root key" : `key ${session.key_id} · ${session.tenant}`;
  await Promise.all([loadCapabilities(), loadPlugins(), loadTenants()]);
  buildNav();
  await route();
}

async function loadCapabilities() {
  const result = await ui.attempt(null, () => api.get("/admin/api/capabilities"));
  api.capabilities = {};
  for (const cap of result?.capabilities || []) {
    api.capabilities[cap.name] = cap.installed;
    capabilityPaths[cap.name] = cap.path;
  }
}

async function loadPlugins() {
  const result = await ui.attempt(null, () => api.get("/admin/api/plugins"));
  pluginPanels = result?.panels || [];
}

async function loadTenants() {
  const switcher = document.getElementById("tenant-switcher");
  switcher.hidden = !api.isRoot;
  if (!api.isRoot) return;
  const select = document.getElementById("tenant-select");
  const tenants = (await ui.attempt(null, () => api.all("/v1/tenants"))) || [];
  if (!tenants.some((t) => t.id === api.tenant)) api.tenant = "default";
  select.replaceChildren(...tenants.map((t) => h("option", { value: t.id, selected: t.id === api.tenant }, `${t.name} (${t.id})`)));
}

/** Panels call this after creating or deleting a tenant. */
api.refreshTenants = loadTenants;

function switchTenant(tenant) {
  api.tenant = tenant;
  sessionStorage.setItem("appliance.tenant", tenant); // a tenant id, never a credential
  ui.toast(`Now acting in tenant ${tenant}`, "success");
  route();
}
api.switchTenant = async (tenant) => {
  await loadTenants();
  document.getElementById("tenant-select").value = tenant;
  switchTenant(tenant);
};

function buildNav() {
  const list = document.getElementById("nav-list");
  const items = PANELS.map((panel) => {
    const missing = panel.capability && !api.has(panel.capability);
    return h(
      "li",
      {},
      h(
        "a",
        { href: `#/${panel.id}`, dataset: { panel: panel.id }, class: missing ? "nav-missing" : "" },
        icon(panel.icon),
        h("span", {}, panel.title),
        missing ? h("span", { class: "sr-only" }, " (not installed)") : null,
      ),
    );
  });
  const extras = pluginPanels.map((panel) =>
    h("li", {}, h("a", { href: `#/plugin/${encodeURIComponent(panel.id)}`, dataset: { panel: `plugin/${panel.id}` } }, icon("puzzle"), h("span", {}, panel.title))),
  );
  list.replaceChildren(...items, ...(extras.length ? [h("li", { class: "nav-section", "aria-hidden": "true" }, "Plugin panels"), ...extras] : []));
}

function markActive(id) {
  for (const link of document.querySelectorAll("#nav-list a")) {
    if (link.dataset.panel === id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function loadModule(id) {
  if (id.startsWith("plugin/")) {
    const panel = pluginPanels.find((p) => `plugin/${p.id}` === id);
    if (!panel) return null;
    const url = new URL(panel.module_url, location.href);
    if (url.origin !== location.origin) throw { title: "Refused", detail: `plugin panel ${panel.id} is not served by this appliance (${url.origin})` };
    return { module: await import(url.href), panel: { ...panel, icon: "puzzle" } };
  }
  const panel = PANELS.find((p) => p.id === id);
  if (!panel) return null;
  return { module: await import(`./panels/${panel.id}.js`), panel };
}

let routeSeq = 0;

async function route() {
  if (!api.session) return;
  // A navigation that a newer one overtook (a slow import or render) must not touch the page.
  const seq = ++routeSeq;
  const current = () => seq === routeSeq;
  const id = decodeURIComponent(location.hash.replace(/^#\/?/, "")) || "overview";
  const main = document.getElementById("main");
  if (cleanup) cleanup();
  cleanup = null;
  markActive(id);
  closeMenu();
  main.replaceChildren(h("p", { class: "loading", role: "status" }, "Loading…"));
  try {
    const loaded = await loadModule(id);
    if (!current()) return;
    if (!loaded) {
      main.replaceChildren(ui.panelHeader("Not found"), ui.empty(`There is no panel called “${id}”.`));
      return;
    }
    const { module, panel } = loaded;
    document.title = `${panel.title} · Appliance admin`;
    if (panel.capability && !api.has(panel.capability)) {
      main.replaceChildren(ui.panelHeader(panel.title), ui.notInstalled(panel.title, panel.capability, capabilityPaths[panel.capability] || "its endpoints"));
    } else {
      const el = h("div", { class: "panel", dataset: { panel: panel.id } });
      main.replaceChildren(el);
      const result = await module.render(el, api);
      if (!current()) {
        if (typeof result === "function") result(); // its timers stop with it
        return;
      }
      if (typeof result === "function") cleanup = result;
    }
  } catch (error) {
    if (!current()) return;
    main.replaceChildren(ui.panelHeader("Something went wrong"), ui.errorBox(error));
  }
  const title = main.querySelector("h1");
  if (title) {
    title.setAttribute("tabindex", "-1");
    title.focus({ preventScroll: true });
  }
}

function closeMenu() {
  document.getElementById("sidebar").classList.remove("open");
  document.getElementById("menu-toggle").setAttribute("aria-expanded", "false");
}

async function signOut() {
  await ui.attempt(null, () => api.del("/admin/api/session"));
  sessionStorage.removeItem("appliance.tenant");
  location.hash = "";
  showSignIn("You are signed out.");
}

function wire() {
  document.getElementById("signin-form").addEventListener("submit", onSignIn);
  document.getElementById("signout").addEventListener("click", signOut);
  document.getElementById("tenant-select").addEventListener("change", (e) => switchTenant(e.target.value));
  const toggle = document.getElementById("menu-toggle");
  toggle.append(icon("menu", 20));
  toggle.addEventListener("click", () => {
    const open = document.getElementById("sidebar").classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
  });
  document.getElementById("signout").prepend(icon("signout", 16));
  window.addEventListener("hashchange", route);
  api.onUnauthorized = () => showSignIn("Your session has ended. Sign in again.");
  wireBusy();
}

// While requests are in flight: a progress bar under the top bar (after 150 ms, so quick calls do
// not flicker) and the submitted form's buttons disabled, so a slow action is not sent twice.
function wireBusy() {
  const bar = document.getElementById("busy");
  let timer = null;
  api.onBusy = (count) => {
    if (count > 0 && !timer && bar.hidden) timer = setTimeout(() => (bar.hidden = false), 150);
    if (count === 0) {
      clearTimeout(timer);
      timer = null;
      bar.hidden = true;
      for (const form of document.querySelectorAll("form[aria-busy=true]")) {
        form.removeAttribute("aria-busy");
        for (const b of form.querySelectorAll("button[data-busy]")) {
          b.disabled = false;
          delete b.dataset.busy;
        }
      }
    }
  };
  document.getElementById("main").addEventListener("submit", (event) => {
    const form = event.target;
    setTimeout(() => {
      if (!api.inflight) return; // the handler finished (or sent nothing) already
      form.setAttribute("aria-busy", "true");
      for (const b of form.querySelectorAll("button[type=submit]:not([disabled])")) {
        b.disabled = true;
        b.dataset.busy = "1";
      }
    });
  });
}

async function boot() {
  wire();
  try {
    const session = await currentSession();
    if (session) await start(session);
    else showSignIn();
  } catch (error) {
    showSignIn();
    document.getElementById("signin-error").replaceChildren(ui.errorBox(error));
  }
}

boot();
