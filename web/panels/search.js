// Search console: index settings, add documents, run a query with filters, facets and highlights.
import { attempt, badge, button, card, field, formatTime, h, jsonBlock, panelHeader, parseJson, table, toast } from "../ui.js";

const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

/** Highlights arrive as text with <mark> tags: escape everything, then restore only <mark>. */
function highlighted(text) {
  const span = h("span", {});
  const parts = String(text).split(/(<mark>|<\/mark>)/);
  let inMark = false;
  for (const part of parts) {
    if (part === "<mark>") inMark = true;
    else if (part === "</mark>") inMark = false;
    else if (part) span.append(inMark ? h("mark", {}, part) : document.createTextNode(part));
  }
  return span;
}

function hitView(hit, primaryKey) {
  const { _score, _highlight, ...doc } = hit;
  const fields = Object.entries(_highlight || {});
  return h(
    "article",
    { class: "hit" },
    h("div", { class: "hit-head" }, h("span", {}, String(doc[primaryKey] ?? doc.id ?? "")), badge(`score ${Number(_score ?? 0).toFixed(3)}`, "neutral")),
    fields.length ? h("dl", { class: "kv" }, fields.map(([name, text]) => [h("dt", {}, name), h("dd", {}, highlighted(text))])) : null,
    h("details", {}, h("summary", {}, "Document"), jsonBlock(doc)),
  );
}

function facetView(facets) {
  return Object.entries(facets || {}).map(([name, counts]) => {
    const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
    const max = Math.max(1, ...entries.map((e) => e[1]));
    return h("div", {}, h("h3", { class: "card-title" }, name), h("ul", { class: "facet" }, entries.map(([value, count]) => h("li", {}, h("span", {}, value), h("span", { class: "facet-bar", style: `width:${Math.round((count / max) * 100)}%` }), h("span", { class: "num" }, count)))));
  });
}

export async function render(el, api) {
  const index = h("input", { name: "index", autocomplete: "off", placeholder: "movies", value: sessionStorage.getItem("appliance.index") || "", list: "index-names" });
  const names = h("datalist", { id: "index-names" });
  const error = h("div", {});
  const indexes = h("div", {});
  const info = h("p", { class: "hint", "aria-live": "polite" });

  async function loadIndexes() {
    const items = await attempt(indexes, () => api.all("/v1/indexes", 500));
    if (!items) return;
    names.replaceChildren(...items.map((i) => h("option", { value: i.name })));
    indexes.replaceChildren(
      table(
        [
          { label: "Index", value: (i) => h("button", { type: "button", class: "btn btn-small", onclick: () => choose(i.name) }, i.name) },
          { label: "Searchable", value: (i) => h("div", { class: "badges" }, i.searchable.map((f) => badge(f, "accent"))) },
          { label: "Filterable", value: (i) => h("div", { class: "badges" }, i.filterable.map((f) => badge(f))) },
          { label: "Updated", value: (i) => formatTime(i.updated_at) },
        ],
        items,
        { caption: "Indexes", emptyText: "No indexes yet: name one and save its settings." },
      ),
    );
  }

  /** Open an index: its settings fill the form, its document count shows. */
  async function choose(name) {
    index.value = name;
    sessionStorage.setItem("appliance.index", name);
    const response = await attempt(error, () => api.raw("GET", `/v1/indexes/${encodeURIComponent(name)}`, { allow: [404] }));
    if (!response) return;
    if (response.status === 404) {
      info.textContent = `${name} does not exist yet: save its settings to create it.`;
      return;
    }
    const found = await response.json();
    primary.value = found.primary_key;
    searchable.value = found.searchable.join(", ");
    filterable.value = found.filterable.join(", ");
    sortable.value = found.sortable.join(", ");
    info.textContent = `${found.documents ?? 0} document(s) in ${found.name}.`;
  }
  index.addEventListener("change", () => index.value.trim() && choose(index.value.trim()));

  // Settings
  const primary = h("input", { name: "primary_key", value: "id" });
  const searchable = h("input", { name: "searchable", placeholder: "title, overview" });
  const filterable = h("input", { name: "filterable", placeholder: "genre, year" });
  const sortable = h("input", { name: "sortable", placeholder: "year" });
  const settings = h("form", { "aria-label": "Index settings" }, h("div", { class: "row" }, field("Primary key", primary), field("Searchable", searchable, "comma-separated"), field("Filterable", filterable), field("Sortable", sortable)), button("Save settings", null, { kind: "primary", type: "submit" }));
  settings.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { primary_key: primary.value.trim(), searchable: list(searchable.value), filterable: list(filterable.value), sortable: list(sortable.value) };
    const name = index.value.trim();
    if (!(await attempt(error, () => api.put(`/v1/indexes/${encodeURIComponent(name)}`, body)))) return;
    toast(`Index ${name} saved`, "success");
    loadIndexes();
    choose(name);
  });

  // Documents
  const docs = h("textarea", { name: "documents", placeholder: '[{"id": "1", "title": "Alien", "year": 1979}]' });
  const docsForm = h("form", { "aria-label": "Add documents" }, field("Documents (JSON array)", docs), button("Add and wait until searchable", null, { kind: "secondary", type: "submit" }));
  docsForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = await attempt(error, () => api.post(`/v1/indexes/${encodeURIComponent(index.value.trim())}/documents?wait=true`, parseJson(docs.value, "documents") || []));
    if (!result) return;
    toast(result.status === "succeeded" ? `${result.documents} document(s) indexed` : `Indexing ${result.status}: ${result.error || ""}`, result.status === "succeeded" ? "success" : "error");
    choose(index.value.trim());
  });

  // Query
  const q = h("input", { name: "q", type: "search", placeholder: "search terms", autocomplete: "off" });
  const filter = h("textarea", { name: "filter", placeholder: '{"term": {"genre": "scifi"}}  or  {"bool": {"filter": [{"range": {"year": {"gte": 1980}}}]}}' });
  const facets = h("input", { name: "facets", placeholder: "genre" });
  const sort = h("input", { name: "sort", placeholder: "year:desc" });
  const highlight = h("input", { type: "checkbox", name: "highlight", checked: true });
  const results = h("div", { "aria-live": "polite" });
  const query = h("form", { role: "search", "aria-label": "Run a query" }, h("div", { class: "row" }, field("Query", q), field("Facets", facets, "comma-separated"), field("Sort", sort, "field:asc or field:desc")), field("Filter (JSON clause)", filter, "term, terms, range, exists or bool, on filterable fields"), h("label", { class: "checks" }, highlight, "Highlight matches"), h("div", { style: "margin-top:10px" }, button("Search", null, { kind: "primary", type: "submit" })));
  query.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = index.value.trim();
    sessionStorage.setItem("appliance.index", name);
    const body = { q: q.value, facets: list(facets.value), sort: list(sort.value), highlight: highlight.checked, limit: 20 };
    const result = await attempt(results, () => {
      const parsed = parseJson(filter.value, "filter");
      return api.post(`/v1/indexes/${encodeURIComponent(name)}/search`, parsed ? { ...body, filter: parsed } : body);
    });
    if (!result) return;
    results.replaceChildren(
      h("p", { class: "hint" }, `${result.total} hits in ${result.took_ms} ms`),
      h("div", { class: "grid grid-2" }, h("div", { class: "hits" }, result.hits.length ? result.hits.map((hit) => hitView(hit, primary.value.trim() || "id")) : h("p", { class: "empty-inline" }, "No hits.")), h("div", {}, facetView(result.facets))),
    );
  });

  el.replaceChildren(panelHeader("Search", `Indexes of tenant ${api.tenant}.`, button("Refresh", loadIndexes, { iconName: "refresh" })), card("Indexes", field("Index", index, "pick one below or name a new one"), names, info, indexes), error, h("div", { class: "grid grid-2" }, card("Settings", settings), card("Documents", docsForm)), card("Query", query, results));
  await loadIndexes();
  if (index.value.trim()) await choose(index.value.trim());
}
