// Events: a live tail of the event log, publish a test event, and the rules editor with a pattern tester.
import { matches } from "../patterns.js";
import { attempt, badge, button, card, confirmAction, field, formatTime, h, jsonBlock, panelHeader, parseJson, table, toast } from "../ui.js";

const TARGET_EXAMPLE = '[{"kind": "channel", "name": "signups"}]';
const TAIL_SIZE = 200;

function tailItem(event) {
  return h(
    "div",
    { class: "tail-item" },
    h("div", { class: "spread" }, h("strong", {}, event.type), h("span", { class: "hint" }, `${event.source} · ${formatTime(event.created_at)}`)),
    h("details", {}, h("summary", {}, "Payload"), jsonBlock(event.payload)),
  );
}

export async function render(el, api) {
  const error = h("div", {});

  // Live tail: poll the log for anything newer than the last id seen.
  const typeFilter = h("input", { name: "type", placeholder: "filter by type, e.g. user.created", autocomplete: "off" });
  const pause = h("input", { type: "checkbox", name: "pause" });
  const tail = h("div", { class: "tail", role: "log", "aria-label": "Event log", "aria-live": "off" });
  const tailStatus = h("div", {});
  // `since` is a time (unix seconds, inclusive): ask from the newest event seen, drop the ids already shown.
  // The first poll reads the last day, every page of it, and keeps the newest TAIL_SIZE.
  let since = null;
  let seen = [];
  const ids = new Set();
  async function poll() {
    if (pause.checked) return;
    const qs = new URLSearchParams({ since: String(since ?? Date.now() / 1000 - 86400) });
    if (typeFilter.value.trim()) qs.set("type", typeFilter.value.trim());
    const items = await attempt(tailStatus, () => api.all(`/v1/events?${qs}`, 5000));
    if (!items) return;
    const fresh = items.filter((event) => !ids.has(event.id));
    if (items.length) since = items.at(-1).created_at;
    if (!fresh.length) {
      if (!seen.length) tail.replaceChildren(h("p", { class: "empty-inline" }, "No events yet. New ones appear here as they happen."));
      return;
    }
    for (const event of fresh) ids.add(event.id);
    seen = [...fresh.reverse(), ...seen].slice(0, TAIL_SIZE);
    tail.replaceChildren(...seen.map(tailItem));
  }
  typeFilter.addEventListener("change", () => {
    since = null;
    seen = [];
    ids.clear();
    poll();
  });

  // Publish
  const source = h("input", { name: "source", value: "admin", autocomplete: "off" });
  const type = h("input", { name: "type", value: "test.ping", autocomplete: "off" });
  const payload = h("textarea", { name: "payload" });
  payload.value = '{"hello": "world"}';
  const publish = h("form", { "aria-label": "Publish an event" }, h("div", { class: "row" }, field("Source", source), field("Type", type)), field("Payload (JSON)", payload), button("Publish", null, { kind: "primary", type: "submit" }));
  publish.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = await attempt(error, () => api.post("/v1/events", { source: source.value.trim(), type: type.value.trim(), payload: parseJson(payload.value, "payload") ?? {} }));
    if (result) {
      toast(`Event ${result.id} published`, "success");
      poll();
    }
  });

  // Rules
  const rules = h("div", {});
  async function loadRules() {
    const page = await attempt(rules, () => api.get("/v1/rules?limit=200"));
    if (!page) return;
    rules.replaceChildren(
      table(
        [
          { label: "Name", value: (r) => h("strong", {}, r.name) },
          { label: "Pattern", value: (r) => h("code", {}, JSON.stringify(r.pattern)) },
          { label: "Targets", value: (r) => h("div", { class: "badges" }, (r.targets || []).map((t) => badge(t.kind || "target", "accent"))) },
          { label: "Actions", class: "actions-cell", value: (r) => button("Delete", () => removeRule(r), { class: "btn btn-danger btn-small", "aria-label": `Delete rule ${r.name}` }) },
        ],
        page.items || [],
        { caption: "Rules", emptyText: "No rules yet." },
      ),
    );
  }
  async function removeRule(rule) {
    if (!(await confirmAction(`Delete rule ${rule.name}?`, "Matching events stop being delivered to its targets."))) return;
    if ((await attempt(error, () => api.del(`/v1/rules/${encodeURIComponent(rule.id)}`))) === undefined) return;
    toast(`Rule ${rule.name} deleted`, "success");
    loadRules();
  }

  const ruleName = h("input", { name: "name", autocomplete: "off", placeholder: "welcome-emails" });
  const pattern = h("textarea", { name: "pattern" });
  pattern.value = '{"type": ["user.created"], "payload": {"plan": [{"prefix": "pro"}]}}';
  const sample = h("textarea", { name: "sample" });
  sample.value = '{"source": "users", "type": "user.created", "payload": {"plan": "pro-annual"}}';
  const targets = h("textarea", { name: "targets" });
  targets.value = TARGET_EXAMPLE;
  const verdict = h("div", { "aria-live": "polite", "data-testid": "pattern-verdict" });
  // The verdict is the server's (POST /v1/rules:test runs the matcher rules use), so the tester and
  // delivery can never disagree; the bundled matcher answers at once while the server's verdict is on its way.
  let asked = 0;
  async function test() {
    const ask = ++asked;
    let parsedPattern;
    let parsedSample;
    try {
      parsedPattern = JSON.parse(pattern.value);
      parsedSample = JSON.parse(sample.value);
    } catch (err) {
      verdict.replaceChildren(h("div", { class: "alert alert-error", role: "alert" }, `Cannot test: ${err.message}`));
      return;
    }
    const show = (ok, where) => verdict.replaceChildren(h("div", { class: `alert ${ok ? "alert-ok" : "alert-warn"} match` }, ok ? "✓ The sample event matches this pattern" : "✗ The sample event does not match this pattern", h("span", { class: "hint" }, ` (${where})`)));
    try {
      show(matches(parsedPattern, parsedSample), "checking with the server…");
    } catch {
      verdict.replaceChildren();
    }
    try {
      const result = await api.post("/v1/rules:test", { pattern: parsedPattern, event: parsedSample });
      if (ask === asked) show(result.matches, "server's matcher");
    } catch (err) {
      if (ask === asked) verdict.replaceChildren(h("div", { class: "alert alert-error", role: "alert" }, `Cannot test: ${err.detail || err.message}`));
    }
  }
  let debounce = null;
  const retest = () => {
    clearTimeout(debounce);
    debounce = setTimeout(test, 250);
  };
  pattern.addEventListener("input", retest);
  sample.addEventListener("input", retest);
  const ruleForm = h(
    "form",
    { "aria-label": "Create a rule" },
    field("Rule name", ruleName),
    h("div", { class: "grid grid-2" }, field("Pattern (EventBridge-style JSON)", pattern), field("Sample event to test", sample)),
    verdict,
    field("Targets (JSON)", targets, 'a list of {"kind": ...}: webhook {url, secret}, job {queue, type}, channel {name}, email {template, to}'),
    button("Create rule", null, { kind: "primary", type: "submit" }),
  );
  ruleForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const rule = await attempt(error, () => api.post("/v1/rules", { name: ruleName.value.trim(), pattern: parseJson(pattern.value, "pattern"), targets: parseJson(targets.value, "targets") ?? [] }));
    if (!rule) return;
    toast(`Rule ${rule.name || ruleName.value} created`, "success");
    loadRules();
  });

  el.replaceChildren(
    panelHeader("Events", `Event log and rules of tenant ${api.tenant}.`),
    error,
    h("div", { class: "grid grid-2" }, card("Live tail", h("div", { class: "row" }, field("Only type", typeFilter), h("label", { class: "checks field-button" }, pause, "Pause")), tailStatus, tail), card("Publish a test event", publish)),
    card("Rules", rules),
    card("New rule", ruleForm),
  );
  await Promise.all([poll(), loadRules(), test()]);
  const timer = setInterval(poll, 2000);
  return () => {
    clearInterval(timer);
    clearTimeout(debounce);
  };
}
