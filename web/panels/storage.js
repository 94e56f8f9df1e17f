// Storage browser: buckets, prefixes as folders, upload with progress, download, delete, signed URLs.
import { attempt, badge, button, card, confirmAction, copyText, field, formatBytes, formatTime, h, icon, panelHeader, progressBar, table, toast } from "../ui.js";

const enc = (key) => key.split("/").map(encodeURIComponent).join("/");

export async function render(el, api) {
  const state = { bucket: sessionStorage.getItem("appliance.bucket") || "", prefix: "", cursor: null, items: [] };
  const error = h("div", {});
  const listing = h("div", {});
  const bucketInput = h("input", { name: "bucket", autocomplete: "off", placeholder: "uploads", value: state.bucket, list: "bucket-names" });
  const datalist = h("datalist", { id: "bucket-names" });
  const open = h("form", { class: "row", "aria-label": "Open a bucket" }, field("Bucket", bucketInput, "Buckets are created on the first upload"), h("div", { class: "field field-button" }, button("Open", null, { kind: "primary", type: "submit" })), datalist);
  const fileInput = h("input", { type: "file", name: "file", multiple: true });
  const keyPrefix = h("input", { name: "prefix", autocomplete: "off", placeholder: "folder/ (optional)" });
  const uploads = h("div", { "aria-live": "polite" });
  const uploadForm = h("form", { "aria-label": "Upload files" }, h("div", { class: "row" }, field("Files", fileInput), field("Key prefix", keyPrefix), h("div", { class: "field field-button" }, button("Upload", null, { kind: "primary", type: "submit" }))), uploads);

  // The API lists objects, not buckets: offer the buckets opened before in this browser session.
  const recent = () => JSON.parse(sessionStorage.getItem("appliance.buckets") || "[]");
  const remember = (name) => {
    const names = [name, ...recent().filter((n) => n !== name)].slice(0, 20);
    sessionStorage.setItem("appliance.buckets", JSON.stringify(names));
    datalist.replaceChildren(...names.map((n) => h("option", { value: n })));
  };
  datalist.replaceChildren(...recent().map((n) => h("option", { value: n })));
  const signed = h("div", { "aria-live": "polite" });

  async function load(reset = true) {
    if (!state.bucket) {
      listing.replaceChildren(h("p", { class: "empty-inline" }, "Open a bucket to browse its objects."));
      return;
    }
    if (reset) {
      state.items = [];
      state.cursor = null;
    }
    const qs = new URLSearchParams({ prefix: state.prefix, limit: "200" });
    if (state.cursor) qs.set("cursor", state.cursor);
    const page = await attempt(error, () => api.get(`/v1/buckets/${encodeURIComponent(state.bucket)}/objects?${qs}`));
    if (!page) return;
    state.items.push(...(page.items || page.objects || []));
    state.cursor = page.next_cursor || null;
    draw();
  }

  function crumbs() {
    const parts = state.prefix.split("/").filter(Boolean);
    const go = (prefix) => () => {
      state.prefix = prefix;
      keyPrefix.value = prefix;
      load();
    };
    return h("nav", { class: "crumbs", "aria-label": "Prefix" }, h("button", { type: "button", onclick: go("") }, state.bucket), parts.map((part, i) => ["/", h("button", { type: "button", onclick: go(`${parts.slice(0, i + 1).join("/")}/`) }, part)]));
  }

  function draw() {
    // Keys under the prefix become folders at their next "/", like a file browser.
    const folders = new Set();
    const files = [];
    for (const item of state.items) {
      const rest = item.key.slice(state.prefix.length);
      const slash = rest.indexOf("/");
      if (slash >= 0) folders.add(state.prefix + rest.slice(0, slash + 1));
      else files.push(item);
    }
    const rows = [...[...folders].map((f) => ({ folder: f })), ...files];
    const open = (prefix) => () => {
      state.prefix = prefix;
      keyPrefix.value = prefix;
      load();
    };
    listing.replaceChildren(
      crumbs(),
      table(
        [
          { label: "Name", value: (r) => (r.folder ? h("button", { type: "button", class: "btn btn-small", onclick: open(r.folder) }, icon("folder", 16), r.folder.slice(state.prefix.length)) : h("span", {}, icon("file", 16), " ", r.key.slice(state.prefix.length))) },
          { label: "Size", class: "num", value: (r) => (r.folder ? "" : formatBytes(r.size)) },
          { label: "Type", value: (r) => (r.folder ? badge("folder") : r.content_type || "—") },
          { label: "Modified", value: (r) => (r.folder ? "" : formatTime(r.updated_at)) },
          { label: "Actions", class: "actions-cell", value: (r) => (r.folder ? "" : h("div", { class: "actions", style: "justify-content:flex-end" }, button("Download", () => download(r.key), { class: "btn btn-small", iconName: "download", "aria-label": `Download ${r.key}` }), button("Signed URL", () => signedUrl(r.key), { class: "btn btn-small", iconName: "link", "aria-label": `Copy a signed URL for ${r.key}` }), button("Delete", () => remove(r.key), { class: "btn btn-danger btn-small", "aria-label": `Delete ${r.key}` }))) },
        ],
        rows,
        { caption: `Objects in ${state.bucket}`, emptyText: "No objects under this prefix." },
      ),
      state.cursor ? button("Load more", () => load(false)) : "",
    );
  }

  const objectPath = (key) => `/v1/buckets/${encodeURIComponent(state.bucket)}/objects/${enc(key)}`;

  async function download(key) {
    await attempt(error, async () => {
      const response = await api.raw("GET", objectPath(key));
      const url = URL.createObjectURL(await response.blob());
      const link = h("a", { href: url, download: key.split("/").pop() });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
  }

  async function signedUrl(key) {
    const result = await attempt(error, () => api.post(`${objectPath(key)}/url`, { expires_in: 3600 }));
    if (!result) return;
    const url = new URL(result.url, location.href).href;
    const input = h("input", { readonly: true, value: url, "aria-label": `Signed URL for ${key}`, onfocus: (event) => event.target.select() });
    signed.replaceChildren(
      h("div", { class: "alert alert-ok signed-url" }, h("div", {}, h("strong", {}, `Signed URL for ${key}`), ` · anyone with it can download the object until ${formatTime(result.expires_at)}`), input),
    );
    await copyText(url);
  }

  async function remove(key) {
    if (!(await confirmAction(`Delete ${key}?`, "The object is removed from the bucket."))) return;
    if ((await attempt(error, () => api.del(objectPath(key)))) === undefined) return;
    toast(`${key} deleted`, "success");
    load();
  }

  open.addEventListener("submit", (event) => {
    event.preventDefault();
    state.bucket = bucketInput.value.trim();
    state.prefix = "";
    sessionStorage.setItem("appliance.bucket", state.bucket);
    if (state.bucket) remember(state.bucket);
    load();
  });

  uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!state.bucket) return error.replaceChildren(h("div", { class: "alert alert-error", role: "alert" }, "Open a bucket first."));
    const prefix = keyPrefix.value.trim();
    uploads.replaceChildren();
    for (const file of fileInput.files) {
      const key = `${prefix && !prefix.endsWith("/") ? `${prefix}/` : prefix}${file.name}`;
      const bar = progressBar(`Uploading ${key}`);
      const status = h("span", { class: "hint" }, `${key} · ${formatBytes(file.size)}`);
      uploads.append(h("div", { class: "upload" }, status, bar));
      const done = await attempt(error, () => api.upload(objectPath(key), file, bar.set));
      status.textContent = done ? `${key} · ${formatBytes(file.size)} · uploaded` : `${key} · failed`;
      if (done) toast(`Uploaded ${key}`, "success");
    }
    fileInput.value = "";
    remember(state.bucket);
    load();
  });

  el.replaceChildren(panelHeader("Storage", `Objects of tenant ${api.tenant}.`), card(null, open, uploadForm), error, signed, card("Objects", listing));
  await load();
}
