// Tenants (root key) and the API keys of the current tenant: create, scopes, revoke, secret shown once.
import { attempt, badge, button, card, confirmAction, copyButton, dialog, field, formatTime, h, pager, panelHeader, table, toast } from "../ui.js";

const SCOPES = ["storage", "search", "jobs", "events", "realtime", "notify", "payments", "users", "admin"];

function tenantsCard(api, rerender) {
  const list = h("div", {});
  const error = h("div", {});
  const id = h("input", { name: "id", required: true, pattern: "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", autocomplete: "off", placeholder: "acme" });
  const name = h("input", { name: "name", required: true, autocomplete: "off", placeholder: "Acme Inc." });
  const form = h(
    "form",
    { class: "row", "aria-label": "Create a tenant" },
    field("Tenant id", id, "Lowercase letters, digits, dashes"),
    field("Name", name),
    h("div", { class: "field field-button" }, button("Create tenant", null, { kind: "primary", type: "submit" })),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const created = await attempt(error, () => api.post("/v1/tenants", { id: id.value.trim(), name: name.value.trim() }));
    if (!created) return;
    toast(`Tenant ${created.id} created`, "success");
    form.reset();
    await api.refreshTenants();
    rerender();
  });
  const rows = (tenants) =>
    table(
      [
        { label: "Id", value: (t) => h("code", {}, t.id) },
        { label: "Name", value: (t) => t.name },
        { label: "Created", value: (t) => formatTime(t.created_at) },
        {
          label: "Actions",
          class: "actions-cell",
          value: (t) =>
            h(
              "div",
              { class: "actions", style: "justify-content:flex-end" },
              t.id === api.tenant ? badge("current", "accent") : button("Switch to", () => api.switchTenant(t.id), { class: "btn btn-secondary btn-small", "aria-label": `Switch to tenant ${t.id}` }),
              t.id === "default" ? null : button("Delete", () => remove(t), { class: "btn btn-danger btn-small", "aria-label": `Delete tenant ${t.id}` }),
            ),
        },
      ],
      tenants,
      { caption: "Tenants" },
    );
  async function remove(tenant) {
    if (!(await confirmAction(`Delete tenant ${tenant.id}?`, "Everything the tenant owns (keys, objects, indexes, jobs, events) is deleted. This cannot be undone."))) return;
    if ((await attempt(error, () => api.del(`/v1/tenants/${encodeURIComponent(tenant.id)}`))) === undefined) return;
    toast(`Tenant ${tenant.id} deleted`, "success");
    if (api.tenant === tenant.id) await api.switchTenant("default");
    else {
      await api.refreshTenants();
      rerender();
    }
  }
  pager(list, (cursor) => api.get(`/v1/tenants?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`), rows);
  return card("Tenants", form, error, list);
}

function showSecret(key) {
  const body = h(
    "div",
    {},
    h("p", {}, "Copy this secret now: it is shown this once and cannot be recovered. Store it like a password."),
    h("div", { class: "secret", "data-testid": "new-secret" }, h("code", {}, key.secret), copyButton(key.secret, "Copy secret")),
    h("p", { class: "hint" }, `Key ${key.id} in tenant ${key.tenant}, scopes: ${key.scopes.join(", ")}.`),
  );
  return dialog("API key created", body);
}

function keysCard(api, rerender) {
  const list = h("div", {});
  const error = h("div", {});
  const name = h("input", { name: "name", required: true, autocomplete: "off", placeholder: "backend service" });
  const boxes = SCOPES.map((scope) => h("label", {}, h("input", { type: "checkbox", name: "scope", value: scope }), scope));
  const form = h(
    "form",
    { "aria-label": "Create an API key" },
    field("Key name", name),
    h("fieldset", {}, h("legend", {}, "Scopes"), h("div", { class: "checks" }, boxes)),
    button("Create key", null, { kind: "primary", type: "submit" }),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const scopes = [...form.querySelectorAll("input[name=scope]:checked")].map((i) => i.value);
    const key = await attempt(error, () => api.post("/v1/keys", { name: name.value.trim(), scopes }));
    if (!key) return;
    form.reset();
    await showSecret(key);
    rerender();
  });
  async function revoke(key) {
    if (!(await confirmAction(`Revoke key ${key.name}?`, "Requests with this key fail from the very next one.", "Revoke"))) return;
    if ((await attempt(error, () => api.del(`/v1/keys/${encodeURIComponent(key.id)}`))) === undefined) return;
    toast(`Key ${key.name} revoked`, "success");
    rerender();
  }
  const rows = (keys) =>
    table(
      [
        { label: "Name", value: (k) => k.name },
        { label: "Id", value: (k) => h("code", {}, k.id) },
        { label: "Scopes", value: (k) => h("div", { class: "badges" }, k.scopes.map((s) => badge(s, s === "admin" ? "warn" : "neutral"))) },
        { label: "Created", value: (k) => formatTime(k.created_at) },
        { label: "Actions", class: "actions-cell", value: (k) => button("Revoke", () => revoke(k), { class: "btn btn-danger btn-small", "aria-label": `Revoke key ${k.name}` }) },
      ],
      keys,
      { caption: "API keys", emptyText: "No keys in this tenant yet." },
    );
  pager(list, (cursor) => api.get(`/v1/keys?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`), rows);
  return card(`API keys in ${api.tenant}`, h("div", { class: "grid grid-2" }, h("div", {}, list), h("div", {}, form, error)));
}

export async function render(el, api) {
  const draw = () => {
    if (!api.session) return;
    const who = api.isRoot ? "The root key manages every tenant." : `This key administers tenant ${api.session.tenant}.`;
    const cards = api.isRoot ? [tenantsCard(api, draw), keysCard(api, draw)] : [keysCard(api, draw)];
    el.replaceChildren(panelHeader("Tenants & keys", who), ...cards);
  };
  draw();
}
