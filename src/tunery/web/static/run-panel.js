// The Run panel: one run's live numbers, curves, samples beside the base model's answers,
// downloads and exports, tags and note, actions (Finish now, Cancel, Rerun), configuration
// and logs. The server computes what is shown (epoch, credits, refund note, log lines, the
// kept step); the panel only lays it out.

import { api, saveBlob } from "./api.js";
import { chatBox } from "./chat.js";
import { confirmAction, copyButton, fill, h, reportError } from "./dom.js";
import { rerun } from "./form.js";
import { formatCredits, formatDuration, formatEffectiveBatch, plural } from "./format.js";
import { PHASE_NAMES, SOURCE_WORDS } from "./estimate.js";
import { downloadArtifact } from "./hub.js";
import { LossChart } from "./loss-chart.js";
import { sampleCards } from "./samples.js";
import { forgetRun, receiveRun, state } from "./state.js";
import {
  canCancel, canFinish, canPause, canResume, isTerminal, outcome, phaseDescription, showsError,
  statusLabel,
} from "./vocabulary.js";

const missing = (value) => value === null || value === undefined;
const EXPORTS = [["csv", "Metrics (CSV)", "text/csv"], ["jsonl", "Metrics (JSONL)",
  "application/x-ndjson"]];

export class RunPanel {
  constructor(run) {
    this.runId = run.id;
    this.logLines = null;
    this.chart = new LossChart(run.id, { preference: run.config?.method?.type === "dpo" });
    this.element = h("div", { class: "panel", id: `panel-${run.id}`, role: "region",
      "aria-label": `Run ${run.name}` });
    this.build(run);
  }

  build(run) {
    const stat = (name, label) => h("div", { class: "stat" },
      h("span", { class: "stat-label", dataset: { statLabel: name } }, label),
      h("span", { class: "stat-value", dataset: { stat: name } }, "–"));
    this.progress = h("div", {
      class: "progress", role: "progressbar", "aria-label": "Step budget",
      "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0",
    }, h("div", { class: "progress-fill" }));
    this.phase = h("p", { class: "phase", "aria-live": "polite" });
    this.outcome = h("p", { class: "outcome", dataset: { note: "outcome" }, hidden: true });
    this.error = h("div", { class: "run-error", role: "alert", hidden: true });
    this.samples = h("section", { class: "samples", hidden: true });
    this.downloads = h("div", { class: "downloads" });
    this.chatSlot = h("div");
    this.linkNote = h("p", { class: "muted link-note", role: "status" });
    this.actions = h("div", { class: "panel-actions" });
    this.annotations = h("section", { class: "annotations", "aria-label": "Tags and note" });
    this.estimateCheck = h("section", { class: "estimate-check", hidden: true,
      "aria-label": "Estimated and actual" });
    this.element.append(
      h("p", { class: "run-id muted" }, "Run id ", h("code", {}, run.id), " ",
        copyButton(run.id, "the run id")),
      h("div", { class: "stats" },
        stat("epoch", "Epoch"), stat("loss", "Loss"), stat("eta", "Time left"),
        stat("duration", "Duration"), stat("credits", "Credits"), stat("step", "Step"),
        stat("eval", "Eval loss")),
      this.progress, this.phase, this.outcome, this.error, this.annotations,
      h("h3", {}, "Curves"), this.chart.element,
      this.samples, this.estimateCheck, this.downloads, this.linkNote, this.chatSlot,
      this.actions,
      configView(run), this.logView());
  }

  logView() {
    this.logBox = h("pre", { class: "logs", tabindex: "0", "aria-label": "Run log" });
    const logs = h("details", { class: "log-details" }, h("summary", {}, "Logs"), this.logBox);
    // The history is fetched when first opened; live lines are appended from then on.
    logs.addEventListener("toggle", () => {
      if (logs.open && this.logLines === null) this.loadLogs();
    });
    return logs;
  }

  load() {
    this.chart.load();
  }

  update(run) {
    if (!run) return;
    this.updateStats(run);
    this.updatePhase(run);
    this.updateOutcome(run);
    this.updateError(run);
    this.updateAnnotations(run);
    this.updateEstimateCheck(run);
    this.updateSamples(run);
    this.updateDownloads(run);
    this.updateActions(run);
    this.chart.markKept(run.kept?.step);
    this.updateChat(run);
  }

  /** The header's numbers; once a step was kept (early stop, divergence), that step's. */
  updateStats(run) {
    const metrics = run.metrics || {};
    const kept = run.kept;
    const set = (name, text, label = null) => {
      this.element.querySelector(`[data-stat="${name}"]`).textContent = text;
      if (label) this.element.querySelector(`[data-stat-label="${name}"]`).textContent = label;
    };
    set("epoch", metrics.current_epoch ? `${metrics.current_epoch}/${metrics.epochs}` : "–");
    set("eta", timeLeft(run));
    set("duration", formatDuration(metrics.duration_seconds));
    set("credits", formatCredits(metrics.credits));
    const evaluation = run.evaluation;
    if (kept) {
      set("loss", missing(kept.loss) ? "–" : kept.loss.toFixed(4), "Loss (kept step)");
      set("step", `${kept.step} of ${metrics.step}`, "Step kept");
      const evalLoss = kept.eval_loss ?? null;
      set("eval", missing(evalLoss) ? "–" : evalLoss.toFixed(4), "Eval loss (kept step)");
    } else {
      set("loss", missing(metrics.loss) ? "–" : metrics.loss.toFixed(4), "Loss");
      set("step", metrics.total_steps ? `${metrics.step}/${metrics.total_steps}`
        : String(metrics.step ?? 0), "Step");
      set("eval", missing(evaluation?.eval_loss) ? "–" : evaluation.eval_loss.toFixed(4),
        "Eval loss");
    }
    // `progress` is a percentage of the step budget.
    const percent = Math.round(outcome(run.status) === "succeeded" ? 100 : metrics.progress || 0);
    this.progress.setAttribute("aria-valuenow", String(percent));
    this.progress.setAttribute("aria-valuetext", `${percent}% of the step budget`);
    this.progress.firstChild.style.width = `${percent}%`;
  }

  updatePhase(run) {
    const text = whereItStands(run);
    // The line is a polite live region: rewriting the same text would be read out again.
    if (this.phase.textContent !== text) this.phase.textContent = text;
  }

  updateOutcome(run) {
    const text = outcomeNote(run);
    this.outcome.hidden = !text;
    if (this.outcome.textContent !== text) this.outcome.textContent = text;
  }

  updateError(run) {
    const error = showsError(run.status) ? run.error : null;
    this.error.hidden = !error;
    const note = isTerminal(run.status)
      ? run.refund_note
      : "The pipeline retries by itself and resumes from its last checkpoint.";
    const key = error ? JSON.stringify([run.status, error, note]) : "";
    if (!error || this.errorKey === key) return;
    this.errorKey = key;
    fill(this.error,
      h("p", {}, h("strong", {}, `${statusLabel(run.status)}: `), error.message),
      error.hint ? h("p", { class: "hint" }, `Hint: ${error.hint}`) : null,
      note ? h("p", { class: "muted" }, note) : null);
  }

  /** Tags and the note, shown and edited in place (PATCH /runs/{id}). */
  updateAnnotations(run) {
    const key = JSON.stringify([run.tags, run.note]);
    // Redrawing while the user types would lose what they typed.
    if (this.annotationsKey === key || this.annotations.contains(document.activeElement)) return;
    this.annotationsKey = key;
    const tags = h("input", { id: `tags-${run.id}`, value: (run.tags || []).join(", "),
      spellcheck: "false", placeholder: "baseline, lr-sweep" });
    const note = h("textarea", { id: `note-${run.id}`, rows: "2",
      placeholder: "What this run tried, and what came of it" });
    note.value = run.note || "";
    const problem = h("p", { class: "field-error", role: "alert", hidden: true });
    const saved = h("span", { class: "muted", role: "status" });
    const save = async (event) => {
      event.preventDefault();
      problem.hidden = true;
      try {
        receiveRun(await api(`/runs/${run.id}`, { method: "PATCH", json: {
          tags: tags.value.split(",").map((tag) => tag.trim()).filter(Boolean),
          note: note.value,
        } }));
        saved.textContent = "Saved.";
      } catch (error) {
        problem.textContent = error.problems?.length
          ? error.problems.map((each) => each.message).join("; ") : error.message;
        problem.hidden = false;
      }
    };
    fill(this.annotations,
      h("div", { class: "tag-list" }, (run.tags || []).map((tag) => h("span", { class: "tag" }, tag))),
      run.note ? h("p", { class: "note-text" }, run.note) : null,
      h("details", {}, h("summary", {}, "Edit tags and note"),
        h("form", { class: "stack", onsubmit: save },
          h("label", { for: tags.id }, "Tags (separated by commas)"), tags,
          h("label", { for: note.id }, "Note"), note, problem,
          h("div", { class: "actions" },
            h("button", { type: "submit", class: "primary" }, "Save tags and note"), saved))));
  }

  /** A completed run's estimate beside what it took: billed time, credits, startup, parts. */
  updateEstimateCheck(run) {
    const check = run.estimate_check;
    this.estimateCheck.hidden = !check;
    const key = JSON.stringify(check);
    if (!check || this.checkKey === key) return;
    this.checkKey = key;
    const ratio = (value) => (missing(value) ? "–" : `${value.toFixed(2)}×`);
    const row = (label, estimated, actual, format, name) => h("tr", { dataset: { check: name } },
      h("th", { scope: "row" }, label), h("td", {}, missing(estimated) ? "–" : format(estimated)),
      h("td", {}, missing(actual) ? "–" : format(actual)),
      h("td", {}, missing(estimated) || missing(actual) || !estimated ? "–"
        : ratio(actual / estimated)));
    fill(this.estimateCheck,
      h("h3", {}, "Estimated and actual"),
      h("p", { class: "muted" }, `The estimate was ${SOURCE_WORDS[check.source] ?? "unknown"}.`),
      h("div", { class: "table-wrap" }, h("table", { class: "ledger" },
        h("thead", {}, h("tr", {}, ["", "Estimated", "Actual", "Actual ÷ estimated"]
          .map((name) => h("th", { scope: "col" }, name)))),
        h("tbody", {},
          row("Billed time", check.estimated_seconds, check.actual_seconds, formatDuration,
            "seconds"),
          row("Credits", check.estimated_credits, check.actual_credits, formatCredits, "credits"),
          row("To the first step (not billed)", check.estimated_startup_seconds,
            check.actual_startup_seconds, formatDuration, "startup"),
          Object.entries(check.phases).map(([phase, times]) => row(
            `· ${PHASE_NAMES[phase] ?? phase}`, times.estimated, times.actual, formatDuration,
            phase))))));
  }

  updateSamples(run) {
    const samples = run.samples || [];
    this.samples.hidden = samples.length === 0;
    const key = JSON.stringify(samples);
    if (!samples.length || this.samplesKey === key) return;
    this.samplesKey = key;
    fill(this.samples, h("h3", {}, "Inference samples: tuned, base model, reference"),
      sampleCards(samples));
  }

  updateDownloads(run) {
    const artifacts = run.hub_entry_id ? (run.artifacts || {}) : {};
    const wanted = ["lora", "gguf"].filter((kind) => artifacts[kind]);
    // The Hub entry may have been deleted since (here or elsewhere: the stream says so):
    // the buttons say so instead of failing.
    const gone = Boolean(run.hub_entry_deleted);
    const key = `${wanted.join()}-${gone}-${isTerminal(run.status)}`;
    if (this.downloadsKey === key) return;
    this.downloadsKey = key;
    fill(this.downloads,
      wanted.map((kind) => h("button", {
        type: "button", class: "primary", dataset: { artifact: kind }, disabled: gone,
        onclick: () => downloadArtifact(run.hub_entry_id, kind, this.linkNote),
      }, `${kind === "lora" ? "Download LoRA" : "Download GGUF"}${gone ? " (deleted from the Hub)" : ""}`)),
      EXPORTS.map(([format, label, type]) => h("button", { type: "button",
        dataset: { export: format }, onclick: () => this.downloadMetrics(format, type) },
      `Download ${label}`)),
      h("button", { type: "button", onclick: () => this.downloadLogs() }, "Download logs"),
      gone ? h("p", { class: "muted" }, "This run's Hub entry was deleted: its bundles are "
        + "gone. Rerun it to train them again.") : null,
      outcome(run.status) === "succeeded" && run.hub_entry_id && !artifacts.gguf
        && run.config.export.gguf
        ? h("p", { class: "muted" }, "The GGUF export failed; the LoRA was saved.") : null);
  }

  /** The chat box of a run whose GGUF is served; once its Hub entry is gone, why not. */
  updateChat(run) {
    const servable = Boolean(run.openai_model);
    const gone = Boolean(run.hub_entry_deleted);
    const key = `${servable}-${gone}`;
    if (this.chatKey === key) return;
    this.chatKey = key;
    if (servable) fill(this.chatSlot, chatBox(run));
    else if (gone && run.artifacts?.gguf) {
      fill(this.chatSlot, h("p", { class: "muted", dataset: { chat: "gone" } },
        "Chat is off: this run's Hub entry was deleted, and its GGUF with it."));
    } else fill(this.chatSlot);
  }

  updateActions(run) {
    const terminal = isTerminal(run.status);
    const finishable = canFinish(run.status) && !run.finish_requested;
    const cancellable = canCancel(run.status);
    const pausable = canPause(run.status) && !run.pause_requested;
    const resumable = canResume(run.status);
    const key = [terminal, run.cancel_requested, finishable, cancellable, pausable, resumable]
      .join("-");
    // Redrawing the button under the pointer or the keyboard would lose the click or focus.
    if (this.actionsKey === key) return;
    this.actionsKey = key;
    const button = (label, className, action) =>
      h("button", { type: "button", class: className, onclick: action }, label);
    fill(this.actions,
      finishable ? button("Finish now", "primary", () => finishRun(run.id)) : null,
      pausable ? button("Pause", "", () => pauseOrResume(run.id, "pause")) : null,
      resumable ? button("Resume", "primary", () => pauseOrResume(run.id, "resume")) : null,
      cancellable ? button("Cancel run", "danger", () => cancelRun(run.id)) : null,
      terminal ? button("Rerun with changes", "", () => rerun(run.id)) : null,
      terminal ? button("Delete run record", "danger-outline", () => deleteRun(run.id)) : null);
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

  /** Append a line the server wrote for an event (`line`); ignored until the logs loaded. */
  addLogLine(line) {
    if (this.logLines === null) return;
    this.logLines.push(line);
    this.logBox.textContent = this.logLines.join("\n");
    this.logBox.scrollTop = this.logBox.scrollHeight;
  }

  async downloadLogs() {
    try {
      const text = await api(`/runs/${this.runId}/logs`, { text: true });
      saveBlob(new Blob([text], { type: "text/plain" }), `${this.runName()}-logs.txt`);
    } catch (error) {
      reportError(error, "Downloading the logs");
    }
  }

  async downloadMetrics(format, type) {
    try {
      const text = await api(`/runs/${this.runId}/metrics?format=${format}`, { text: true });
      saveBlob(new Blob([text], { type }), `${this.runName()}-metrics.${format}`);
    } catch (error) {
      reportError(error, "Downloading the metrics");
    }
  }

  runName() {
    return state.runs.get(this.runId)?.name || this.runId;
  }

  destroy() {
    this.chart.destroy();
  }
}

function timeLeft(run) {
  const eta = run.metrics?.eta_seconds;
  if (outcome(run.status) === "succeeded") return "done";
  if (isTerminal(run.status)) return "–";
  if (!missing(eta)) return formatDuration(eta);
  return canFinish(run.status) ? "estimating…" : "–";
}

/**
 * "Training: running gradient steps · attempt 2", why a waiting run waits (credits, or a
 * cluster with no free node), or what a cancelled run was billed.
 */
function whereItStands(run) {
  if (outcome(run.status) === "cancelled") {
    const minutes = Math.floor((run.metrics?.billable_seconds || 0) / 60);
    return `Cancelled: billed ${plural(minutes, "whole minute")} of training, `
      + `${formatCredits(run.metrics?.credits)} credits. No LoRA or Hub entry was kept.`;
  }
  let where = `${statusLabel(run.status)}: ${phaseDescription(run.phase)}`;
  if (run.queue_position) where += ` (#${run.queue_position} in the queue)`;
  // The reason comes with the run object and the snapshots while the run waits; a status
  // event clears it.
  if (run.waiting_reason) where += ` · ${run.waiting_reason}`;
  if (run.attempt > 1) where += ` · attempt ${run.attempt}`;
  return where;
}

/** Why training ended before its budget, and what was kept; "" when it did not. */
function outcomeNote(run) {
  const evaluation = run.evaluation || {};
  if (run.finish_requested && !isTerminal(run.status)) {
    return "Finishing: training stops after this step; the adapter is then saved, exported "
      + "and sampled.";
  }
  if (run.status === "paused") {
    return "Paused: its checkpoint is saved, its GPU released and nothing is billed; Resume "
      + "queues it again and it continues from that checkpoint.";
  }
  if (run.pause_requested && !isTerminal(run.status)) {
    return "Pausing: training saves a checkpoint after this step and stops; nothing is billed "
      + "while it is paused.";
  }
  if (run.kept && outcome(run.status) === "failed") {
    return `The loss diverged: the adapter of step ${run.kept.step}, the best before the `
      + "loss rose, was kept and can be downloaded.";
  }
  if (outcome(run.status) !== "succeeded") return "";
  if (evaluation.stopped_early) {
    return `Stopped early at step ${evaluation.stopped_at_step}: the eval loss stopped `
      + `improving. The best evaluation's adapter (step ${evaluation.best_step}, eval loss `
      + `${evaluation.best_eval_loss?.toFixed(4)}) was kept and exported; only the time used `
      + "was billed.";
  }
  if (evaluation.finished_early) {
    return `Finished now at step ${run.metrics?.step}: the adapter trained so far was saved `
      + "and exported.";
  }
  return "";
}

/** The recipe the run was submitted with, in three groups. */
function configView(run) {
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
        ["Effective batch", effectiveBatch(run)],
        ["GGUF export", config.export.gguf ? config.export.quantization : "off"],
        ["Datasets", names.join(", ")]])),
      h("section", {}, h("h4", {}, "Training"), list(Object.entries(config.training))),
      h("section", {}, h("h4", {}, "LoRA"), list([
        ["rank", config.lora.rank], ["alpha", config.lora.alpha], ["dropout", config.lora.dropout],
        ["target modules", Array.isArray(targets) ? targets.join(", ") : targets],
        ["4-bit base", config.lora.quantize_base ?? "off"]]))));
}

/** What one optimizer step of the run trains, on the devices its tier gave it. */
function effectiveBatch(run) {
  const tier = state.tiers.find((entry) => entry.id === run.tier);
  const devices = run.estimate?.devices ?? tier?.devices ?? 1;
  const training = run.config.training;
  return formatEffectiveBatch(
    training.batch_size, devices, training.gradient_accumulation_steps, tier?.gpus);
}
const tierPrice = (run) => state.tiers.find((tier) => tier.id === run.tier)?.credits_per_minute || 0;

async function cancelRun(id) {
  const run = state.runs.get(id);
  const minutes = Math.floor((run.metrics?.billable_seconds || 0) / 60);
  const billed = tierPrice(run) > 0
    ? `You are billed for the training time used, rounded down to the whole minute: so far `
      + `${minutes} min, ${formatCredits(run.metrics?.cancel_credits)} credits.`
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
  } catch (error) {
    reportError(error, "Cancelling");
  }
}

async function finishRun(id) {
  const run = state.runs.get(id);
  const billed = tierPrice(run) > 0
    ? `It is billed as a completed run, for its exact training time: so far `
      + `${formatDuration(run.metrics?.billable_seconds)}, ${formatCredits(run.metrics?.credits)} `
      + `credits, plus the minutes saving, exporting and sampling take at `
      + `${tierPrice(run)} credits/min.`
    : "This tier is free: nothing is billed.";
  const confirmed = await confirmAction({
    title: `Finish run ${run.name} now?`,
    body: "Training stops after the current step; the adapter learned so far is saved, "
      + `exported and sampled, and the run completes. ${billed}`,
    confirm: "Finish now",
    keep: "Keep training",
    tone: "primary",
  });
  if (!confirmed) return;
  try {
    receiveRun(await api(`/runs/${id}/finish`, { method: "POST" }));
  } catch (error) {
    reportError(error, "Finishing the run");
  }
}

/** Pause (reversible, so not confirmed) or resume a run. */
async function pauseOrResume(id, action) {
  try {
    receiveRun(await api(`/runs/${id}/${action}`, { method: "POST" }));
  } catch (error) {
    reportError(error, action === "pause" ? "Pausing the run" : "Resuming the run");
  }
}

async function deleteRun(id) {
  const confirmed = await confirmAction({
    title: `Delete run ${state.runs.get(id).name}?`,
    body: "The run record, its metrics and logs are deleted. Its Hub entry, if any, stays.",
    confirm: "Delete run record",
  });
  if (!confirmed) return;
  try {
    await api(`/runs/${id}`, { method: "DELETE" });
    location.hash = "#/runs";
    forgetRun(id);
  } catch (error) {
    reportError(error, "Deleting the run");
  }
}
