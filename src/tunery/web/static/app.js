// The tunery studio: New run, Runs (with the expandable Run panel), Hub and Credits.
//
// Data comes from the REST API once per view and then from one account-wide event stream
// (GET /api/v1/events): status and phase changes, per-step metrics, log lines, samples, and
// a snapshot of the active runs' live numbers every few seconds. No widget polls.

import { AccountStream, ApiError, UnreachableError, api, followLink, saveBlob, session }
  from "./api.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const PILLS = {
  queued: { label: "Queued", icon: "clock" },
  waiting_for_gpu: { label: "Waiting for GPU", icon: "spinner" },
  training: { label: "Training", icon: "spinner" },
  retrying: { label: "Retrying", icon: "refresh" },
  completed: { label: "Completed", icon: "check" },
  failed: { label: "Failed", icon: "cross" },
  cancelled: { label: "Cancelled", icon: "square" },
};
const PHASES = {
  queued: "in the queue",
  provisioning: "provisioning a node",
  loading_model: "loading the model and tokenizer",
  preparing_data: "preparing the datasets",
  attaching_lora: "attaching the LoRA adapter",
  training: "running gradient steps",
  saving: "saving the adapter",
  exporting: "exporting the GGUF",
  sampling: "answering the sample prompts",
  teardown: "releasing the node",
  backoff: "waiting before the next attempt",
  done: "finished",
};

const state = {
  runs: new Map(),
  datasets: [],
  models: [],
  tiers: [],
  hub: [],
  credits: null,
  pending: new Map(),
  // Until the lists are loaded after the stream opened, its events wait here.
  loaded: false,
  backlog: [],
  view: null,
  expanded: null,
  panel: null,
  submissionKey: null,
};
const stream = new AccountStream({ onEvent, onState: onConnection });
const $ = (selector) => document.querySelector(selector);

// Small DOM helpers ----------------------------------------------------------------------

/** Create an element: h("p", {class: "x", onclick}, "text", child, …). */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.flat(Infinity).filter((child) => child !== null && child !== undefined));
  return element;
}

function pill(status) {
  const { label, icon } = PILLS[status] || { label: status, icon: "clock" };
  return h("span", { class: `pill pill-${status}`, dataset: { status } },
    h("span", { class: `icon icon-${icon}`, "aria-hidden": "true" }), label);
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const total = Math.max(0, Math.round(seconds));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const rest = total % 60;
  if (hours) return `${hours}h ${String(minutes).padStart(2, "0")}m`;
  if (minutes) return `${minutes}m ${String(rest).padStart(2, "0")}s`;
  return `${rest}s`;
}

const formatCredits = (value) => (value === null || value === undefined ? "–" : Number(value).toFixed(2));

function formatBytes(bytes) {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MB`;
  if (bytes >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KB`;
  return `${bytes} B`;
}

const formatTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

function currentEpoch(metrics) {
  if (!metrics.epochs || metrics.epoch === null || metrics.epoch === undefined) return null;
  return Math.min(Math.max(1, Math.ceil(metrics.epoch)), metrics.epochs);
}

function tierOf(run) {
  return state.tiers.find((tier) => tier.id === run.tier);
}

function showBanner(message, kind = "error") {
  const banner = $("#banner");
  banner.textContent = message;
  banner.className = `banner banner-${kind}`;
  banner.hidden = false;
}

function hideBanner() {
  $("#banner").hidden = true;
}

/** Report a failed action: unreachable server, or the server's message and hint. */
function reportError(error, where = "") {
  if (error instanceof ApiError && error.status === 401) return;
  const prefix = where ? `${where}: ` : "";
  if (error instanceof UnreachableError) {
    showBanner(`${prefix}the server cannot be reached. Your runs keep going on the server; `
      + "the studio reconnects by itself.");
  } else if (error instanceof ApiError) {
    showBanner(`${prefix}${error.message}${error.hint ? ` (${error.hint})` : ""}`);
  } else {
    showBanner(`${prefix}${error.message}`);
  }
}

// Confirmation dialog ----------------------------------------------------------------------

/** Ask before something irreversible; resolves true only when the user confirms. */
function confirmAction({ title, body, confirm, keep = "Keep" }) {
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-body").textContent = body;
  $("#confirm-go").textContent = confirm;
  $("#confirm-keep").textContent = keep;
  const opener = document.activeElement;
  dialog.returnValue = "";
  dialog.showModal();
  $("#confirm-keep").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      opener?.focus?.();
      resolve(dialog.returnValue === "confirm");
    }, { once: true });
  });
}

// Focus stays inside the open dialog: Tab from the last button wraps to the first.
$("#confirm-dialog").addEventListener("keydown", (event) => {
  if (event.key !== "Tab") return;
  const buttons = [...$("#confirm-dialog").querySelectorAll("button")];
  const first = buttons[0];
  const last = buttons[buttons.length - 1];
  if (event.shiftKey && document.activeElement === first) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && document.activeElement === last) {
    event.preventDefault();
    first.focus();
  }
});

// Routing ----------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [view, id] = hash.split("/");
  return { view: ["new", "runs", "hub", "credits"].includes(view) ? view : "runs", id };
}

function show(view) {
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function render() {
  if (!session.token) {
    show("signin");
    return;
  }
  const { view, id } = route();
  show(view);
  state.view = view;
  if (view === "runs") {
    state.expanded = id || null;
    renderRuns();
  } else if (view === "hub") renderHub();
  else if (view === "credits") renderCredits();
}

window.addEventListener("hashchange", () => {
  const before = state.view;
  const toggled = route().id || state.expanded;
  render();
  if (state.view !== before) $("#main").focus({ preventScroll: true });
  else if (state.view === "runs" && toggled) {
    // Opening or closing a run keeps the keyboard on its header.
    document.getElementById(`run-${toggled}`)?.querySelector(".run-header")?.focus();
  }
});

// Loading ------------------------------------------------------------------------------------

/**
 * Load every list, then apply the events that arrived meanwhile.
 *
 * Called once the event stream is open (its cursor is fixed), so nothing committed between
 * the lists and the stream is lost; runs merge through receiveRun, which keeps whichever of
 * the page's copy and the fresh one is newer.
 */
async function loadAll() {
  state.loaded = false;
  const [runs, datasets, models, tiers, hub, credits] = await Promise.all([
    api("/runs"), api("/datasets"), api("/models"), api("/tiers"), api("/hub"), api("/credits"),
  ]);
  const listed = new Set(runs.map((run) => run.id));
  for (const id of [...state.runs.keys()]) if (!listed.has(id)) state.runs.delete(id);
  for (const run of runs) receiveRun(run, { quiet: true });
  Object.assign(state, { datasets, models, tiers, hub, credits });
  state.loaded = true;
  renderForm();
  renderBalance();
  render();
  const waiting = state.backlog.splice(0);
  for (const [kind, data] of waiting) onEvent(kind, data);
}

function loadUntilDone() {
  loadAll().catch((error) => {
    if (error instanceof ApiError && error.status === 401) return;
    reportError(error, "Loading the studio");
    setTimeout(loadUntilDone, 3000);
  });
}

async function refreshRun(id) {
  try {
    receiveRun(await api(`/runs/${id}`));
  } catch (error) {
    // Buffered events of a run that cannot be fetched now are dropped; the next event or
    // reload fetches it again.
    state.pending.delete(id);
    if (error instanceof ApiError && error.status === 404) {
      state.runs.delete(id);
      renderRuns();
    } else reportError(error);
  }
}

async function refreshAccount() {
  try {
    const [hub, credits, tiers] = await Promise.all([api("/hub"), api("/credits"), api("/tiers")]);
    Object.assign(state, { hub, credits, tiers });
    renderBalance();
    renderTiers();
    if (route().view === "hub") renderHub();
    if (route().view === "credits") renderCredits();
  } catch (error) {
    reportError(error);
  }
}

// Live events ----------------------------------------------------------------------------------

function onConnection(status, detail) {
  const indicator = $("#connection");
  indicator.hidden = false;
  if (status === "live") {
    indicator.textContent = "● Live";
    indicator.className = "connection live";
    hideBanner();
    // After a drop (or a server restart) the stream replays what was missed; the lists
    // are reloaded too, for what is not an event (Hub entries, balance, tiers).
    if (detail === "resumed") loadUntilDone();
  } else {
    indicator.textContent = "○ Reconnecting…";
    indicator.className = "connection lost";
    showBanner("Lost the connection to the server; reconnecting. Runs keep going on the "
      + "server and the studio catches up when it is back.");
  }
}

function onEvent(kind, data) {
  if (kind === "ready") {
    loadUntilDone();
    return;
  }
  if (!state.loaded) {
    state.backlog.push([kind, data]);
    return;
  }
  if (kind === "snapshot") {
    for (const live of data.runs) {
      const run = state.runs.get(live.id);
      if (!run) continue;
      run.metrics = { ...run.metrics, ...live.metrics };
      run.queue_position = live.queue_position;
      updateRun(run);
      // A state the events have not told us about: fetch the run rather than guess.
      if (live.status !== run.status) refreshRun(run.id);
    }
    return;
  }
  const run = state.runs.get(data.run_id);
  if (!run) {
    // A run this page has not seen yet (just submitted, or from the CLI): keep its events
    // until the run object arrives, then apply the ones newer than it.
    if (!state.pending.has(data.run_id)) {
      state.pending.set(data.run_id, []);
      refreshRun(data.run_id);
    }
    state.pending.get(data.run_id).push([kind, data]);
    return;
  }
  applyEvent(run, kind, data);
}

function applyEvent(run, kind, data) {
  if (run.last_event_id !== null && data.id <= run.last_event_id) return;
  run.last_event_id = data.id;
  if (kind === "status") {
    run.status = data.status;
    run.phase = data.phase;
    if (data.error) run.error = data.error;
    updateRun(run);
    refreshRun(run.id);
    refreshAccount();
  } else if (kind === "phase") {
    run.phase = data.phase;
    updateRun(run);
  } else if (kind === "metrics") {
    const { id, kind: _kind, at, run_id: _run, ...metrics } = data;
    // A replayed step fills the curve's history; the header keeps the newest step.
    if (!metrics.replayed) run.metrics = { ...run.metrics, ...metrics };
    updateRun(run);
    if (state.panel?.runId === run.id) state.panel.addPoint(metrics.step, metrics.loss);
  } else if (kind === "samples") {
    run.samples = data.samples;
    updateRun(run);
  }
  if (["log", "status", "phase"].includes(kind) && state.panel?.runId === run.id) {
    state.panel.addLogLine(data);
  }
}

/**
 * Take a run object from the API unless the page already holds a newer state of it; then
 * apply the events that were waiting for it. ``quiet`` leaves drawing to the caller.
 */
function receiveRun(fresh, { quiet = false } = {}) {
  const known = state.runs.get(fresh.id);
  let run = fresh;
  if (known && (known.last_event_id ?? 0) > (fresh.last_event_id ?? 0)) {
    // The page's state is newer; take only what no event carries.
    known.attempt = Math.max(known.attempt, fresh.attempt);
    known.cancel_requested ||= fresh.cancel_requested;
    known.started_at ??= fresh.started_at;
    run = known;
  } else {
    state.runs.set(fresh.id, fresh);
  }
  const waiting = state.pending.get(fresh.id) || [];
  state.pending.delete(fresh.id);
  if (!quiet) updateRun(run);
  for (const [kind, data] of waiting) applyEvent(run, kind, data);
  return run;
}

// New run form ---------------------------------------------------------------------------------

function renderForm() {
  const select = $("#f-model");
  const chosen = select.value;
  select.replaceChildren(
    ...state.models.map((model) => h("option", { value: model.id },
      `${model.id} · ${model.family} · ${(model.parameters / 1e6).toFixed(model.parameters < 1e7 ? 1 : 0)}M · ${model.license}`)),
    h("option", { value: "__custom__" }, "Custom model (Hugging Face id, URL or path)…"),
  );
  if (chosen) select.value = chosen;
  describeModel();
  renderDatasets();
  renderTiers();
  if (!$("#f-name").value) {
    const stamp = new Date().toISOString().slice(0, 16).replace(/[-:]/g, "").replace("T", "-");
    $("#f-name").value = `run-${stamp}`;
  }
}

function describeModel() {
  const custom = $("#f-model").value === "__custom__";
  $("#f-model-custom").hidden = !custom;
  const model = state.models.find((entry) => entry.id === $("#f-model").value);
  $("#f-model-note").textContent = custom
    ? "Custom model: trained as given, but a failed run on a custom model is not refunded."
    : model
      ? `Verified: ${model.context_length.toLocaleString()} tokens of context, ${model.chat_template} `
        + `chat template, GGUF export tested; a failed run is refunded.`
      : "";
}

$("#f-model").addEventListener("change", () => {
  describeModel();
  const model = state.models.find((entry) => entry.id === $("#f-model").value);
  if (model?.lora_defaults) {
    $("#f-rank").value = model.lora_defaults.rank;
    $("#f-alpha").value = model.lora_defaults.alpha;
    const targets = model.lora_defaults.target_modules;
    $("#f-targets").value = Array.isArray(targets) ? targets.join(", ") : targets;
  }
});

function renderDatasets(select = []) {
  const checked = new Set([...document.querySelectorAll("#f-datasets input:checked")]
    .map((box) => box.value).concat(select));
  const list = $("#f-datasets");
  if (!state.datasets.length) {
    list.replaceChildren(h("p", { class: "muted" }, "No datasets yet: upload one below."));
    return;
  }
  list.replaceChildren(...state.datasets.map((dataset) => h("div", { class: "field check" },
    h("input", {
      type: "checkbox", id: `ds-${dataset.id}`, value: dataset.id,
      checked: checked.has(dataset.id),
    }),
    h("label", { for: `ds-${dataset.id}` },
      `${dataset.name} `, h("span", { class: "muted" },
        `${dataset.rows.toLocaleString()} rows · ${dataset.format} · ${formatBytes(dataset.bytes)}`)),
  )));
}

function renderTiers() {
  const list = $("#f-tiers");
  // Rebuilding the radios would drop the keyboard focus: only when something changed.
  const drawn = JSON.stringify(state.tiers);
  if (list.dataset.drawn === drawn) return;
  list.dataset.drawn = drawn;
  const chosen = list.querySelector("input:checked")?.value;
  const usable = state.tiers.filter((tier) => tier.nodes_total > 0);
  const selected = chosen || usable[0]?.id || state.tiers[0]?.id;
  list.replaceChildren(...state.tiers.map((tier) => h("div", { class: "field check tier" },
    h("input", {
      type: "radio", name: "tier", id: `tier-${tier.id}`, value: tier.id,
      checked: tier.id === selected,
    }),
    h("label", { for: `tier-${tier.id}` },
      h("strong", {}, tier.name), " ",
      h("span", { class: "muted" },
        `${tier.credits_per_minute > 0 ? `${tier.credits_per_minute} credits/min` : "free"} · `
        + `${tier.nodes_free} of ${tier.nodes_total} nodes free`)),
  )));
}

$("#f-upload").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const result = $("#upload-result");
  result.replaceChildren(h("span", { class: "muted" }, `Checking ${file.name}…`));
  const form = new FormData();
  form.append("file", file);
  try {
    const dataset = await api("/datasets", { method: "POST", form });
    state.datasets.unshift(dataset);
    renderDatasets([dataset.id]);
    result.replaceChildren(h("span", { class: "ok-text" },
      `✓ ${dataset.name}: ${dataset.rows.toLocaleString()} rows in ${dataset.format} format.`));
  } catch (error) {
    if (!(error instanceof ApiError)) {
      reportError(error, "Upload");
      result.replaceChildren();
      return;
    }
    const problems = error.problems.length ? error.problems : [{ message: error.message }];
    result.replaceChildren(h("div", { class: "error-text", role: "alert" },
      h("p", {}, `${file.name} cannot be used:`),
      h("ul", {}, problems.map((problem) => h("li", {},
        problem.line ? `${problem.unit || "line"} ${problem.line}: ${problem.message}` : problem.message))),
      error.hint ? h("p", {}, error.hint) : null));
  } finally {
    event.target.value = "";
  }
});

/** A random key (crypto.randomUUID needs a secure context; a LAN address is not one). */
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** A number when the text is one; otherwise the text, so the server names the field. */
function numeric(selector, { optional = false } = {}) {
  const text = $(selector).value.trim();
  if (text === "" && optional) return null;
  const value = Number(text);
  return text === "" || Number.isNaN(value) ? text : value;
}

function payload() {
  const targets = $("#f-targets").value.trim();
  const custom = $("#f-model").value === "__custom__";
  return {
    name: $("#f-name").value.trim(),
    base_model: custom ? $("#f-model-custom").value.trim() : $("#f-model").value,
    dataset_ids: [...document.querySelectorAll("#f-datasets input:checked")].map((box) => box.value),
    training: {
      epochs: numeric("#f-epochs"),
      max_steps: numeric("#f-max-steps"),
      learning_rate: numeric("#f-lr"),
      batch_size: numeric("#f-batch"),
      gradient_accumulation_steps: numeric("#f-accum"),
      max_seq_length: numeric("#f-seq", { optional: true }),
      lr_scheduler: $("#f-sched").value,
      warmup_ratio: numeric("#f-warmup"),
      weight_decay: numeric("#f-wd"),
      seed: numeric("#f-seed"),
      gradient_checkpointing: $("#f-checkpointing").checked,
      mixed_precision: $("#f-precision").value,
    },
    lora: {
      rank: numeric("#f-rank"),
      alpha: numeric("#f-alpha"),
      dropout: numeric("#f-dropout"),
      target_modules: targets === "all-linear" || targets === ""
        ? "all-linear" : targets.split(",").map((name) => name.trim()).filter(Boolean),
    },
    gpu_tier: $("#f-tiers input:checked")?.value ?? null,
    export: { gguf: $("#f-gguf").checked, quantization: "Q4_K_M" },
    attestations: { dataset_rights: $("#f-rights").checked, model_license: $("#f-license").checked },
  };
}

function clearProblems() {
  for (const node of document.querySelectorAll("#run-form .field-error")) {
    if (node.dataset.errorFor) node.hidden = true;
    else node.remove();
  }
  for (const node of document.querySelectorAll("#run-form [aria-invalid]")) {
    node.removeAttribute("aria-invalid");
    const kept = (node.getAttribute("aria-describedby") || "").split(" ")
      .filter((id) => id && !id.startsWith("error-"));
    if (kept.length) node.setAttribute("aria-describedby", kept.join(" "));
    else node.removeAttribute("aria-describedby");
  }
  $("#submit-problems").hidden = true;
}

/** The form element a problem's field belongs to: "dataset_ids.0" → dataset_ids. */
function fieldElement(field) {
  const parts = field.split(".");
  while (parts.length) {
    const element = document.querySelector(`#run-form [data-field="${CSS.escape(parts.join("."))}"]`);
    if (element) return element;
    parts.pop();
  }
  return null;
}

function showProblems(error) {
  const unplaced = [];
  for (const problem of error.problems) {
    const fixed = document.querySelector(`#run-form [data-error-for="${CSS.escape(problem.field)}"]`);
    if (fixed) {
      fixed.textContent = problem.message;
      fixed.hidden = false;
      continue;
    }
    const element = fieldElement(problem.field);
    if (!element) {
      unplaced.push(problem);
      continue;
    }
    const errorId = `error-${problem.field.replace(/[^A-Za-z0-9_-]/g, "-")}`;
    const input = element.querySelector("input, select");
    input?.setAttribute("aria-invalid", "true");
    input?.setAttribute("aria-describedby",
      [input.getAttribute("aria-describedby"), errorId].filter(Boolean).join(" "));
    element.append(h("p", { class: "field-error", id: errorId, dataset: { field: problem.field } },
      `${problem.field}: ${problem.message}`));
  }
  const summary = $("#submit-problems");
  const count = error.problems.length || 1;
  summary.replaceChildren(
    h("p", {}, h("strong", {}, "The run was not started. "),
      `${count} problem${count === 1 ? "" : "s"} to fix${unplaced.length ? ":" : ", marked below."}`),
    ...(unplaced.length || !error.problems.length
      ? [h("ul", {}, (error.problems.length ? unplaced : [{ field: "", message: error.message }])
        .map((problem) => h("li", {}, problem.field ? `${problem.field}: ${problem.message}` : problem.message)))]
      : []),
  );
  summary.hidden = false;
  summary.scrollIntoView({ block: "nearest" });
}

$("#run-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearProblems();
  const button = $("#f-submit");
  button.disabled = true;
  try {
    // One key per composed run: pressing play again after a lost answer returns the same run.
    state.submissionKey ??= newKey();
    const run = receiveRun(await api("/runs", {
      method: "POST", json: payload(), headers: { "Idempotency-Key": state.submissionKey },
    }));
    state.submissionKey = null;
    $("#f-name").value = "";
    renderForm();
    location.hash = `#/runs/${run.id}`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 422) {
      state.submissionKey = null;  // nothing was created; the corrected form is a new run
      showProblems(error);
    } else reportError(error, "Submitting the run");
  } finally {
    button.disabled = false;
  }
});

// Runs tab and the Run panel ---------------------------------------------------------------------

function sortedRuns() {
  return [...state.runs.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
}

function runSummary(run) {
  const metrics = run.metrics || {};
  const parts = [run.config.base_model, run.tier];
  if (run.status === "queued" && run.queue_position) parts.push(`#${run.queue_position} in queue`);
  if (run.status === "training" || run.status === "retrying") {
    parts.push(`${Math.round(metrics.progress || 0)}%`);
  }
  return parts.join(" · ");
}

function runRow(run) {
  const expanded = state.expanded === run.id;
  const row = h("li", { class: "run", id: `run-${run.id}`, dataset: { runId: run.id } },
    h("button", {
      class: "run-header", "aria-expanded": String(expanded), "aria-controls": `panel-${run.id}`,
      onclick: () => {
        location.hash = expanded ? "#/runs" : `#/runs/${run.id}`;
      },
    },
    pill(run.status),
    h("span", { class: "run-name" }, run.name),
    h("span", { class: "run-meta muted" }, runSummary(run)),
    h("span", { class: "run-when muted" }, formatTime(run.created_at))));
  return row;
}

function renderRuns() {
  const list = $("#run-list");
  const runs = sortedRuns();
  $("#runs-empty").hidden = runs.length > 0 || !state.loaded;
  if (state.panel && state.panel.runId !== state.expanded) {
    state.panel.destroy();
    state.panel = null;
  }
  const keep = state.panel;
  list.replaceChildren(...runs.map((run) => {
    const row = runRow(run);
    if (run.id === state.expanded) {
      if (!state.panel) state.panel = new RunPanel(run);
      row.append(state.panel.element);
    }
    return row;
  }));
  if (state.panel && state.panel !== keep) state.panel.load();
  if (state.panel) state.panel.update(state.runs.get(state.panel.runId));
}

function updateRun(run) {
  const row = document.getElementById(`run-${run.id}`);
  if (!row) {
    renderRuns();
    return;
  }
  row.querySelector(".run-header").replaceChildren(...runRow(run).firstChild.childNodes);
  if (state.panel?.runId === run.id) state.panel.update(run);
}

/** The expanded view of one run: live numbers, loss curve, config, samples, downloads, logs. */
class RunPanel {
  constructor(run) {
    this.runId = run.id;
    this.steps = [];
    this.losses = [];
    this.logLines = null;
    this.chart = null;
    this.element = h("div", { class: "panel", id: `panel-${run.id}`, role: "region",
      "aria-label": `Run ${run.name}` });
    this.build(run);
  }

  build(run) {
    const stat = (name, label) => h("div", { class: "stat" },
      h("span", { class: "stat-label" }, label),
      h("span", { class: "stat-value", dataset: { stat: name } }, "–"));
    this.progress = h("div", {
      class: "progress", role: "progressbar", "aria-label": "Step budget",
      "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0",
    }, h("div", { class: "progress-fill" }));
    this.phase = h("p", { class: "phase", "aria-live": "polite" });
    this.error = h("div", { class: "run-error", role: "alert", hidden: true });
    this.chartBox = h("div", { class: "chart", "aria-label": "Training loss by step", role: "img" },
      h("p", { class: "muted" }, "The loss curve starts with the first gradient step."));
    this.samples = h("section", { class: "samples", hidden: true });
    this.downloads = h("div", { class: "downloads" });
    this.linkNote = h("p", { class: "muted link-note", role: "status" });
    this.actions = h("div", { class: "panel-actions" });
    this.logBox = h("pre", { class: "logs", tabindex: "0", "aria-label": "Run log" });
    const logs = h("details", { class: "log-details" },
      h("summary", {}, "Logs"),
      h("div", { class: "actions" },
        h("button", { type: "button", onclick: () => this.downloadLogs() }, "Download logs")),
      this.logBox);
    logs.addEventListener("toggle", () => {
      if (logs.open && this.logLines === null) this.loadLogs();
    });
    this.element.append(
      h("div", { class: "stats" },
        stat("epoch", "Epoch"), stat("loss", "Loss"), stat("eta", "Time left"),
        stat("duration", "Duration"), stat("credits", "Credits"), stat("step", "Step")),
      this.progress, this.phase, this.error,
      h("h3", {}, "Loss"), this.chartBox,
      this.samples, this.downloads, this.linkNote, this.actions,
      this.configView(run), logs);
  }

  configView(run) {
    const config = run.config;
    const names = config.dataset_ids.map((id) => state.datasets.find((d) => d.id === id)?.name || id);
    const list = (entries) => h("dl", { class: "config" },
      entries.map(([key, value]) => [h("dt", {}, key), h("dd", {}, String(value ?? "–"))]));
    const targets = config.lora.target_modules;
    return h("details", { class: "config-details" },
      h("summary", {}, "Configuration"),
      h("div", { class: "config-grid" },
        h("section", {}, h("h4", {}, "Run"), list([
          ["Base model", config.base_model], ["GPU tier", run.tier],
          ["GGUF export", config.export.gguf ? config.export.quantization : "off"],
          ["Datasets", names.join(", ")]])),
        h("section", {}, h("h4", {}, "Training"), list(Object.entries(config.training))),
        h("section", {}, h("h4", {}, "LoRA"), list([
          ["rank", config.lora.rank], ["alpha", config.lora.alpha], ["dropout", config.lora.dropout],
          ["target modules", Array.isArray(targets) ? targets.join(", ") : targets]]))));
  }

  async load() {
    try {
      const history = await api(`/runs/${this.runId}/metrics`);
      // Points that arrived live while the history loaded are newer: they win.
      const byStep = new Map(history.map((row) => [row.step, row.loss]));
      this.steps.forEach((step, index) => byStep.set(step, this.losses[index]));
      const steps = [...byStep.keys()].filter((step) => byStep.get(step) != null)
        .sort((a, b) => a - b);
      this.steps.splice(0, Infinity, ...steps);
      this.losses.splice(0, Infinity, ...steps.map((step) => byStep.get(step)));
      if (this.steps.length) this.drawChart();
    } catch (error) {
      reportError(error, "Loading the loss curve");
    }
  }

  addPoint(step, loss) {
    if (step === undefined || loss === null || loss === undefined) return;
    // A resumed attempt re-reports steps after its checkpoint: the newer value replaces.
    let keep = this.steps.length;
    while (keep > 0 && this.steps[keep - 1] >= step) keep -= 1;
    this.steps.length = keep;
    this.losses.length = keep;
    this.steps.push(step);
    this.losses.push(loss);
    this.drawChart();
  }

  drawChart() {
    const width = Math.max(240, this.chartBox.clientWidth || 600);
    if (!this.chart) {
      this.chartBox.replaceChildren();
      this.chart = new window.uPlot({
        width, height: 220,
        scales: { x: { time: false } },
        axes: [{ label: "step" }, { label: "loss" }],
        legend: { show: false },
        series: [{ label: "step" }, { label: "loss", stroke: "#2563eb", width: 2 }],
      }, [this.steps, this.losses], this.chartBox);
      this.resizer = new ResizeObserver(() => {
        this.chart?.setSize({ width: Math.max(240, this.chartBox.clientWidth), height: 220 });
      });
      this.resizer.observe(this.chartBox);
    } else {
      this.chart.setData([this.steps, this.losses]);
    }
  }

  update(run) {
    if (!run) return;
    const metrics = run.metrics || {};
    const set = (name, text) => {
      this.element.querySelector(`[data-stat="${name}"]`).textContent = text;
    };
    const epoch = currentEpoch(metrics);
    set("epoch", epoch ? `${epoch}/${metrics.epochs}` : "–");
    set("loss", metrics.loss === null || metrics.loss === undefined ? "–" : metrics.loss.toFixed(4));
    set("eta", run.status === "completed" ? "done"
      : TERMINAL.has(run.status) ? "–"
        : metrics.eta_seconds === null || metrics.eta_seconds === undefined
          ? (run.status === "training" ? "estimating…" : "–")
          : formatDuration(metrics.eta_seconds));
    set("duration", formatDuration(metrics.duration_seconds));
    set("credits", formatCredits(metrics.credits));
    set("step", metrics.total_steps ? `${metrics.step}/${metrics.total_steps}` : String(metrics.step ?? 0));
    // ``progress`` is a percentage of the step budget.
    const percent = Math.round(run.status === "completed" ? 100 : metrics.progress || 0);
    this.progress.setAttribute("aria-valuenow", String(percent));
    this.progress.setAttribute("aria-valuetext", `${percent}% of the step budget`);
    this.progress.firstChild.style.width = `${percent}%`;
    const phase = PHASES[run.phase] || run.phase;
    let where = `${PILLS[run.status]?.label || run.status}: ${phase}`;
    if (run.status === "queued" && run.queue_position) where += ` (#${run.queue_position} in the queue)`;
    if (run.attempt > 1) where += ` · attempt ${run.attempt}`;
    if (run.status === "cancelled") {
      const minutes = Math.floor((metrics.billable_seconds || 0) / 60);
      where = `Cancelled: billed ${minutes} whole minute${minutes === 1 ? "" : "s"} of training, `
        + `${formatCredits(metrics.credits)} credits. No LoRA or Hub entry was kept.`;
    }
    if (this.phase.textContent !== where) this.phase.textContent = where;
    this.updateError(run);
    this.updateSamples(run);
    this.updateActions(run);
  }

  updateError(run) {
    const error = (run.status === "failed" || run.status === "retrying") ? run.error : null;
    this.error.hidden = !error;
    const key = error ? JSON.stringify([run.status, error]) : "";
    if (!error || this.errorKey === key) return;
    this.errorKey = key;
    const refund = run.status === "failed"
      ? (state.models.some((model) => model.id === run.config.base_model)
        ? "Training time on a verified catalog model is refunded."
        : "Runs on custom models are not refunded.")
      : "The pipeline retries by itself and resumes from its last checkpoint.";
    this.error.replaceChildren(
      h("p", {}, h("strong", {}, run.status === "failed" ? "Failed: " : "Retrying: "), error.message),
      ...(error.hint ? [h("p", { class: "hint" }, `Hint: ${error.hint}`)] : []),
      h("p", { class: "muted" }, refund));
  }

  updateSamples(run) {
    const samples = run.samples || [];
    this.samples.hidden = samples.length === 0;
    if (!samples.length || this.samples.childElementCount) return;
    this.samples.append(h("h3", {}, "Inference samples"),
      ...samples.map((sample, index) => h("article", { class: "sample" },
        h("p", { class: "sample-prompt" }, h("strong", {}, `Prompt ${index + 1}: `), sample.prompt),
        h("p", { class: "sample-response" }, sample.response),
        sample.stopped === false
          ? h("p", { class: "warning-text" }, "This reply hit the token limit without stopping.")
          : null)));
  }

  updateActions(run) {
    const artifacts = run.hub_entry_id ? (run.artifacts || {}) : {};
    const wanted = ["lora", "gguf"].filter((kind) => artifacts[kind]);
    const shown = [...this.downloads.querySelectorAll("button")].map((button) => button.dataset.artifact);
    if (wanted.join() !== shown.join()) {
      this.downloads.replaceChildren(...wanted.map((kind) => h("button", {
        type: "button", class: "primary", dataset: { artifact: kind },
        onclick: () => downloadArtifact(run.hub_entry_id, kind, this.linkNote),
      }, kind === "lora" ? "Download LoRA" : "Download GGUF")));
      if (run.status === "completed" && run.hub_entry_id && !artifacts.gguf && run.config.export.gguf) {
        this.downloads.append(h("p", { class: "muted" }, "The GGUF export failed; the LoRA was saved."));
      }
    }
    const terminal = TERMINAL.has(run.status);
    const key = `${terminal}-${run.cancel_requested}`;
    if (this.actionsKey === key) return;
    this.actionsKey = key;
    this.actions.replaceChildren(terminal
      ? h("button", { type: "button", class: "danger-outline", onclick: () => deleteRun(run.id) },
        "Delete run record")
      : h("button", { type: "button", class: "danger", onclick: () => cancelRun(run.id) },
        "Cancel run"));
  }

  async loadLogs() {
    try {
      const text = await api(`/runs/${this.runId}/logs`, { text: true });
      this.logLines = text.split("\n").filter(Boolean);
      this.logBox.textContent = this.logLines.join("\n");
    } catch (error) {
      reportError(error, "Loading the logs");
    }
  }

  addLogLine(event) {
    if (this.logLines === null) return;
    const text = event.kind === "log" ? event.message
      : event.kind === "status" ? `status: ${event.status} (${event.phase})`
        + (event.error ? ` — ${event.error.message}` : "")
        : `phase: ${event.phase}`;
    this.logLines.push(`${event.at} ${text}`);
    this.logBox.textContent = this.logLines.join("\n");
    this.logBox.scrollTop = this.logBox.scrollHeight;
  }

  async downloadLogs() {
    try {
      const text = await api(`/runs/${this.runId}/logs`, { text: true });
      const name = state.runs.get(this.runId)?.name || this.runId;
      saveBlob(new Blob([text], { type: "text/plain" }), `${name}-logs.txt`);
    } catch (error) {
      reportError(error, "Downloading the logs");
    }
  }

  destroy() {
    this.resizer?.disconnect();
    this.chart?.destroy();
  }
}

async function downloadArtifact(entryId, kind, note) {
  try {
    const { url, expires_at: expiresAt } = await api(`/hub/${entryId}/artifacts/${kind}/url`,
      { method: "POST" });
    followLink(url);
    note.textContent = `Started the ${kind === "lora" ? "LoRA" : "GGUF"} download with a fresh `
      + `signed link (valid until ${new Date(expiresAt * 1000).toLocaleTimeString()}).`;
  } catch (error) {
    reportError(error, `Downloading the ${kind} bundle`);
  }
}

async function cancelRun(id) {
  const run = state.runs.get(id);
  const tier = tierOf(run);
  const minutes = Math.floor((run.metrics?.billable_seconds || 0) / 60);
  const price = tier?.credits_per_minute || 0;
  const billed = price > 0
    ? `You are billed for the training time used, rounded down to the whole minute: so far `
      + `${minutes} min, ${(minutes * price).toFixed(2)} credits.`
    : "This tier is free: nothing is billed.";
  const confirmed = await confirmAction({
    title: `Cancel run ${run.name}?`,
    body: `Cancellation is not reversible: the run stops and its GPU is released at once, and `
      + `no LoRA or Hub entry is kept. ${billed}`,
    confirm: "Cancel run",
    keep: "Keep training",
  });
  if (!confirmed) return;
  try {
    receiveRun(await api(`/runs/${id}/cancel`, { method: "POST" }));
    refreshAccount();
  } catch (error) {
    reportError(error, "Cancelling");
  }
}

async function deleteRun(id) {
  const run = state.runs.get(id);
  const confirmed = await confirmAction({
    title: `Delete run ${run.name}?`,
    body: "The run record, its metrics and logs are deleted. Its Hub entry, if any, stays.",
    confirm: "Delete run record",
  });
  if (!confirmed) return;
  try {
    await api(`/runs/${id}`, { method: "DELETE" });
    state.runs.delete(id);
    location.hash = "#/runs";
    renderRuns();
  } catch (error) {
    reportError(error, "Deleting the run");
  }
}

// Hub and credits ------------------------------------------------------------------------------------

function renderHub() {
  const list = $("#hub-list");
  $("#hub-empty").hidden = state.hub.length > 0;
  list.replaceChildren(...state.hub.map((entry) => {
    const note = h("p", { class: "muted link-note", role: "status" });
    return h("li", { class: "card hub-entry", dataset: { entryId: entry.id } },
      h("h2", {}, entry.name),
      h("p", { class: "muted" }, `${entry.base_model} · ${formatTime(entry.created_at)}`),
      h("ul", { class: "artifacts" }, Object.entries(entry.artifacts).map(([kind, info]) => h("li", {},
        h("span", {}, `${kind === "lora" ? "LoRA adapter" : "GGUF bundle"}: ${info.filename} · `
          + `${formatBytes(info.size)}`),
        h("button", { type: "button", onclick: () => downloadArtifact(entry.id, kind, note) },
          `Download ${kind === "lora" ? "LoRA" : "GGUF"}`)))),
      note,
      h("button", { type: "button", class: "danger-outline", onclick: () => deleteEntry(entry) },
        "Delete entry"));
  }));
}

async function deleteEntry(entry) {
  const confirmed = await confirmAction({
    title: `Delete ${entry.name} from the Hub?`,
    body: "Its LoRA and GGUF files are deleted for good. The run record stays.",
    confirm: "Delete entry",
  });
  if (!confirmed) return;
  try {
    await api(`/hub/${entry.id}`, { method: "DELETE" });
    state.hub = state.hub.filter((other) => other.id !== entry.id);
    renderHub();
  } catch (error) {
    reportError(error, "Deleting the Hub entry");
  }
}

function renderBalance() {
  const balance = $("#balance");
  balance.hidden = !state.credits;
  if (state.credits) balance.textContent = `${formatCredits(state.credits.balance)} credits`;
}

function renderCredits() {
  if (!state.credits) return;
  $("#credits-balance").textContent = formatCredits(state.credits.balance);
  $("#ledger-rows").replaceChildren(...[...state.credits.ledger].reverse().map((row) => h("tr", {},
    h("td", {}, formatTime(row.created_at)), h("td", {}, row.kind),
    h("td", { class: row.amount < 0 ? "negative" : "positive" },
      `${row.amount > 0 ? "+" : ""}${formatCredits(row.amount)}`),
    h("td", {}, row.run_id ? state.runs.get(row.run_id)?.name || row.run_id : "–"),
    h("td", {}, row.note || ""))));
}

// Signing in ---------------------------------------------------------------------------------------

session.onUnauthorized = (error) => {
  stream.stop();
  session.token = null;
  $("#signin-reason").textContent = `The server did not accept the token (${error.message}). `
    + "It may have been revoked: paste a valid one.";
  $("#signin-reason").hidden = false;
  hideBanner();
  $("#connection").hidden = true;
  $("#balance").hidden = true;
  show("signin");
};

$("#signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  session.token = $("#signin-token").value.trim();
  $("#signin-token").value = "";
  start();
});

/** Open the event stream; its ``ready`` event (the cursor is fixed) loads the lists. */
function start() {
  $("#signin-reason").hidden = true;
  state.loaded = false;
  state.backlog = [];
  stream.start();
}

// A link printed by `tunery serve` carries the token in the fragment (never sent to servers).
const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
if (fragment.get("token")) {
  session.token = fragment.get("token");
  history.replaceState(null, "", `${location.pathname}#/runs`);
}
if (session.token) start();
else render();
