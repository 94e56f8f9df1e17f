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
    const refundable = payment.amount_captured - payment.amount_refunded;
    const amount = h("input", { name: "refund_amount", type: "number", min: "1", max: String(Math.max(refundable, 1)), value: String(refundable > 0 ? refundable : "") });
    const reason = h("select", { name: "reason" }, ["requested_by_customer", "duplicate", "fraudulent"].map((r) => h("option", { value: r }, r.replaceAll("_", " "))));
    const refundError = h("div", {});
    const refund = h("form", { class: "row", "aria-label": "Refund" }, field("Refund amount (minor units)", amount), field("Reason", reason), h("div", { class: "field field-button" }, button("Refund", null, { kind: "danger", type: "submit" })));
    refund.addEventListener("submit", async (event) => {
      event.preventDefault();
      // One key per click: a network retry of this request replays it instead of refunding twice.
      const done = await attempt(refundError, () => api.post(`/v1/payments/${encodeURIComponent(id)}/refunds`, { amount: Number(amount.value), reason: reason.value }, { headers: { "Idempotency-Key": idempotencyKey() } }));
      if (!done) return;
      toast(`Refund of ${money(done.amount, payment.currency)} is ${done.status}`, "success");
      await show(id);
      load();
    });
    // Native replaceChildren() would print null as "null": h() skips it.
    detail.replaceChildren(h("div", {},
      h("dl", { class: "kv" }, h("dt", {}, "Id"), h("dd", {}, h("code", {}, payment.id)), h("dt", {}, "Amount"), h("dd", {}, money(payment.amount, payment.currency)), h("dt", {}, "Status"), h("dd", {}, badge(payment.status, STATUS_KIND[payment.status] || "neutral")), h("dt", {}, "Captured"), h("dd", {}, money(payment.amount_captured, payment.currency)), h("dt", {}, "Refunded"), h("dd", {}, money(payment.amount_refunded, payment.currency)), h("dt", {}, "Customer"), h("dd", {}, payment.customer || "—"), h("dt", {}, "Provider id"), h("dd", {}, h("code", {}, payment.provider_id || "—"))),
      payment.failure ? h("div", { class: "alert alert-error" }, payment.failure) : null,
      payment.refunds.length
        ? table(
            [
              { label: "Refund", value: (r) => h("code", {}, r.id) },
              { label: "Amount", class: "num", value: (r) => money(r.amount, payment.currency) },
              { label: "Status", value: (r) => badge(r.status, STATUS_KIND[r.status] || "neutral") },
              { label: "Reason", value: (r) => (r.reason || "—").replaceAll("_", " ") },
              { label: "When", value: (r) => formatTime(r.created_at) },
            ],
            payment.refunds,
            { caption: "Refunds" },
          )
        : null,
      payment.status === "succeeded" && refundable > 0 ? refund : h("p", { class: "hint" }, payment.status === "succeeded" ? "Fully refunded." : `Only succeeded payments can be refunded (this one is ${payment.status.replaceAll("_", " ")}).`),
      refundError,
      h("details", {}, h("summary", {}, "Full record"), jsonBlock(payment)),
    ));
  }

  async function load() {
    const page = await attempt(ledger, () => api.get("/v1/payments?limit=100"));
    if (!page) return;
    ledger.replaceChildren(
      table(
        [
          { label: "Payment", value: (p) => h("button", { type: "button", class: "btn btn-small", onclick: () => show(p.id) }, p.id) },
          { label: "Amount", class: "num", value: (p) => money(p.amount, p.currency) },
          { label: "Refunded", class: "num", value: (p) => (p.amount_refunded ? money(p.amount_refunded, p.currency) : "—") },
          { label: "Status", value: (p) => badge(p.status, STATUS_KIND[p.status] || "neutral") },
          { label: "Customer", value: (p) => p.customer || "—" },
          { label: "When", value: (p) => formatTime(p.created_at) },
        ],
        page.items,
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
    toast(`Payment ${payment.id} created: ${payment.status.replaceAll("_", " ")}`, "success");
    show(payment.id);
    load();
  });

  el.replaceChildren(panelHeader("Payments", `Ledger of tenant ${api.tenant}.`, button("Refresh", load, { iconName: "refresh" })), error, card("Ledger", ledger), h("div", { class: "grid grid-2" }, card("Test payment", charge), card("Look up a payment", lookup)), card("Payment", detail));
  await load();
}
