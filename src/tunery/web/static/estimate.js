// The New run form's live estimate: examples, steps, time, credits and GPU memory before
// pressing play.
//
// Asked of POST /api/v1/runs/estimate a moment after the user stops editing; an answer to
// an older version of the form is dropped, so the box always describes what is on screen.

import { ApiError, api } from "./api.js";
import { $, fill, h } from "./dom.js";
import { state } from "./state.js";
import { formatCredits, formatDuration, formatEffectiveBatch } from "./format.js";

const DEBOUNCE_MS = 400;
let timer = null;
let asked = 0;

/** Re-estimate whenever the form changes; `payload` reads the form as a submission. */
export function setUpEstimate(payload) {
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(() => estimate(payload()), DEBOUNCE_MS);
  };
  $("#run-form").addEventListener("input", later);
  $("#run-form").addEventListener("change", later);
  return later;
}

async function estimate(body) {
  const box = $("#f-estimate");
  if (!body.base_model || !body.dataset_ids.length) {
    fill(box, h("p", { class: "muted" },
      "The estimate appears once a model and a dataset are chosen."));
    return;
  }
  const ticket = ++asked;
  try {
    const answer = await api("/runs/estimate", { method: "POST", json: body });
    if (ticket === asked) fill(box, ...describe(answer, body));
  } catch (error) {
    if (ticket !== asked) return;
    const problems = error instanceof ApiError ? error.problems : [];
    if (!problems.length) {
      fill(box, h("p", { class: "muted" }, "The estimate is unavailable right now."));
      return;
    }
    fill(box, 
      h("p", { class: "muted" }, "No estimate until these are fixed:"),
      h("ul", { dataset: { estimate: "problems" } },
        ...problems.map((p) => h("li", {}, p.field ? `${p.field}: ${p.message}` : p.message))),
    );
  }
}

/** How a phase of the run reads ("export"), in the order they run. */
export const PHASE_NAMES = {
  training: "training", evaluations: "evaluations", saving: "saving", exporting: "GGUF export",
  sampling: "samples", uploading: "upload",
};

/** What an estimate stands on (`throughput_source`), in words. */
export const SOURCE_WORDS = {
  measured: "measured on earlier runs on this tier",
  calibrated: "from this tier's benchmark of the model's shape",
  prior: "assumed from the tier's compute (nothing measured here yet)",
};

function describe(estimate, body) {
  const time = estimate.seconds === null ? "unknown" : `about ${formatDuration(estimate.seconds)}`;
  const parts = Object.entries(estimate.phases)
    .map(([phase, seconds]) => `${PHASE_NAMES[phase] ?? phase} ${formatDuration(seconds)}`);
  const lines = [
    h("h3", {}, "Estimate"),
    h("p", { dataset: { estimate: "data" } },
      `${estimate.examples.toLocaleString()} training examples of ${estimate.rows.toLocaleString()} rows`
      + ` (${estimate.validation_examples.toLocaleString()} for validation) · `
      + `~${estimate.tokens.toLocaleString()} tokens · ${estimate.total_steps.toLocaleString()} steps`),
    h("p", { dataset: { estimate: "batch" } }, `Effective batch: ${formatEffectiveBatch(
      body.training.batch_size, estimate.devices, body.training.gradient_accumulation_steps,
      state.tiers.find((tier) => tier.id === estimate.tier)?.gpus)}.`),
    h("p", { dataset: { estimate: "time" } }, `Billed time ${time} on ${estimate.tier}`
      + `${parts.length ? ` (${parts.join(", ")})` : ""}, `
      + `${SOURCE_WORDS[estimate.throughput_source] ?? "unknown"}.`),
  ];
  if (estimate.startup_seconds !== null) {
    lines.push(h("p", { dataset: { estimate: "startup" }, class: "muted" },
      `About ${formatDuration(estimate.startup_seconds)} from a free node to the first step `
      + "(loading the model and the data), not billed."));
  }
  if (estimate.credits !== null) {
    lines.push(h("p", {
      dataset: { estimate: "credits" },
      class: estimate.covered ? "" : "warning-text",
    }, `About ${formatCredits(estimate.credits)} credits; your balance of `
      + `${formatCredits(estimate.balance)} ${estimate.covered ? "covers it" : "does not cover it"}.`));
  }
  if (estimate.peak_memory_gib !== null) {
    lines.push(h("p", { dataset: { estimate: "memory" } },
      `Peak GPU memory about ${estimate.peak_memory_gib} GiB of the card's `
      + `${estimate.gpu_memory_gib} GiB.`));
  }
  for (const note of estimate.notes) lines.push(h("p", { class: "muted" }, note));
  if (estimate.warnings.length) {
    lines.push(h("div", { class: "warning-text", dataset: { estimate: "warnings" } },
      h("p", {}, "Far outside what usually works (you will be asked to confirm):"),
      h("ul", {}, estimate.warnings.map((w) => h("li", {}, `${w.field}: ${w.message}`)))));
  }
  return lines;
}
