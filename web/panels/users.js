// Users: the tenant's end users, sign-up (the verification token is shown once) and verification.
import { attempt, badge, button, card, field, formatTime, h, panelHeader, table, toast } from "../ui.js";

export async function render(el, api) {
  const error = h("div", {});
  const list = h("div", {});
  const created = h("div", { "aria-live": "polite" });
  let cursor = null;
  let users = [];

  async function load(reset = true) {
    if (reset) {
      users = [];
      cursor = null;
    }
    const qs = new URLSearchParams({ limit: "100" });
    if (cursor) qs.set("cursor", cursor);
    const page = await attempt(list, () => api.get(`/v1/users?${qs}`));
    if (!page) return;
    users.push(...page.items);
    cursor = page.next_cursor;
    list.replaceChildren(
      table(
        [
          { label: "Email", value: (u) => u.email },
          { label: "Name", value: (u) => u.name },
          { label: "Verified", value: (u) => (u.verified ? badge(`verified ${formatTime(u.verified_at)}`, "ok") : badge("not verified", "warn")) },
          { label: "Signed up", value: (u) => formatTime(u.created_at) },
          { label: "Id", value: (u) => h("code", {}, u.id) },
        ],
        users,
        { caption: "Users", emptyText: "No users yet." },
      ),
      cursor ? button("Load more", () => load(false)) : "",
    );
  }

  async function verify(user, token) {
    const done = await attempt(created, () => api.post(`/v1/users/${encodeURIComponent(user.id)}/verify`, { token }));
    if (!done) return;
    created.replaceChildren(h("div", { class: "alert alert-ok" }, `${done.email} is verified (user.verified was emitted).`));
    toast(`${done.email} verified`, "success");
    load();
  }

  const email = h("input", { name: "email", type: "email", autocomplete: "off", placeholder: "ada@example.com" });
  const name = h("input", { name: "name", autocomplete: "off", placeholder: "Ada Lovelace" });
  const form = h("form", { "aria-label": "Sign a user up" }, h("div", { class: "row" }, field("Email", email), field("Name", name), h("div", { class: "field field-button" }, button("Create user", null, { kind: "primary", type: "submit" }))));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const user = await attempt(error, () => api.post("/v1/users", { email: email.value.trim(), name: name.value.trim() }));
    if (!user) return;
    email.value = "";
    name.value = "";
    // The token is shown this once (and sent in the user.created event, e.g. by the welcome email).
    created.replaceChildren(
      h(
        "div",
        { class: "alert alert-info", "data-testid": "verification" },
        h("div", {}, h("strong", {}, `${user.email} created. `), `Verification token (shown once, valid until ${formatTime(user.verification_expires_at)}):`),
        h("code", {}, user.verification_token),
        h("div", { style: "margin-top:8px" }, button("Verify now", () => verify(user, user.verification_token), { kind: "primary", "aria-label": `Verify ${user.email}` })),
      ),
    );
    toast(`User ${user.email} created`, "success");
    load();
  });

  el.replaceChildren(panelHeader("Users", `End users of tenant ${api.tenant}.`, button("Refresh", () => load(), { iconName: "refresh" })), card("Sign a user up", form, created), error, card("Users", list));
  await load();
}
