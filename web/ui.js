// Small DOM helpers shared by every panel (and available to plugin panels through `api.ui`).
// Text always goes in as text nodes, never as HTML, so nothing from the API can inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Build an element: h("button", {class: "btn", onclick: fn}, "Save"). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Build an SVG element. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const ICONS = {
  overview: "M3 13h8V3H3zm0 8h8v-6H3zm10 0h8V11h-8zm0-18v6h8V3z",
  users: "M9 11a3.5 3.5 0 1 0-3.5-3.5A3.5 3.5 0 0 0 9 11zm0 2c-2.7 0-7 1.3-7 4v2h14v-2c0-2.7-4.3-4-7-4zm7-2a3 3 0 1 0-3-3 3 3 0 0 0 3 3zm.7 2a5.6 5.6 0 0 1 2.3 4v2h3v-2c0-2.3-3.2-3.7-5.3-4z",
  tenants: "M12 12a4 4 0 1 0-4-4 4 4 0 0 0 4 4zm0 2c-3 0-8 1.5-8 4.5V21h16v-2.5C20 15.5 15 14 12 14z",
  storage: "M4 4h16v5H4zm0 7h16v9H4zm3-5v1h2V6zm0 8v2h2v-2z",
  search: "M10 3a7 7 0 0 1 5.6 11.2l5.1 5.1-1.4 1.4-5.1-5.1A7 7 0 1 1 10 3zm0 2a5 5 0 1 0 0 10 5 5 0 0 0 0-10z",
  jobs: "M4 5h16v3H4zm0 5.5h16v3H4zM4 16h10v3H4z",
  events: "M13 2 4 14h7l-1 8 9-12h-7z",
  realtime: "M12 10a2 2 0 1 1 0 4 2 2 0 0 1 0-4zM7.8 7.8l1.4 1.4a4 4 0 0 0 0 5.6l-1.4 1.4a6 6 0 0 1 0-8.4zm8.4 0a6 6 0 0 1 0 8.4l-1.4-1.4a4 4 0 0 0 0-5.6zM5 5l1.4 1.4a8 8 0 0 0 0 11.2L5 19a10 10 0 0 1 0-14zm14 0a10 10 0 0 1 0 14l-1.4-1.4a8 8 0 0 0 0-11.2z",
  email: "M3 5h18v14H3zm2 2v.5l7 4.5 7-4.5V7zm0 2.9V17h14V9.9l-7 4.5z",
  payments: "M3 6h18v12H3zm2 2v2h14V8zm0 5v3h14v-3zm2 1h4v1H7z",
  plugins: "M9 2v4H7a1 1 0 0 0-1 1v4H2v2h4v4a1 1 0 0 0 1 1h2v4h2v-4h2v4h2v-4h2a1 1 0 0 0 1-1v-4h4v-2h-4V7a1 1 0 0 0-1-1h-2V2h-2v4h-2V2z",
  copy: "M8 3h11v13h-2V5H8zM5 7h10v14H5z",
  refresh: "M12 4a8 8 0 0 1 7.7 6h-2.1A6 6 0 1 0 18 14h2.1A8 8 0 1 1 12 4zm5-1h4v4z",
  signout: "M10 3h9v18h-9v-2h7V5h-7zm-1 5 1.4 1.4L8.8 11H16v2H8.8l1.6 1.6L9 16l-4-4z",
  menu: "M3 6h18v2H3zm0 5h18v2H3zm0 5h18v2H3z",
  check: "M9 16.2 4.8 12l-1.4 1.4L9 19 21 7l-1.4-1.4z",
  x: "M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12l5.6 5.6-1.4 1.4-5.6-5.6L6.4 19 5 17.6l5.6-5.6L5 6.4z",
  download: "M11 3h2v9l3-3 1.4 1.4L12 15.8l-5.4-5.4L8 9l3 3zM4 18h16v2H4z",
  trash: "M9 3h6v2h5v2H4V5h5zm-3 6h12l-1 12H7z",
  link: "M10.6 13.4a1 1 0 0 0 1.4 0l4-4a3 3 0 0 0-4.2-4.2l-1.5 1.5 1.4 1.4 1.5-1.5a1 1 0 0 1 1.4 1.4l-4 4a1 1 0 0 0 0 1.4zm2.8-2.8a1 1 0 0 0-1.4 0l-4 4a3 3 0 0 0 4.2 4.2l1.5-1.5-1.4-1.4-1.5 1.5a1 1 0 0 1-1.4-1.4l4-4a1 1 0 0 0 0-1.4z",
  folder: "M3 5h7l2 2h9v12H3z",
  file: "M6 2h8l5 5v15H6zm7 1.5V8h4.5z",
  puzzle: "M10 3a2 2 0 0 1 4 0v2h5v5h-2a2 2 0 0 0 0 4h2v5h-5v-2a2 2 0 0 0-4 0v2H5v-5h2a2 2 0 0 0 0-4H5V5h5z",
};

/** An inline SVG icon (decorative: hidden from screen readers). */
export function icon(name, size = 18) {
  return s(
    "svg",
    { viewBox: "0 0 24 24", width: size, height: size, "aria-hidden": "true", focusable: "false", class: "icon" },
    s("path", { d: ICONS[name] || ICONS.puzzle, fill: "currentColor" }),
  );
}

/** A transient message in the live region, read out by screen readers. */
export function toast(message, kind = "info") {
  const region = document.getElementById("toasts");
  const item = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  region.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 6000);
}

/** An error from the API, in words: its title and problem+json detail. */
export function errorBox(error) {
  const title = error?.title || "Error";
  const detail = error?.detail || error?.message || String(error);
  const status = error?.status ? ` (${error.status})` : "";
  return h("div", { class: "alert alert-error", role: "alert" }, h("strong", {}, `${title}${status}: `), detail);
}

/** Run an async action from a form or button; shows its error (never swallowed) in `where`. */
export async function attempt(where, action) {
  if (where) where.replaceChildren();
  try {
    return await action();
  } catch (error) {
    if (where) where.replaceChildren(errorBox(error));
    else toast(`${error.title || "Error"}: ${error.detail || error.message}`, "error");
    return undefined;
  }
}

/** The state a panel shows when its capability is not installed on this appliance. */
export function notInstalled(title, capability, path) {
  return h(
    "div",
    { class: "empty not-installed", role: "status" },
    icon("puzzle", 40),
    h("h2", {}, `${title} is not installed`),
    h(
      "p",
      {},
      `This appliance has no ${capability} capability: its API (${path}) returned 404. `,
      "The panel lights up as soon as the capability is installed.",
    ),
  );
}

export function empty(text) {
  return h("p", { class: "empty-inline" }, text);
}

/** A table from column specs {label, value: row => Node|string, class?}. */
export function table(columns, rows, { caption, emptyText = "Nothing here yet." } = {}) {
  if (!rows.length) return empty(emptyText);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", { class: "sr-only" }, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.class }, c.value(row)))))),
    ),
  );
}

/** A labelled form field. `input` is an element; the label is tied to it by id. */
let fieldCounter = 0;
export function field(label, input, hint) {
  if (!input.id) input.id = `f${++fieldCounter}`;
  const hintEl = hint ? h("small", { class: "hint", id: `${input.id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input, hintEl);
}

export function button(label, onclick, { kind = "secondary", iconName, type = "button", ...rest } = {}) {
  return h("button", { type, class: `btn btn-${kind}`, onclick, ...rest }, iconName ? icon(iconName, 16) : null, label);
}

/** Copy text to the clipboard, with a fallback for non-secure contexts. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = h("textarea", { class: "sr-only" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast("Copied to the clipboard", "success");
}

export function copyButton(text, label = "Copy") {
  return button(label, () => copyText(typeof text === "function" ? text() : text), { iconName: "copy", "aria-label": label });
}

export function badge(text, kind = "neutral") {
  return h("span", { class: `badge badge-${kind}` }, text);
}

export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", { class: "card-title" }, title) : null, ...children);
}

/** A modal dialog (native <dialog>: focus trap and Escape for free). Resolves when closed. */
export function dialog(title, body, actions = []) {
  const dlg = h("dialog", { class: "dialog", "aria-labelledby": "dialog-title" });
  const close = button("Close", () => dlg.close(), { kind: "secondary" });
  dlg.append(h("h2", { id: "dialog-title" }, title), body, h("div", { class: "actions" }, ...actions, close));
  document.body.append(dlg);
  dlg.showModal();
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      dlg.remove();
      resolve(dlg.returnValue);
    });
  });
}

/** Ask before doing something destructive. */
export function confirmAction(title, message, confirmLabel = "Delete") {
  const dlg = h("dialog", { class: "dialog", "aria-labelledby": "confirm-title" });
  return new Promise((resolve) => {
    const yes = button(confirmLabel, () => {
      resolve(true);
      dlg.close();
    }, { kind: "danger" });
    const no = button("Cancel", () => dlg.close());
    dlg.append(h("h2", { id: "confirm-title" }, title), h("p", {}, message), h("div", { class: "actions" }, yes, no));
    dlg.addEventListener("close", () => {
      dlg.remove();
      resolve(false);
    });
    document.body.append(dlg);
    dlg.showModal();
    no.focus();
  });
}

export function formatTime(value) {
  if (value === null || value === undefined || value === "") return "—";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Pretty JSON in a <pre>, for records whose exact shape the UI does not assume. */
export function jsonBlock(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/** Parse a JSON text field; throws an error that reads well in an errorBox. */
export function parseJson(text, what) {
  if (!text.trim()) return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw { title: "Invalid JSON", detail: `${what}: ${error.message}` };
  }
}

/** A "Load more" pager for cursor lists: calls load(cursor) -> {items, next_cursor}. */
export function pager(container, load, renderRows) {
  const rows = [];
  const status = h("div", {});
  const more = button("Load more", () => next(), { kind: "secondary" });
  let cursor = null;
  async function next() {
    const page = await attempt(status, () => load(cursor));
    if (!page) return;
    rows.push(...(page.items || []));
    cursor = page.next_cursor;
    container.replaceChildren(...[renderRows(rows), status, cursor ? more : null].filter(Boolean));
  }
  return next();
}

export function panelHeader(title, subtitle, ...actions) {
  return h(
    "header",
    { class: "panel-header" },
    h("div", {}, h("h1", { id: "panel-title", tabindex: "-1" }, title), subtitle ? h("p", { class: "subtitle" }, subtitle) : null),
    h("div", { class: "actions" }, ...actions),
  );
}

export function progressBar(label) {
  const bar = h("progress", { max: "100", value: "0", "aria-label": label });
  const text = h("span", { class: "progress-text" }, "0%");
  const wrap = h("div", { class: "progress" }, bar, text);
  wrap.set = (fraction) => {
    const pct = Math.round(fraction * 100);
    bar.value = pct;
    text.textContent = `${pct}%`;
  };
  return wrap;
}
