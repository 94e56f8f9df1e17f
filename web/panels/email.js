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

  /** A captured message: the envelope, then its HTML part in the sandboxed frame (or its text part). */
  function show(message) {
    viewer.replaceChildren(
      ...[
        h("dl", { class: "kv" }, h("dt", {}, "From"), h("dd", {}, message.sender), h("dt", {}, "To"), h("dd", {}, message.to.join(", ")), h("dt", {}, "Subject"), h("dd", {}, message.subject || "—"), h("dt", {}, "Captured"), h("dd", {}, formatTime(message.captured_at))),
        message.html ? sandboxed(message.html, `Email: ${message.subject || message.id}`) : h("pre", { class: "json" }, message.text || ""),
        h("details", {}, h("summary", {}, "Text part"), h("pre", { class: "json" }, message.text || "")),
        h("details", {}, h("summary", {}, "Raw MIME"), h("pre", { class: "json" }, message.mime || "")),
      ],
    );
  }

  /** The delivery record of an email (queued, sending, sent, captured, failed, dead). */
  async function status(id) {
    const record = await attempt(viewer, () => api.get(`/v1/email/${encodeURIComponent(id)}`));
    if (!record) return;
    viewer.replaceChildren(h("div", {},
      h("dl", { class: "kv" }, h("dt", {}, "Id"), h("dd", {}, h("code", {}, record.id)), h("dt", {}, "To"), h("dd", {}, record.to.join(", ")), h("dt", {}, "Subject"), h("dd", {}, record.subject || "—"), h("dt", {}, "Status"), h("dd", {}, badge(record.status, STATUS_KIND[record.status])), h("dt", {}, "Attempts"), h("dd", {}, `${record.attempts} of ${record.max_attempts}`)),
      record.error ? h("div", { class: "alert alert-error" }, record.error) : null,
      h("details", {}, h("summary", {}, "Full record"), jsonBlock(record)),
    ));
  }

  async function load() {
    const qs = new URLSearchParams({ limit: "100" });
    if (to.value.trim()) qs.set("to", to.value.trim());
    // With SMTP configured there is no catcher: the listing answers 503 and says so.
    const page = await attempt(messages, () => api.get(`/v1/email?${qs}`));
    if (!page) return;
    messages.replaceChildren(
      table(
        [
          { label: "To", value: (m) => m.to.join(", ") },
          { label: "Subject", value: (m) => h("button", { type: "button", class: "btn btn-small", onclick: () => show(m) }, m.subject || "(no subject)") },
          { label: "Captured", value: (m) => formatTime(m.captured_at) },
        ],
        page.items,
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
  const templates = h("div", {});
  async function loadTemplates() {
    const items = await attempt(templates, () => api.all("/v1/templates", 500));
    if (!items) return;
    templates.replaceChildren(
      table(
        [
          { label: "Template", value: (t) => h("button", { type: "button", class: "btn btn-small", onclick: () => edit(t) }, t.name) },
          { label: "Subject", value: (t) => t.subject },
          { label: "Updated", value: (t) => formatTime(t.updated_at) },
        ],
        items,
        { caption: "Templates", emptyText: "No templates yet: write one below." },
      ),
    );
  }
  function edit(template) {
    name.value = template.name;
    subject.value = template.subject;
    html.value = template.html;
    text.value = template.text;
    drawPreview();
  }
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
  const testTo = h("input", { name: "test_to", type: "email", value: "test@example.com" });
  const templateForm = h("form", { "aria-label": "Edit a template" }, h("div", { class: "row" }, field("Template name", name), field("Subject", subject)), field("HTML", html), field("Text", text), field("Sample data for the preview (JSON)", sample), field("Send the test to", testTo, "the test renders the saved template with the sample data"), h("div", { class: "actions" }, button("Save template", null, { kind: "primary", type: "submit" }), button("Send test", () => sendTest())));
  templateForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const saved = await attempt(error, () => api.put(`/v1/templates/${encodeURIComponent(name.value.trim())}`, { subject: subject.value, html: html.value, text: text.value }));
    if (!saved) return;
    toast(`Template ${saved.name} saved`, "success");
    loadTemplates();
  });
  async function sendTest() {
    const sent = await attempt(error, () => api.post("/v1/email", { to: testTo.value.trim(), template: name.value.trim(), data: parseJson(sample.value, "sample data") ?? {} }));
    if (!sent) return;
    toast(`Email ${sent.id} queued`, "success");
    await status(sent.id);
    // Delivery is a job: the catcher has the message once it ran; look again until it is there.
    for (let i = 0; i < 20; i += 1) {
      const record = await api.get(`/v1/email/${encodeURIComponent(sent.id)}`).catch(() => null);
      if (!record || !["queued", "sending"].includes(record.status)) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    await status(sent.id);
    load();
  }

  el.replaceChildren(
    panelHeader("Email", `Messages and templates of tenant ${api.tenant}.`, button("Refresh", load, { iconName: "refresh" })),
    error,
    h("div", { class: "grid grid-2" }, card("Captured messages", field("Recipient", to), messages), card("Message", viewer)),
    card("Templates", templates),
    h("div", { class: "grid grid-2" }, card("Template", templateForm), card("Preview", previewBox)),
  );
  drawPreview();
  await Promise.all([load(), loadTemplates()]);
}
