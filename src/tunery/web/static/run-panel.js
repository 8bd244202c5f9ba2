// The Run panel: one run's live numbers, curves, samples beside the base model's answers,
// downloads, actions (Finish now, Cancel, Rerun), configuration and logs. The server computes what is shown (epoch, credits, refund note,
// log lines); the panel only lays it out.

import { api, saveBlob } from "./api.js";
import { chatBox } from "./chat.js";
import { confirmAction, h, reportError } from "./dom.js";
import { rerun } from "./form.js";
import { formatCredits, formatDuration, formatEffectiveBatch, plural } from "./format.js";
import { downloadArtifact } from "./hub.js";
import { LossChart } from "./loss-chart.js";
import { sampleCards } from "./samples.js";
import { forgetRun, receiveRun, refreshAccount, state } from "./state.js";
import { isTerminal, phaseDescription, statusLabel } from "./vocabulary.js";

const missing = (value) => value === null || value === undefined;

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
      h("span", { class: "stat-label" }, label),
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
    this.element.append(
      h("div", { class: "stats" },
        stat("epoch", "Epoch"), stat("loss", "Loss"), stat("eta", "Time left"),
        stat("duration", "Duration"), stat("credits", "Credits"), stat("step", "Step"),
        stat("eval", "Eval loss")),
      this.progress, this.phase, this.outcome, this.error,
      h("h3", {}, "Curves"), this.chart.element,
      this.samples, this.downloads, this.linkNote, this.chatSlot, this.actions,
      configView(run), this.logView());
  }

  logView() {
    this.logBox = h("pre", { class: "logs", tabindex: "0", "aria-label": "Run log" });
    const logs = h("details", { class: "log-details" },
      h("summary", {}, "Logs"),
      h("div", { class: "actions" },
        h("button", { type: "button", onclick: () => this.downloadLogs() }, "Download logs")),
      this.logBox);
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
    this.updateSamples(run);
    this.updateDownloads(run);
    this.updateActions(run);
    // A completed run with a GGUF can be chatted with (once: the box keeps its conversation).
    if (!this.chatSlot.childElementCount && run.status === "completed" && run.artifacts?.gguf) {
      this.chatSlot.append(chatBox(run));
    }
  }

  updateStats(run) {
    const metrics = run.metrics || {};
    const set = (name, text) => {
      this.element.querySelector(`[data-stat="${name}"]`).textContent = text;
    };
    set("epoch", metrics.current_epoch ? `${metrics.current_epoch}/${metrics.epochs}` : "–");
    set("loss", missing(metrics.loss) ? "–" : metrics.loss.toFixed(4));
    set("eta", timeLeft(run));
    set("duration", formatDuration(metrics.duration_seconds));
    set("credits", formatCredits(metrics.credits));
    set("step", metrics.total_steps ? `${metrics.step}/${metrics.total_steps}` : String(metrics.step ?? 0));
    const evaluation = run.evaluation;
    set("eval", missing(evaluation?.eval_loss) ? "–" : evaluation.eval_loss.toFixed(4));
    // `progress` is a percentage of the step budget.
    const percent = Math.round(run.status === "completed" ? 100 : metrics.progress || 0);
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
    const error = (run.status === "failed" || run.status === "retrying") ? run.error : null;
    this.error.hidden = !error;
    const note = run.status === "failed"
      ? run.refund_note
      : "The pipeline retries by itself and resumes from its last checkpoint.";
    const key = error ? JSON.stringify([run.status, error, note]) : "";
    if (!error || this.errorKey === key) return;
    this.errorKey = key;
    this.error.replaceChildren(
      h("p", {}, h("strong", {}, run.status === "failed" ? "Failed: " : "Retrying: "), error.message),
      error.hint ? h("p", { class: "hint" }, `Hint: ${error.hint}`) : null,
      note ? h("p", { class: "muted" }, note) : null);
  }

  updateSamples(run) {
    const samples = run.samples || [];
    this.samples.hidden = samples.length === 0;
    const key = JSON.stringify(samples);
    if (!samples.length || this.samplesKey === key) return;
    this.samplesKey = key;
    this.samples.replaceChildren(h("h3", {}, "Inference samples: tuned, base model, reference"),
      ...sampleCards(samples));
  }

  updateDownloads(run) {
    const artifacts = run.hub_entry_id ? (run.artifacts || {}) : {};
    const wanted = ["lora", "gguf"].filter((kind) => artifacts[kind]);
    // The Hub entry may have been deleted since: the buttons say so instead of failing.
    const gone = Boolean(run.hub_entry_id) && state.loaded
      && !state.hub.some((entry) => entry.id === run.hub_entry_id);
    const key = `${wanted.join()}-${gone}`;
    if (this.downloadsKey === key) return;
    this.downloadsKey = key;
    this.downloads.replaceChildren(...wanted.map((kind) => h("button", {
      type: "button", class: "primary", dataset: { artifact: kind }, disabled: gone,
      onclick: () => downloadArtifact(run.hub_entry_id, kind, this.linkNote),
    }, `${kind === "lora" ? "Download LoRA" : "Download GGUF"}${gone ? " (deleted from the Hub)" : ""}`)));
    if (gone) {
      this.downloads.append(h("p", { class: "muted" },
        "This run's Hub entry was deleted: its bundles are gone. Rerun it to train them again."));
    }
    if (run.status === "completed" && run.hub_entry_id && !artifacts.gguf && run.config.export.gguf) {
      this.downloads.append(h("p", { class: "muted" }, "The GGUF export failed; the LoRA was saved."));
    }
  }

  updateActions(run) {
    const terminal = isTerminal(run.status);
    const finishable = run.status === "training" && !run.finish_requested;
    const key = `${terminal}-${run.cancel_requested}-${finishable}`;
    // Redrawing the button under the pointer or the keyboard would lose the click or focus.
    if (this.actionsKey === key) return;
    this.actionsKey = key;
    const button = (label, className, action) =>
      h("button", { type: "button", class: className, onclick: action }, label);
    this.actions.replaceChildren(...(terminal
      ? [button("Rerun with changes", "", () => rerun(run.id)),
        button("Delete run record", "danger-outline", () => deleteRun(run.id))]
      : [finishable ? button("Finish now", "primary", () => finishRun(run.id)) : null,
        button("Cancel run", "danger", () => cancelRun(run.id))].filter(Boolean)));
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
      const name = state.runs.get(this.runId)?.name || this.runId;
      saveBlob(new Blob([text], { type: "text/plain" }), `${name}-logs.txt`);
    } catch (error) {
      reportError(error, "Downloading the logs");
    }
  }

  destroy() {
    this.chart.destroy();
  }
}

function timeLeft(run) {
  const eta = run.metrics?.eta_seconds;
  if (run.status === "completed") return "done";
  if (isTerminal(run.status)) return "–";
  if (!missing(eta)) return formatDuration(eta);
  return run.status === "training" ? "estimating…" : "–";
}

/**
 * "Training: running gradient steps · attempt 2", why a waiting run waits (credits, or a
 * cluster with no free node), or what a cancelled run was billed.
 */
function whereItStands(run) {
  if (run.status === "cancelled") {
    const minutes = Math.floor((run.metrics?.billable_seconds || 0) / 60);
    return `Cancelled: billed ${plural(minutes, "whole minute")} of training, `
      + `${formatCredits(run.metrics?.credits)} credits. No LoRA or Hub entry was kept.`;
  }
  let where = `${statusLabel(run.status)}: ${phaseDescription(run.phase)}`;
  if (run.status === "queued" && run.queue_position) where += ` (#${run.queue_position} in the queue)`;
  // The reason comes with the run object, not with events: once the run has moved on (a
  // phase or status event) it is no longer shown.
  const waiting = ["queued", "retrying"].includes(run.status) || run.phase === "provisioning";
  if (waiting && run.waiting_reason) where += ` · ${run.waiting_reason}`;
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
  if (run.status !== "completed") return "";
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
        ["target modules", Array.isArray(targets) ? targets.join(", ") : targets]]))));
}

/** What one optimizer step of the run trains, on the devices its tier gave it. */
function effectiveBatch(run) {
  const tier = state.tiers.find((entry) => entry.id === run.tier);
  const devices = run.estimate?.devices ?? tier?.devices ?? 1;
  const training = run.config.training;
  return formatEffectiveBatch(
    training.batch_size, devices, training.gradient_accumulation_steps, tier?.gpus);
}

async function cancelRun(id) {
  const run = state.runs.get(id);
  const price = state.tiers.find((tier) => tier.id === run.tier)?.credits_per_minute || 0;
  const minutes = Math.floor((run.metrics?.billable_seconds || 0) / 60);
  const billed = price > 0
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
    refreshAccount();
  } catch (error) {
    reportError(error, "Cancelling");
  }
}

async function finishRun(id) {
  const confirmed = await confirmAction({
    title: `Finish run ${state.runs.get(id).name} now?`,
    body: "Training stops after the current step; the adapter learned so far is saved, "
      + "exported and sampled, and the run is billed as completed for the time used.",
    confirm: "Finish now",
    keep: "Keep training",
  });
  if (!confirmed) return;
  try {
    receiveRun(await api(`/runs/${id}/finish`, { method: "POST" }));
  } catch (error) {
    reportError(error, "Finishing the run");
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
