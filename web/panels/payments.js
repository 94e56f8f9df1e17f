// Payments: the ledger, a payment's detail, test charges and refunds.
import { attempt, badge, button, card, field, formatTime, h, jsonBlock, panelHeader, table, toast } from "../ui.js";

const STATUS_KIND = { succeeded: "ok", pending: "neutral", processing: "accent", requires_action: "warn", failed: "bad", canceled: "neutral", refunded: "warn", partially_refunded: "warn" };
// randomUUID exists only in secure contexts (https, localhost); the appliance may be on plain http.
const idempotencyKey = () => (crypto.randomUUID ? crypto.randomUUID() : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join(""));
const money = (amount, currency) => `${(Number(amount || 0) / 100).toFixed(2)} ${String(currency || "").toUpperCase()}`;

export async function render(el, api) {
  const error = h("div", {});
  const ledger = h("div", {});
  const detail = h("div", { "aria-live": "polite" });

  async function show(id) {
    const payment = await attempt(detail, () => api.get(`/v1/payments/${encodeURIComponent(id)}`));
    if (!payment) return;
    const amount = h("input", { name: "refund_amount", type: "number", min: "1", value: String(payment.amount ?? "") });
    const reason = h("select", { name: "reason" }, ["requested_by_customer", "duplicate", "fraudulent"].map((r) => h("option", { value: r }, r.replaceAll("_", " "))));
    const refund = h("form", { class: "row", "aria-label": "Refund" }, field("Refund amount (minor units)", amount), field("Reason", reason), h("div", { class: "field field-button" }, button("Refund", null, { kind: "danger", type: "submit" })));
    refund.addEventListener("submit", async (event) => {
      event.preventDefault();
      const done = await attempt(detail, () => api.post(`/v1/payments/${encodeURIComponent(id)}/refunds`, { amount: Number(amount.value), reason: reason.value }));
      if (!done) return;
      toast("Refund created", "success");
      show(id);
      load();
    });
    detail.replaceChildren(
      h("dl", { class: "kv" }, h("dt", {}, "Id"), h("dd", {}, h("code", {}, payment.id)), h("dt", {}, "Amount"), h("dd", {}, money(payment.amount, payment.currency)), h("dt", {}, "Status"), h("dd", {}, badge(payment.status, STATUS_KIND[payment.status])), h("dt", {}, "Customer"), h("dd", {}, payment.customer || "—"), h("dt", {}, "Provider id"), h("dd", {}, h("code", {}, payment.provider_id || "—"))),
      refund,
      h("details", {}, h("summary", {}, "Full record"), jsonBlock(payment)),
    );
  }

  async function load() {
    // The ledger listing is optional in API.md; without it, look payments up by id.
    const response = await attempt(ledger, () => api.raw("GET", "/v1/payments?limit=100", { allow: [404, 405] }));
    if (!response) return;
    if (!response.ok) {
      ledger.replaceChildren(h("p", { class: "hint" }, "This appliance has no ledger listing; look a payment up by id."));
      return;
    }
    const page = await response.json();
    ledger.replaceChildren(
      table(
        [
          { label: "Payment", value: (p) => h("button", { type: "button", class: "btn btn-small", onclick: () => show(p.id) }, p.id) },
          { label: "Amount", class: "num", value: (p) => money(p.amount, p.currency) },
          { label: "Status", value: (p) => badge(p.status, STATUS_KIND[p.status]) },
          { label: "Customer", value: (p) => p.customer || "—" },
          { label: "When", value: (p) => formatTime(p.created_at) },
        ],
        page.items || [],
        { caption: "Ledger", emptyText: "No payments yet." },
      ),
    );
  }

  const lookupId = h("input", { name: "payment_id", autocomplete: "off", placeholder: "pay_..." });
  const lookup = h("form", { class: "row", "aria-label": "Look up a payment" }, field("Payment id", lookupId), h("div", { class: "field field-button" }, button("Show", null, { type: "submit" })));
  lookup.addEventListener("submit", (event) => {
    event.preventDefault();
    show(lookupId.value.trim());
  });

  const amount = h("input", { name: "amount", type: "number", min: "1", value: "1999" });
  const currency = h("input", { name: "currency", value: "usd", maxlength: "3" });
  const customer = h("input", { name: "customer", placeholder: "optional customer id" });
  const method = h("input", { name: "payment_method", value: "pm_card_visa" });
  const charge = h("form", { "aria-label": "Create a test payment" }, h("div", { class: "row" }, field("Amount (minor units)", amount), field("Currency", currency)), h("div", { class: "row" }, field("Customer", customer), field("Payment method", method)), button("Create payment", null, { kind: "primary", type: "submit" }));
  charge.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { amount: Number(amount.value), currency: currency.value.trim(), payment_method: method.value.trim(), metadata: { source: "admin" } };
    if (customer.value.trim()) body.customer = customer.value.trim();
    const payment = await attempt(error, () => api.post("/v1/payments", body, { headers: { "Idempotency-Key": idempotencyKey() } }));
    if (!payment) return;
    toast(`Payment ${payment.id} is ${payment.status}`, "success");
    show(payment.id);
    load();
  });

  el.replaceChildren(panelHeader("Payments", `Ledger of tenant ${api.tenant}.`, button("Refresh", load, { iconName: "refresh" })), error, card("Ledger", ledger), h("div", { class: "grid grid-2" }, card("Payment", lookup, detail), card("Test payment", charge)));
  await load();
}
