// Email: captured messages rendered safely, delivery status, and the templates editor with preview.
import { attempt, badge, button, card, field, formatTime, h, jsonBlock, panelHeader, parseJson, table, toast } from "../ui.js";

const STATUS_KIND = { queued: "neutral", sending: "accent", sent: "ok", captured: "accent", failed: "warn", dead: "bad" };

/** Untrusted HTML goes only into an iframe with every sandbox restriction on (no scripts, no forms,
 * no navigation, an opaque origin); the page's CSP also keeps it from loading remote images. */
function sandboxed(html, title) {
  const frame = h("iframe", { class: "preview-frame", sandbox: "", title, referrerpolicy: "no-referrer" });
  frame.srcdoc = html;
  return frame;
}

/** Jinja-style {{ name }} and {{ a.b }} substitution, for the preview only (the server renders for real). */
function preview(template, data) {
  return template.replace(/\{\{\s*([\w.]+)\s*\}\}/g, (_, path) => {
    const value = path.split(".").reduce((obj, key) => (obj == null ? undefined : obj[key]), data);
    return value === undefined ? "" : String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  });
}

export async function render(el, api) {
  const error = h("div", {});
  const messages = h("div", {});
  const viewer = h("div", { "aria-live": "polite" });
  const to = h("input", { name: "to", type: "search", placeholder: "filter by recipient", autocomplete: "off" });

  async function show(id) {
    const message = await attempt(viewer, () => api.get(`/v1/email/${encodeURIComponent(id)}`));
    if (!message) return;
    viewer.replaceChildren(
      ...[h("dl", { class: "kv" }, h("dt", {}, "To"), h("dd", {}, [].concat(message.to || []).join(", ")), h("dt", {}, "Subject"), h("dd", {}, message.subject || "—"), h("dt", {}, "Status"), h("dd", {}, badge(message.status, STATUS_KIND[message.status])), h("dt", {}, "Attempts"), h("dd", {}, String(message.attempts ?? 0))),
      message.error ? h("div", { class: "alert alert-error" }, String(message.error)) : null,
      message.html ? sandboxed(message.html, `Email: ${message.subject || id}`) : h("pre", { class: "json" }, message.text || ""),
      h("details", {}, h("summary", {}, "Full record"), jsonBlock(message)),
    ].filter(Boolean),
    );
  }

  async function load() {
    const qs = new URLSearchParams({ limit: "100" });
    if (to.value.trim()) qs.set("to", to.value.trim());
    const page = await attempt(messages, () => api.get(`/v1/email?${qs}`));
    if (!page) return;
    messages.replaceChildren(
      table(
        [
          { label: "To", value: (m) => [].concat(m.to || []).join(", ") },
          { label: "Subject", value: (m) => h("button", { type: "button", class: "btn btn-small", onclick: () => show(m.id) }, m.subject || "(no subject)") },
          { label: "Status", value: (m) => badge(m.status, STATUS_KIND[m.status]) },
          { label: "When", value: (m) => formatTime(m.created_at) },
        ],
        page.items || [],
        { caption: "Captured messages", emptyText: "No captured messages." },
      ),
    );
  }
  to.addEventListener("change", load);

  // Templates
  const name = h("input", { name: "template", autocomplete: "off", value: "welcome" });
  const subject = h("input", { name: "subject", value: "Welcome, {{ name }}!" });
  const html = h("textarea", { name: "html" });
  html.value = "<h1>Welcome, {{ name }}</h1>\n<p>Thanks for joining.</p>";
  const text = h("textarea", { name: "text" });
  text.value = "Welcome, {{ name }}. Thanks for joining.";
  const sample = h("textarea", { name: "sample" });
  sample.value = '{"name": "Ada"}';
  const previewBox = h("div", {});
  function drawPreview() {
    let data = {};
    try {
      data = JSON.parse(sample.value || "{}");
    } catch {
      data = {};
    }
    previewBox.replaceChildren(h("p", { class: "hint" }, `Subject: ${preview(subject.value, data).replace(/&#(\d+);/g, (_, c) => String.fromCharCode(c))}`), sandboxed(preview(html.value, data), "Template preview"));
  }
  for (const input of [subject, html, sample]) input.addEventListener("input", drawPreview);
  const templateForm = h("form", { "aria-label": "Edit a template" }, h("div", { class: "row" }, field("Template name", name), field("Subject", subject)), field("HTML", html), field("Text", text), field("Sample data for the preview (JSON)", sample), h("div", { class: "actions" }, button("Save template", null, { kind: "primary", type: "submit" }), button("Send test", () => sendTest())));
  templateForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const saved = await attempt(error, () => api.put(`/v1/templates/${encodeURIComponent(name.value.trim())}`, { subject: subject.value, html: html.value, text: text.value }));
    if (saved !== undefined) toast(`Template ${name.value.trim()} saved`, "success");
  });
  const testTo = h("input", { name: "test_to", type: "email", value: "test@example.com" });
  async function sendTest() {
    const sent = await attempt(error, () => api.post("/v1/email", { to: testTo.value.trim(), template: name.value.trim(), data: parseJson(sample.value, "sample data") ?? {} }));
    if (!sent) return;
    toast(`Email ${sent.id} queued`, "success");
    load();
  }

  el.replaceChildren(
    panelHeader("Email", `Messages and templates of tenant ${api.tenant}.`, button("Refresh", load, { iconName: "refresh" })),
    error,
    h("div", { class: "grid grid-2" }, card("Captured messages", field("Recipient", to), messages), card("Message", viewer)),
    h("div", { class: "grid grid-2" }, card("Template", templateForm, field("Send the test to", testTo)), card("Preview", previewBox)),
  );
  drawPreview();
  await load();
}
