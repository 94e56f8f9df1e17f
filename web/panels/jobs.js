// Jobs: queues and their counts, enqueue, job detail with attempts and errors, dead letters + retry.
import { attempt, badge, button, card, errorBox, field, formatTime, h, jsonBlock, panelHeader, parseJson, table, toast } from "../ui.js";

const STATUS_KIND = { queued: "neutral", running: "accent", succeeded: "ok", failed: "warn", dead: "bad" };

function jobDetail(job) {
  const kv = [
    ["Id", h("code", {}, job.id)],
    ["Type", job.type || "—"],
    ["Status", badge(job.status, STATUS_KIND[job.status] || "neutral")],
    ["Attempts", `${job.attempts ?? 0}${job.max_attempts ? ` of ${job.max_attempts}` : ""}`],
    ["Queue", job.queue],
    ["Created", formatTime(job.created_at)],
    ["Runs at", formatTime(job.run_at)],
    ["Finished", formatTime(job.finished_at)],
  ];
  const history = job.history || [];
  return h(
    "div",
    {},
    h("dl", { class: "kv" }, kv.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    job.error ? h("div", { class: "alert alert-error" }, h("strong", {}, "Last error: "), job.error) : null,
    history.length
      ? h("ol", { class: "attempts", "aria-label": "Attempts" }, history.map((a) => h("li", {}, `Attempt ${a.attempt} · ${formatTime(a.started_at)}`, a.error ? h("span", { class: "hint" }, ` · ${a.error}`) : h("span", { class: "hint" }, a.finished_at ? " · succeeded" : " · running")))) 
      : null,
    h("details", {}, h("summary", {}, "Full record"), jsonBlock(job)),
  );
}

export async function render(el, api) {
  const queue = h("input", { name: "queue", autocomplete: "off", value: sessionStorage.getItem("appliance.queue") || "default", list: "queue-names" });
  const names = h("datalist", { id: "queue-names" });
  const error = h("div", {});
  const dead = h("div", {});
  const detail = h("div", { "aria-live": "polite" });
  let current = queue.value.trim() || "default";
  const q = () => encodeURIComponent(current);

  // The API has no queue listing: offer the queues opened before in this browser session.
  const recent = () => JSON.parse(sessionStorage.getItem("appliance.queues") || '["default", "events", "email"]');
  const drawNames = () => names.replaceChildren(...recent().map((n) => h("option", { value: n })));
  drawNames();

  let shown = null;
  /** The queue's dead letters; refreshed every few seconds, redrawn only when they change. */
  async function loadDead() {
    let page;
    try {
      page = await api.get(`/v1/queues/${q()}/dead?limit=100`);
    } catch (err) {
      shown = null;
      dead.replaceChildren(errorBox(err));
      return;
    }
    const items = page.items;
    const signature = JSON.stringify(items.map((j) => [j.id, j.attempts, j.status, j.error]));
    if (signature === shown) return;
    shown = signature;
    dead.replaceChildren(
      table(
        [
          { label: "Job", value: (j) => h("button", { type: "button", class: "btn btn-small", onclick: () => show(j.id) }, j.id) },
          { label: "Type", value: (j) => j.type || "—" },
          { label: "Attempts", class: "num", value: (j) => `${j.attempts} of ${j.max_attempts}` },
          { label: "Error", value: (j) => j.error || "—" },
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
    jobId.value = job?.id ?? jobId.value;
    if (!job) return;
    toast(`Job ${job.id} is ${job.status}`, "success");
    await show(job.id);
    loadDead();
  });

  const pick = h("form", { class: "row", "aria-label": "Choose a queue" }, field("Queue", queue), h("div", { class: "field field-button" }, button("Open", null, { kind: "primary", type: "submit" })), names);
  pick.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = queue.value.trim();
    current = name;
    sessionStorage.setItem("appliance.queue", name);
    sessionStorage.setItem("appliance.queues", JSON.stringify([name, ...recent().filter((n) => n !== name)].slice(0, 20)));
    drawNames();
    shown = null;
    loadDead();
  });

  el.replaceChildren(panelHeader("Jobs", `Queues of tenant ${api.tenant}.`), card(null, pick), error, card("Dead letters", dead), h("div", { class: "grid grid-2" }, card("Job detail", lookup, detail), card("Enqueue a job", enqueue)));
  await loadDead();
  const timer = setInterval(loadDead, 2000);
  return () => clearInterval(timer);
}
