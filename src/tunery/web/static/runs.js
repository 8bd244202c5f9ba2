// The Runs tab: a table of runs with the columns a user chooses, sorted by any of them,
// searched by name and filtered by status, model, tier and tag; at most one Run panel open;
// runs picked for Compare. The view's settings are kept in the browser.

import { $, fill, h } from "./dom.js";
import { formatCredits, formatDuration, formatTime } from "./format.js";
import { RunPanel } from "./run-panel.js";
import { state } from "./state.js";
import { allStatuses, isTerminal, outcome, pill } from "./vocabulary.js";

const SETTINGS_KEY = "tunery.runs.view";
const missing = (value) => value === null || value === undefined;
const number = (value, digits = 4) => (missing(value) ? "–" : value.toFixed(digits));

/** The GPUs an attempt on the run's tier holds (0 on CPU tiers), for the pill's label. */
export const tierGpus = (run) => state.tiers.find((tier) => tier.id === run.tier)?.gpus ?? null;

/** The loss of the adapter the run delivers: the kept step's when one was kept. */
const deliveredLoss = (run) => run.kept?.loss ?? run.metrics?.loss ?? null;

/** Every column a user may show: its label, the value it sorts by, and its cell. */
const COLUMNS = [
  { id: "status", label: "Status",
    sort: (run) => allStatuses().findIndex((status) => status.id === run.status),
    cell: (run) => pill(run.status, run.phase, tierGpus(run)) },
  { id: "base_model", label: "Base model", sort: (run) => run.config.base_model,
    cell: (run) => run.config.base_model },
  { id: "tier", label: "Tier", sort: (run) => run.tier, cell: (run) => run.tier },
  { id: "steps", label: "Steps", sort: (run) => run.metrics?.step ?? 0,
    cell: (run) => (run.metrics?.total_steps
      ? `${run.metrics.step}/${run.metrics.total_steps}` : String(run.metrics?.step ?? 0)) },
  { id: "loss", label: "Final loss", sort: deliveredLoss,
    cell: (run) => number(deliveredLoss(run)) },
  { id: "eval", label: "Best eval loss", sort: (run) => run.evaluation?.best_eval_loss ?? null,
    cell: (run) => number(run.evaluation?.best_eval_loss) },
  { id: "duration", label: "Duration", sort: (run) => run.metrics?.duration_seconds ?? null,
    cell: (run) => formatDuration(run.metrics?.duration_seconds) },
  { id: "credits", label: "Credits", sort: (run) => run.metrics?.credits ?? null,
    cell: (run) => formatCredits(run.metrics?.credits) },
  { id: "created", label: "Created", sort: (run) => run.created_at,
    cell: (run) => formatTime(run.created_at) },
  { id: "tags", label: "Tags", sort: (run) => (run.tags || []).join(" "),
    cell: (run) => (run.tags || []).map((tag) => h("span", { class: "tag" }, tag)) },
];
const FILTERS = ["status", "model", "tier", "tag"];

const view = {
  columns: COLUMNS.map((column) => column.id),
  sort: { column: "created", descending: true },
  search: "",
  filters: { status: "", model: "", tier: "", tag: "" },
  ...JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}"),
};
const saveView = () => localStorage.setItem(SETTINGS_KEY, JSON.stringify(view));

// Runs picked for Compare, and the run whose panel is open (#/runs/<id>) with its panel.
const picked = new Set();
let expanded = null;
let panel = null;

export const expandedRunId = () => expanded;

/** Show the Runs tab with run `id` open, or none. */
export function showRuns(id) {
  expanded = id || null;
  renderRuns();
}

function matches(run) {
  const { status, model, tier, tag } = view.filters;
  return run.name.toLowerCase().includes(view.search.toLowerCase())
    && (!status || run.status === status)
    && (!model || run.config.base_model === model)
    && (!tier || run.tier === tier)
    && (!tag || (run.tags || []).includes(tag));
}

function compare(a, b) {
  const column = COLUMNS.find((each) => each.id === view.sort.column) ?? COLUMNS.at(-2);
  const [left, right] = [column.sort(a), column.sort(b)];
  // Runs without a value (no loss yet) go last whichever way the column is sorted.
  if (missing(left) || missing(right)) return missing(left) - missing(right);
  const order = left < right ? -1 : left > right ? 1 : 0;
  return view.sort.descending ? -order : order;
}

const visibleRuns = () => [...state.runs.values()].filter(matches).sort(compare);
const shownColumns = () => COLUMNS.filter((column) => view.columns.includes(column.id));

/** Under the name: where a run stands (queue, progress) or how it ended early. */
function runSummary(run) {
  const metrics = run.metrics || {};
  if (run.queue_position) return `#${run.queue_position} in queue`;
  if (!isTerminal(run.status) && metrics.total_steps) return `${Math.round(metrics.progress || 0)}%`;
  if (run.evaluation?.stopped_early) {
    return `stopped early at step ${run.evaluation.stopped_at_step}`
      + (run.kept ? ` · kept step ${run.kept.step}` : "");
  }
  if (run.kept && outcome(run.status) === "failed") return `kept step ${run.kept.step}`;
  return "";
}

function nameParts(run) {
  const summary = runSummary(run);
  return [h("span", { class: "run-name" }, run.name),
    summary ? h("span", { class: "run-meta muted" }, summary) : null,
    run.note ? h("span", { class: "run-note muted" }, run.note) : null];
}

/** Open the run's panel, or close it if it is the one open. */
function toggleRun(run) {
  location.hash = expanded === run.id ? "#/runs" : `#/runs/${run.id}`;
}

function nameCell(run) {
  return h("td", { class: "run-name-cell" },
    h("button", {
      class: "run-header", "aria-expanded": String(expanded === run.id),
      "aria-controls": `panel-${run.id}`, onclick: () => toggleRun(run),
    }, nameParts(run)));
}

function rowCells(run) {
  const box = h("input", {
    type: "checkbox", checked: picked.has(run.id), "aria-label": `Compare ${run.name}`,
    onchange: (event) => {
      if (event.target.checked) picked.add(run.id);
      else picked.delete(run.id);
      renderToolbarState();
    },
  });
  const cells = shownColumns().map((column) => h("td", { dataset: { column: column.id } },
    column.cell(run)));
  const [status, ...rest] = view.columns.includes("status") ? cells : [null, ...cells];
  // The status pill opens the run too, as the row's name does (keyboards use the name).
  status?.addEventListener("click", () => toggleRun(run));
  return [h("td", { class: "pick" }, box), status, nameCell(run), ...rest];
}

function headerRow() {
  const header = (column) => {
    const sorted = view.sort.column === column.id;
    return h("th", {
      scope: "col", "aria-sort": sorted ? (view.sort.descending ? "descending" : "ascending") : null,
    }, h("button", { type: "button", class: "sort", dataset: { sort: column.id },
      onclick: () => {
        view.sort = { column: column.id, descending: sorted ? !view.sort.descending : false };
        saveView();
        renderRuns();
      } }, column.label, sorted ? (view.sort.descending ? " ▼" : " ▲") : ""));
  };
  const columns = shownColumns();
  const status = columns.find((column) => column.id === "status");
  const name = { id: "name", label: "Name", sort: (run) => run.name.toLowerCase() };
  return h("tr", {}, h("th", { scope: "col" }, h("span", { class: "offscreen" }, "Compare")),
    status ? header(status) : null, header(name),
    ...columns.filter((column) => column !== status).map(header));
}

const distinct = (values) => [...new Set(values.filter(Boolean))].sort();

/** The search field, the filters, the column chooser and Compare (built once). */
function toolbar() {
  const select = (filter, label, options) => h("label", { class: "filter" }, `${label} `,
    h("select", { dataset: { filter }, onchange: (event) => {
      view.filters[filter] = event.target.value;
      saveView();
      renderRuns();
    } }, h("option", { value: "" }, "any"),
    options.map(([value, text]) => h("option", { value, selected: view.filters[filter] === value },
      text))));
  const runs = [...state.runs.values()];
  return [
    h("label", { class: "filter search" }, "Search ",
      h("input", { type: "search", id: "runs-search", placeholder: "run name",
        value: view.search, oninput: (event) => {
          view.search = event.target.value;
          saveView();
          renderTable();
        } })),
    select("status", "Status", allStatuses().map(({ id, label }) => [id, label])),
    select("model", "Model", distinct(runs.map((run) => run.config.base_model)).map((m) => [m, m])),
    select("tier", "Tier", distinct(runs.map((run) => run.tier)).map((tier) => [tier, tier])),
    select("tag", "Tag", distinct(runs.flatMap((run) => run.tags || [])).map((t) => [t, t])),
    h("details", { class: "columns" }, h("summary", {}, "Columns"),
      h("fieldset", {}, h("legend", { class: "offscreen" }, "Columns shown"),
        COLUMNS.map((column) => h("label", { class: "check" },
          h("input", { type: "checkbox", value: column.id,
            checked: view.columns.includes(column.id), onchange: (event) => {
              view.columns = COLUMNS.map((each) => each.id).filter((id) => (id === column.id
                ? event.target.checked : view.columns.includes(id)));
              saveView();
              renderTable();
            } }), ` ${column.label}`)))),
    h("button", { type: "button", id: "compare-runs", class: "primary", onclick: () => {
      location.hash = `#/compare/${[...picked].join(",")}`;
    } }, "Compare"),
  ];
}

function renderToolbarState() {
  const button = $("#compare-runs");
  if (!button) return;
  const count = [...picked].filter((id) => state.runs.has(id)).length;
  button.disabled = count < 2;
  button.textContent = count ? `Compare ${count} runs` : "Compare";
  button.title = count < 2 ? "Tick two or more runs to compare them" : "";
}

/** Redraw the toolbar (its filters list the models, tiers and tags there are) and table. */
export function renderRuns() {
  const focused = document.activeElement?.id;
  fill($("#runs-toolbar"), toolbar());
  if (focused === "runs-search") $("#runs-search").focus();
  renderTable();
}

function renderTable() {
  for (const id of [...picked]) if (!state.runs.has(id)) picked.delete(id);
  const runs = visibleRuns();
  $("#runs-empty").hidden = state.runs.size > 0 || !state.loaded;
  $("#runs-none-match").hidden = !state.runs.size || runs.length > 0;
  if (panel && panel.runId !== expanded) {
    panel.destroy();
    panel = null;
  }
  const kept = panel;
  fill($("#run-head"), headerRow());
  const width = shownColumns().length + 2;
  fill($("#run-list"), runs.map((run) => {
    const row = h("tr", { class: "run", id: `run-${run.id}`, dataset: { runId: run.id } },
      rowCells(run));
    if (run.id !== expanded) return row;
    panel ??= new RunPanel(run);
    return [row, h("tr", { class: "panel-row" }, h("td", { colspan: String(width) },
      panel.element))];
  }));
  if (panel && panel !== kept) panel.load();
  panel?.update(state.runs.get(panel.runId));
  renderToolbarState();
}

/**
 * Redraw one run's row in place (and its panel when open); the whole table if it is new.
 * The row's button and checkbox stay the same elements, so neither the pointer nor the
 * keyboard loses them while the run's numbers move.
 */
export function updateRun(run) {
  const row = document.getElementById(`run-${run.id}`);
  if (!row) {
    if (matches(run)) renderRuns();
    return;
  }
  for (const cell of row.querySelectorAll("td[data-column]")) {
    const column = COLUMNS.find((each) => each.id === cell.dataset.column);
    fill(cell, column.cell(run));
  }
  fill(row.querySelector(".run-header"), nameParts(run));
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
