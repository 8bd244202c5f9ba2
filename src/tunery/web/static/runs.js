// The Runs tab: one row per run, newest first, with at most one Run panel open.

import { $, h } from "./dom.js";
import { formatTime } from "./format.js";
import { RunPanel } from "./run-panel.js";
import { state } from "./state.js";
import { pill } from "./vocabulary.js";

// The run whose panel is open (the route #/runs/<id>), and that panel.
let expanded = null;
let panel = null;

export const expandedRunId = () => expanded;

/** Show the Runs tab with run `id` open, or none. */
export function showRuns(id) {
  expanded = id || null;
  renderRuns();
}

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

function runHeader(run) {
  const open = expanded === run.id;
  return h("button", {
    class: "run-header", "aria-expanded": String(open), "aria-controls": `panel-${run.id}`,
    onclick: () => {
      location.hash = open ? "#/runs" : `#/runs/${run.id}`;
    },
  },
  pill(run.status),
  h("span", { class: "run-name" }, run.name),
  h("span", { class: "run-meta muted" }, runSummary(run)),
  h("span", { class: "run-when muted" }, formatTime(run.created_at)));
}

export function renderRuns() {
  const runs = sortedRuns();
  $("#runs-empty").hidden = runs.length > 0 || !state.loaded;
  if (panel && panel.runId !== expanded) {
    panel.destroy();
    panel = null;
  }
  const kept = panel;
  $("#run-list").replaceChildren(...runs.map((run) => {
    const row = h("li", { class: "run", id: `run-${run.id}`, dataset: { runId: run.id } },
      runHeader(run));
    if (run.id === expanded) {
      panel ??= new RunPanel(run);
      row.append(panel.element);
    }
    return row;
  }));
  if (panel && panel !== kept) panel.load();
  panel?.update(state.runs.get(panel.runId));
}

/** Redraw one run's header (and its panel when open); the whole list if it is new. */
export function updateRun(run) {
  const row = document.getElementById(`run-${run.id}`);
  if (!row) {
    renderRuns();
    return;
  }
  row.querySelector(".run-header").replaceChildren(...runHeader(run).childNodes);
  if (panel?.runId === run.id) panel.update(run);
}

/** A step's numbers, for the open panel's curves. */
export function addPoint(run, metrics) {
  if (panel?.runId === run.id) panel.chart.addStep(metrics);
}

/** An evaluation, for the open panel's eval-loss curve. */
export function addEvaluation(run, evaluation) {
  if (panel?.runId === run.id) panel.chart.addEvaluation(evaluation);
}

/** A line of the run's history, for the open panel's log box. */
export function addLogLine(run, line) {
  if (panel?.runId === run.id) panel.addLogLine(line);
}
