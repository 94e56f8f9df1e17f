// Plugins: what is installed, whether it is enabled, and what each contributes (hooks, panels).
import { attempt, badge, card, errorBox, h, panelHeader, table } from "../ui.js";

const HOOK_LABELS = {
  appliance_backends: "backends",
  appliance_route_handlers: "routes",
  appliance_job_handlers: "job handlers",
  appliance_event_handlers: "event handlers",
  appliance_migrations: "migrations",
  appliance_admin_panels: "admin panels",
  appliance_cli_commands: "CLI commands",
  appliance_startup: "startup",
  appliance_shutdown: "shutdown",
};

export async function render(el, api) {
  const error = h("div", {});
  el.replaceChildren(panelHeader("Plugins", "Installed plugins, whether they are enabled (APPLIANCE_PLUGINS), and what each contributes."), error);
  const data = await attempt(error, () => api.get("/admin/api/plugins"));
  if (!data) return;
  const plugins = table(
    [
      { label: "Plugin", value: (p) => h("strong", {}, p.name) },
      { label: "Version", value: (p) => h("code", {}, p.version) },
      { label: "State", value: (p) => badge(p.enabled ? "enabled" : "disabled", p.enabled ? "ok" : "neutral") },
      { label: "Contributes", value: (p) => h("div", { class: "badges" }, p.hooks.length ? p.hooks.map((hook) => badge(HOOK_LABELS[hook] || hook, "accent")) : "—") },
    ],
    data.plugins,
    { caption: "Plugins", emptyText: "No plugins are installed. Plugins are Python packages with an appliance.plugins entry point." },
  );
  const panels = table(
    [
      { label: "Panel", value: (p) => h("a", { href: `#/plugin/${encodeURIComponent(p.id)}` }, p.title) },
      { label: "Module", value: (p) => h("code", {}, p.module_url) },
    ],
    data.panels,
    { caption: "Plugin panels", emptyText: "No plugin adds an admin panel." },
  );
  el.append(card("Installed plugins", plugins), card("Admin panels from plugins", panels));
  if (!data.plugins.length && data.panels.length) el.append(errorBox({ title: "Note", detail: "panels were contributed by plugins registered directly" }));
}
