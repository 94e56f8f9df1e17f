// Realtime: the tenant's live WebSocket connections and a test broadcast.
import { attempt, badge, button, card, field, formatTime, h, panelHeader, parseJson, table, toast } from "../ui.js";

const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

export async function render(el, api) {
  const error = h("div", {});
  const connections = h("div", {});
  const count = h("strong", {}, "—");

  async function load() {
    const page = await attempt(connections, () => api.get("/v1/connections?limit=500"));
    if (!page) return;
    const items = page.items;
    count.textContent = String(items.length);
    connections.replaceChildren(
      table(
        [
          { label: "Connection", value: (c) => h("code", {}, c.id) },
          { label: "User", value: (c) => c.user_id || "—" },
          { label: "Tags", value: (c) => h("div", { class: "badges" }, (c.tags || []).map((t) => badge(t))) },
          { label: "Channels", value: (c) => h("div", { class: "badges" }, (c.channels || []).map((t) => badge(t, "accent"))) },
          { label: "Transport", value: (c) => badge(c.transport, "neutral") },
          { label: "Since", value: (c) => formatTime(c.since) },
        ],
        items,
        { caption: "Live connections", emptyText: "No client is connected right now." },
      ),
    );
  }

  const channel = h("input", { name: "channel", value: "announcements", autocomplete: "off" });
  const data = h("textarea", { name: "data" });
  data.value = '{"message": "Hello from the admin console"}';
  const eventName = h("input", { name: "event", value: "message", autocomplete: "off" });
  const users = h("input", { name: "user_ids", placeholder: "optional: alice, bob" });
  const tags = h("input", { name: "tags", placeholder: "optional: beta" });
  const result = h("div", { "aria-live": "polite" });
  const form = h("form", { "aria-label": "Send a test broadcast" }, h("div", { class: "row" }, field("Channel", channel), field("Event", eventName)), field("Data (JSON)", data), h("div", { class: "row" }, field("Only users", users), field("Only tags", tags)), button("Broadcast", null, { kind: "primary", type: "submit" }), result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const filter = {};
    if (list(users.value).length) filter.user_ids = list(users.value);
    if (list(tags.value).length) filter.tags = list(tags.value);
    const sent = await attempt(error, () => api.post(`/v1/channels/${encodeURIComponent(channel.value.trim())}/broadcast`, { data: parseJson(data.value, "data") ?? null, event: eventName.value.trim() || "message", filter: Object.keys(filter).length ? filter : null }));
    if (!sent) return;
    result.replaceChildren(h("div", { class: "alert alert-ok" }, `Message ${sent.id} is on its way to ${sent.delivered} connection(s).`));
    toast("Broadcast sent", "success");
  });

  const refresh = button("Refresh", load, { iconName: "refresh" });
  el.replaceChildren(
    panelHeader("Realtime", `WebSocket clients of tenant ${api.tenant}.`, refresh),
    error,
    card("Connections", h("p", { class: "hint" }, count, " live connection(s) on every node, refreshed every 5 s"), connections),
    card("Test broadcast", form),
  );
  await load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}
