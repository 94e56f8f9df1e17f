// Search console: index settings, add documents, run a query with filters, facets and highlights.
import { attempt, badge, button, card, field, h, jsonBlock, panelHeader, parseJson, toast } from "../ui.js";

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
  const index = h("input", { name: "index", autocomplete: "off", placeholder: "movies", value: sessionStorage.getItem("appliance.index") || "" });
  const error = h("div", {});

  // Settings
  const primary = h("input", { name: "primary_key", value: "id" });
  const searchable = h("input", { name: "searchable", placeholder: "title, overview" });
  const filterable = h("input", { name: "filterable", placeholder: "genre, year" });
  const sortable = h("input", { name: "sortable", placeholder: "year" });
  const settings = h("form", { "aria-label": "Index settings" }, h("div", { class: "row" }, field("Primary key", primary), field("Searchable", searchable, "comma-separated"), field("Filterable", filterable), field("Sortable", sortable)), button("Save settings", null, { kind: "primary", type: "submit" }));
  settings.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { primary_key: primary.value.trim(), searchable: list(searchable.value), filterable: list(filterable.value), sortable: list(sortable.value) };
    if (await attempt(error, () => api.put(`/v1/indexes/${encodeURIComponent(index.value.trim())}`, body))) toast("Index settings saved", "success");
  });

  // Documents
  const docs = h("textarea", { name: "documents", placeholder: '[{"id": "1", "title": "Alien", "year": 1979}]' });
  const docsForm = h("form", { "aria-label": "Add documents" }, field("Documents (JSON array)", docs), button("Add and wait until searchable", null, { kind: "secondary", type: "submit" }));
  docsForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = await attempt(error, () => api.post(`/v1/indexes/${encodeURIComponent(index.value.trim())}/documents?wait=true`, parseJson(docs.value, "documents") || []));
    if (result !== undefined) toast("Documents indexed", "success");
  });

  // Query
  const q = h("input", { name: "q", type: "search", placeholder: "search terms", autocomplete: "off" });
  const filter = h("textarea", { name: "filter", placeholder: '{"filter": [{"term": {"genre": "scifi"}}]}' });
  const facets = h("input", { name: "facets", placeholder: "genre" });
  const sort = h("input", { name: "sort", placeholder: "year:desc" });
  const highlight = h("input", { type: "checkbox", name: "highlight", checked: true });
  const results = h("div", { "aria-live": "polite" });
  const query = h("form", { role: "search", "aria-label": "Run a query" }, h("div", { class: "row" }, field("Query", q), field("Facets", facets, "comma-separated"), field("Sort", sort, "field:asc or field:desc")), field("Filter (bool query JSON)", filter), h("label", { class: "checks" }, highlight, "Highlight matches"), h("div", { style: "margin-top:10px" }, button("Search", null, { kind: "primary", type: "submit" })));
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

  el.replaceChildren(panelHeader("Search", `Indexes of tenant ${api.tenant}.`), card(null, field("Index", index)), error, h("div", { class: "grid grid-2" }, card("Settings", settings), card("Documents", docsForm)), card("Query", query, results));
}
