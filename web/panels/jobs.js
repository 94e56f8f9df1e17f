// Jobs: queues and their counts, enqueue, job detail with attempts and errors, dead letters + retry.
import { barChart } from "../charts.js";
import { attempt, badge, button, card, field, formatTime, h, jsonBlock, panelHeader, parseJson, table, toast } from "../ui.js";

const STATUS_KIND = { queued: "neutral", running: "accent", succeeded: "ok", failed: "warn", dead: "bad" };
const STATUS_COLOR = { queued: "#64748b", running: "#2563eb", succeeded: "#0f7a4a", failed: "#ca8a04", dead: "#b42318" };

function jobDetail(job) {
  const kv = [
    ["Id", h("code", {}, job.id)],
    ["Type", job.type || "—"],
    ["Status", badge(job.status, STATUS_KIND[job.status] || "neutral")],
    ["Attempts", `${job.attempts ?? 0}${job.max_attempts ? ` of ${job.max_attempts}` : ""}`],
    ["Created", formatTime(job.created_at ?? job.timestamps?.created_at)],
    ["Finished", formatTime(job.finished_at ?? job.timestamps?.finished_at)],
  ];
  return h(
    "div",
    {},
    h("dl", { class: "kv" }, kv.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    job.error ? h("div", { class: "alert alert-error" }, h("strong", {}, "Last error: "), typeof job.error === "string" ? job.error : JSON.stringify(job.error)) : null,
    h("details", { open: true }, h("summary", {}, "Full record"), jsonBlock(job)),
  );
}

export async function render(el, api) {
  const queue = h("input", { name: "queue", autocomplete: "off", value: sessionStorage.getItem("appliance.queue") || "default", list: "queue-names" });
  const names = h("datalist", { id: "queue-names" });
  const error = h("div", {});
  const overview = h("div", {});
  const dead = h("div", {});
  const detail = h("div", { "aria-live": "polite" });
  const q = () => encodeURIComponent(queue.value.trim());

  async function loadQueues() {
    // A queue listing with counts is optional in the API; when present, chart it.
    const response = await attempt(null, () => api.raw("GET", "/v1/queues", { allow: [404, 405] }));
    if (!response || !response.ok) {
      overview.replaceChildren(h("p", { class: "hint" }, "Type a queue name to see its dead letters and look up jobs."));
      return;
    }
    const body = await response.json();
    const queues = body.items || body.queues || [];
    names.replaceChildren(...queues.map((item) => h("option", { value: item.name })));
    overview.replaceChildren(
      queues.length
        ? h("div", { class: "grid grid-2" }, queues.map((item) => card(item.name, barChart(Object.entries(item.counts || {}).map(([status, n]) => ({ label: status, value: n, color: STATUS_COLOR[status] })), { title: `Jobs by status in queue ${item.name}`, format: (v) => String(v) }))))
        : h("p", { class: "empty-inline" }, "No queues yet."),
    );
  }

  async function loadDead() {
    sessionStorage.setItem("appliance.queue", queue.value.trim());
    const page = await attempt(dead, () => api.get(`/v1/queues/${q()}/dead?limit=100`));
    if (!page) return;
    const items = page.items || [];
    dead.replaceChildren(
      table(
        [
          { label: "Job", value: (j) => h("button", { type: "button", class: "btn btn-small", onclick: () => show(j.id) }, j.id) },
          { label: "Type", value: (j) => j.type || "—" },
          { label: "Attempts", class: "num", value: (j) => String(j.attempts ?? "—") },
          { label: "Error", value: (j) => (typeof j.error === "string" ? j.error : JSON.stringify(j.error ?? "")) },
          { label: "Actions", class: "actions-cell", value: (j) => button("Retry", () => retry(j.id), { class: "btn btn-small btn-primary", "aria-label": `Retry job ${j.id}` }) },
        ],
        items,
        { caption: "Dead letters", emptyText: "No dead letters in this queue." },
      ),
    );
  }

  async function show(id) {
    const job = await attempt(detail, () => api.get(`/v1/queues/${q()}/jobs/${encodeURIComponent(id)}`));
    if (job) detail.replaceChildren(jobDetail(job));
  }

  async function retry(id) {
    if ((await attempt(error, () => api.post(`/v1/queues/${q()}/dead/${encodeURIComponent(id)}/retry`))) === undefined) return;
    toast(`Job ${id} queued again`, "success");
    loadDead();
    show(id);
  }

  const jobId = h("input", { name: "job_id", autocomplete: "off", placeholder: "job id" });
  const lookup = h("form", { class: "row", "aria-label": "Look up a job" }, field("Job id", jobId), h("div", { class: "field field-button" }, button("Show", null, { type: "submit" })));
  lookup.addEventListener("submit", (event) => {
    event.preventDefault();
    show(jobId.value.trim());
  });

  const type = h("input", { name: "type", value: "http", autocomplete: "off" });
  const payload = h("textarea", { name: "payload", placeholder: '{"url": "http://127.0.0.1:9000/hook", "body": {}}' });
  const attempts = h("input", { name: "max_attempts", type: "number", min: "1", value: "3" });
  const enqueue = h("form", { "aria-label": "Enqueue a job" }, h("div", { class: "row" }, field("Type", type), field("Max attempts", attempts)), field("Payload (JSON)", payload), button("Enqueue", null, { kind: "primary", type: "submit" }));
  enqueue.addEventListener("submit", async (event) => {
    event.preventDefault();
    const job = await attempt(error, () => api.post(`/v1/queues/${q()}/jobs`, { type: type.value.trim(), payload: parseJson(payload.value, "payload") ?? {}, max_attempts: Number(attempts.value) }));
    if (!job) return;
    toast(`Job ${job.id} is ${job.status}`, "success");
    show(job.id);
  });

  const pick = h("form", { class: "row", "aria-label": "Choose a queue" }, field("Queue", queue), h("div", { class: "field field-button" }, button("Open", null, { kind: "primary", type: "submit" })), names);
  pick.addEventListener("submit", (event) => {
    event.preventDefault();
    loadDead();
  });

  el.replaceChildren(panelHeader("Jobs", `Queues of tenant ${api.tenant}.`), card(null, pick), error, overview, h("div", { class: "grid grid-2" }, card("Dead letters", dead), card("Job detail", lookup, detail)), card("Enqueue a job", enqueue));
  await Promise.all([loadQueues(), loadDead()]);
}
