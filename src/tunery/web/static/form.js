// The New run form: models, datasets (with upload), tiers, the live estimate, submitting a
// run, and the form prefilled from an earlier run (Rerun with changes).

import { ApiError, api } from "./api.js";
import { $, fill, h, reportError } from "./dom.js";
import { setUpEstimate } from "./estimate.js";
import { formatBytes, formatEffectiveBatch } from "./format.js";
import { WARNINGS_CODE, clearProblems, showProblems, showWarnings } from "./problems.js";
import { receiveRun, state } from "./state.js";
import { automaticValidation } from "./vocabulary.js";

// One key per composed run: pressing play again after a lost answer returns the same run.
let submissionKey = null;
// Asks for a new estimate of the form as it is now (set up once).
let reestimate = () => {};

/** Attach the form's listeners; called once at start. */
export function setUpForm() {
  $("#f-model").addEventListener("change", chooseModel);
  $("#f-method").addEventListener("change", describeMethod);
  $("#f-init-from").addEventListener("change", chooseStart);
  $("#f-upload").addEventListener("change", (event) => upload(event.target));
  $("#run-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  $("#run-form").addEventListener("input", showEffectiveBatch);
  $("#run-form").addEventListener("change", showEffectiveBatch);
  reestimate = setUpEstimate(payload);
}

/** Fill the lists from the loaded state, keeping what the user already chose. */
export function renderForm() {
  $("#f-val-rule").textContent = automaticValidation();
  const select = $("#f-model");
  const chosen = select.value;
  fill(select,
    ...state.models.map((model) => h("option", { value: model.id }, modelLabel(model))),
    h("option", { value: "__custom__" }, "Custom model (Hugging Face id, URL or path)…"),
  );
  if (chosen) select.value = chosen;
  describeModel();
  renderDatasets();
  renderStarts();
  renderTiers();
  if (!$("#f-name").value) {
    const stamp = new Date().toISOString().slice(0, 16).replace(/[-:]/g, "").replace("T", "-");
    $("#f-name").value = `run-${stamp}`;
  }
  reestimate();
}

function modelLabel(model) {
  const millions = (model.parameters / 1e6).toFixed(model.parameters < 1e7 ? 1 : 0);
  return `${model.id} · ${model.family} · ${millions}M · ${model.license}`;
}

const selectedModel = () => state.models.find((entry) => entry.id === $("#f-model").value);

function describeModel() {
  const custom = $("#f-model").value === "__custom__";
  $("#f-model-custom").hidden = !custom;
  const model = selectedModel();
  $("#f-model-note").textContent = custom
    ? "Custom model: trained as given, but a failed run on a custom model is not refunded."
    : model
      ? `Verified: ${model.context_length.toLocaleString()} tokens of context, ${model.chat_template} `
        + "chat template, GGUF export tested; a failed run is refunded unless the account runs "
        + "out of credits."
      : "";
}

const targetsText = (targets) => (Array.isArray(targets) ? targets.join(", ") : targets);

/**
 * A catalog model brings its own LoRA defaults; the note under the LoRA settings says what
 * they changed, so a choice of model never rewrites a setting silently.
 */
function chooseModel() {
  describeModel();
  const model = selectedModel();
  const defaults = model?.lora_defaults;
  const note = $("#f-lora-note");
  if (!defaults) {
    note.textContent = "";
    return;
  }
  const fields = [["#f-rank", "rank", defaults.rank], ["#f-alpha", "alpha", defaults.alpha],
    ["#f-targets", "target modules", targetsText(defaults.target_modules)]];
  const changed = [];
  for (const [selector, label, value] of fields) {
    const before = $(selector).value;
    if (String(before) !== String(value)) changed.push(`${label} ${before} → ${value}`);
    $(selector).value = value;
  }
  note.textContent = changed.length
    ? `${model.id}'s LoRA defaults applied: ${changed.join("; ")}. Change them here if you `
      + "want others."
    : "";
}

function describeMethod() {
  $("#f-beta-field").hidden = $("#f-method").value !== "dpo";
}

/** Completed runs can be started from (`init_from`), their adapter continued. */
export function renderStarts() {
  const select = $("#f-init-from");
  const chosen = select.value;
  const completed = [...state.runs.values()].filter((run) => run.status === "completed");
  // Rebuilding the options would drop the keyboard focus: only when something changed.
  const drawn = completed.map((run) => run.id).join(" ");
  if (select.dataset.drawn === drawn && select.options.length) return;
  select.dataset.drawn = drawn;
  select.replaceChildren(h("option", { value: "" }, "a fresh adapter"),
    ...completed.map((run) => h("option", { value: run.id },
      `${run.name} · ${run.config.method?.type ?? "sft"} · ${run.config.base_model} · ${run.id}`)));
  if (chosen && !completed.some((run) => run.id === chosen)) {
    select.append(h("option", { value: chosen }, chosen));
  }
  select.value = chosen;
}

/** Starting from a run continues its adapter: on its base model, with its LoRA shape. */
function chooseStart() {
  const run = state.runs.get($("#f-init-from").value);
  if (!run) return;
  const known = state.models.some((model) => model.id === run.config.base_model);
  $("#f-model").value = known ? run.config.base_model : "__custom__";
  $("#f-model-custom").value = known ? "" : run.config.base_model;
  describeModel();
  const lora = run.config.lora;
  $("#f-rank").value = lora.rank;
  $("#f-alpha").value = lora.alpha;
  $("#f-targets").value = Array.isArray(lora.target_modules)
    ? lora.target_modules.join(", ") : lora.target_modules;
  reestimate();
}

function kindLabel(dataset) {
  return dataset.kind === "preference" ? "preference pairs (dpo)" : "chat rows (sft)";
}

function renderDatasets(select = []) {
  const checked = new Set([...document.querySelectorAll("#f-datasets input:checked")]
    .map((box) => box.value).concat(select));
  const validation = $("#f-val-dataset");
  const held = validation.value;
  fill(validation, h("option", { value: "" }, "none: hold out a split"),
    ...state.datasets.map((dataset) => h("option", { value: dataset.id }, dataset.name)));
  validation.value = state.datasets.some((dataset) => dataset.id === held) ? held : "";
  const list = $("#f-datasets");
  if (!state.datasets.length) {
    fill(list, h("p", { class: "muted" }, "No datasets yet: upload one below."));
    return;
  }
  fill(list, ...state.datasets.map((dataset) => h("div", { class: "field check" },
    h("input", {
      type: "checkbox", id: `ds-${dataset.id}`, value: dataset.id,
      checked: checked.has(dataset.id),
    }),
    h("label", { for: `ds-${dataset.id}` },
      `${dataset.name} `, h("span", { class: "muted" },
        `${dataset.rows.toLocaleString()} rows · ${dataset.format} · ${kindLabel(dataset)} · `
        + formatBytes(dataset.bytes))),
  )));
}

export function renderTiers() {
  const list = $("#f-tiers");
  // Rebuilding the radios would drop the keyboard focus: only when something changed.
  const drawn = JSON.stringify(state.tiers);
  if (list.dataset.drawn === drawn) return;
  list.dataset.drawn = drawn;
  const chosen = list.querySelector("input:checked")?.value;
  const usable = state.tiers.filter((tier) => tier.nodes_total > 0);
  const selected = chosen || usable[0]?.id || state.tiers[0]?.id;
  fill(list, ...state.tiers.map((tier) => h("div", { class: "field check tier" },
    h("input", {
      type: "radio", name: "tier", id: `tier-${tier.id}`, value: tier.id,
      checked: tier.id === selected,
    }),
    h("label", { for: `tier-${tier.id}` },
      h("strong", {}, tier.name), " ",
      h("span", { class: "muted" },
        `${tier.credits_per_minute > 0 ? `${tier.credits_per_minute} credits/min` : "free"} · `
        + (tier.devices > 1 ? `${tier.devices} ${tier.gpus ? "GPUs" : "processes"} · ` : "")
        + (tier.gpu_memory_gib ? `${tier.gpu_memory_gib} GiB · ` : "")
        + `${tier.nodes_free} of ${tier.nodes_total} nodes free`)),
  )));
  showEffectiveBatch();
}

/** Batch size is per device: say what one optimizer step trains on the chosen tier. */
function showEffectiveBatch() {
  const tier = state.tiers.find((entry) => entry.id === $("#f-tiers input:checked")?.value);
  const batch = Number($("#f-batch").value);
  const accumulation = Number($("#f-accum").value);
  const valid = Number.isInteger(batch) && batch >= 1 && Number.isInteger(accumulation)
    && accumulation >= 1;
  $("#f-effective-batch").textContent = valid
    ? `Effective batch: ${formatEffectiveBatch(batch, tier?.devices ?? 1, accumulation, tier?.gpus)}`
    : "";
}

/** Upload the chosen file; the server checks every row and names the bad ones. */
async function upload(input) {
  const file = input.files[0];
  if (!file) return;
  const result = $("#upload-result");
  fill(result, h("span", { class: "muted" }, `Checking ${file.name}…`));
  const form = new FormData();
  form.append("file", file);
  try {
    const dataset = await api("/datasets", { method: "POST", form });
    state.datasets.unshift(dataset);
    renderDatasets([dataset.id]);
    fill(result, h("span", { class: "ok-text" },
      `✓ ${dataset.name}: ${dataset.rows.toLocaleString()} rows in ${dataset.format} format, `
      + `${kindLabel(dataset)}.`));
  } catch (error) {
    if (error instanceof ApiError) fill(result, uploadProblems(file, error));
    else {
      reportError(error, "Upload");
      fill(result);
    }
  } finally {
    input.value = "";
  }
}

function uploadProblems(file, error) {
  const problems = error.problems.length ? error.problems : [{ message: error.message }];
  return h("div", { class: "error-text", role: "alert" },
    h("p", {}, `${file.name} cannot be used:`),
    h("ul", {}, problems.map((problem) => h("li", {},
      problem.line ? `${problem.unit || "line"} ${problem.line}: ${problem.message}` : problem.message))),
    error.hint ? h("p", {}, error.hint) : null);
}

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
      eval_every_steps: numeric("#f-eval-every"),
    },
    validation: {
      split: numeric("#f-val-split", { optional: true }),
      dataset_ids: $("#f-val-dataset").value ? [$("#f-val-dataset").value] : [],
    },
    early_stopping: { patience: numeric("#f-patience"), min_delta: numeric("#f-min-delta") },
    lora: {
      rank: numeric("#f-rank"),
      alpha: numeric("#f-alpha"),
      dropout: numeric("#f-dropout"),
      target_modules: targets === "all-linear" || targets === ""
        ? "all-linear" : targets.split(",").map((name) => name.trim()).filter(Boolean),
      quantize_base: $("#f-quantize").value,
    },
    method: methodPayload(),
    init_from: $("#f-init-from").value || null,
    gpu_tier: $("#f-tiers input:checked")?.value ?? null,
    tags: $("#f-tags").value.split(",").map((tag) => tag.trim()).filter(Boolean),
    note: $("#f-note").value,
    export: { gguf: $("#f-gguf").checked, quantization: "Q4_K_M" },
    attestations: { dataset_rights: $("#f-rights").checked, model_license: $("#f-license").checked },
  };
}

function methodPayload() {
  const type = $("#f-method").value;
  const beta = numeric("#f-beta", { optional: true });
  return type === "dpo" && beta !== null ? { type, beta } : { type };
}

/**
 * Submit the form; `acceptWarnings` after the user read the server's warnings about
 * settings far outside what usually works and chose to start anyway.
 */
async function submit({ acceptWarnings = false } = {}) {
  clearProblems();
  const button = $("#f-submit");
  button.disabled = true;
  try {
    submissionKey ??= newKey();
    const run = receiveRun(await api("/runs", {
      method: "POST", json: { ...payload(), accept_warnings: acceptWarnings },
      headers: { "Idempotency-Key": submissionKey },
    }));
    submissionKey = null;
    $("#f-name").value = "";
    $("#f-note").value = "";
    renderForm();
    location.hash = `#/runs/${run.id}`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 422) {
      submissionKey = null;  // nothing was created; the corrected form is a new run
      if (error.code === WARNINGS_CODE) {
        showWarnings(error, () => submit({ acceptWarnings: true }));
      } else showProblems(error);
    } else reportError(error, "Submitting the run");
  } finally {
    button.disabled = false;
  }
}

/**
 * Open the New run form filled in with run `id`'s recipe (GET /runs/{id}/recipe), named
 * anew; the attestations are left for the user to give again.
 */
export async function rerun(id) {
  try {
    const recipe = await api(`/runs/${id}/recipe`);
    location.hash = "#/new";
    fillForm(recipe);
  } catch (error) {
    reportError(error, "Opening the run as a new one");
  }
}

function fillForm(recipe) {
  const set = (selector, value) => {
    $(selector).value = value === null || value === undefined ? "" : String(value);
  };
  const known = state.models.some((model) => model.id === recipe.base_model);
  set("#f-model", known ? recipe.base_model : "__custom__");
  set("#f-model-custom", known ? "" : recipe.base_model);
  describeModel();
  set("#f-name", `${recipe.name}-rerun`.slice(0, 64));
  set("#f-tags", (recipe.tags || []).join(", "));
  set("#f-note", recipe.note);
  for (const box of document.querySelectorAll("#f-datasets input")) {
    box.checked = recipe.dataset_ids.includes(box.value);
  }
  const training = recipe.training;
  const fields = {
    "#f-epochs": training.epochs, "#f-max-steps": training.max_steps,
    "#f-lr": training.learning_rate, "#f-batch": training.batch_size,
    "#f-accum": training.gradient_accumulation_steps, "#f-seq": training.max_seq_length,
    "#f-sched": training.lr_scheduler, "#f-warmup": training.warmup_ratio,
    "#f-wd": training.weight_decay, "#f-seed": training.seed,
    "#f-precision": training.mixed_precision, "#f-eval-every": training.eval_every_steps ?? 0,
    "#f-rank": recipe.lora.rank, "#f-alpha": recipe.lora.alpha, "#f-dropout": recipe.lora.dropout,
    "#f-val-split": recipe.validation?.split, "#f-val-dataset": recipe.validation?.dataset_ids?.[0] ?? "",
    "#f-patience": recipe.early_stopping?.patience ?? 0,
    "#f-min-delta": recipe.early_stopping?.min_delta ?? 0,
  };
  for (const [selector, value] of Object.entries(fields)) set(selector, value);
  set("#f-targets", targetsText(recipe.lora.target_modules));
  set("#f-quantize", recipe.lora.quantize_base ?? "none");
  $("#f-lora-note").textContent = "";
  set("#f-method", recipe.method?.type ?? "sft");
  set("#f-beta", recipe.method?.beta);
  describeMethod();
  if (recipe.init_from && ![...$("#f-init-from").options].some((o) => o.value === recipe.init_from)) {
    $("#f-init-from").append(h("option", { value: recipe.init_from }, recipe.init_from));
  }
  set("#f-init-from", recipe.init_from ?? "");
  $("#f-checkpointing").checked = training.gradient_checkpointing;
  $("#f-gguf").checked = recipe.export.gguf;
  const tier = document.getElementById(`tier-${recipe.gpu_tier}`);
  if (tier) tier.checked = true;
  $("#f-rights").checked = false;
  $("#f-license").checked = false;
  submissionKey = null;
  clearProblems();
  reestimate();
}
