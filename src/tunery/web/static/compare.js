// Compare (#/compare/<id>,<id>,…): the runs' loss and eval-loss curves overlaid, aligned by
// step or by tokens trained; only the configuration fields that differ; and their answers
// to the same sample prompts side by side.

import { api } from "./api.js";
import { $, fill, h, reportError } from "./dom.js";
import { FORMATS, followWidth, plot, smooth } from "./loss-chart.js";
import { state } from "./state.js";
import { pill } from "./vocabulary.js";

const COLORS = ["#2563eb", "#dc2626", "#15803d", "#7c3aed", "#b45309", "#0f766e", "#db2777"];
const AXES = { step: "step", trained_tokens: "tokens trained" };
const LEFT_OUT = new Set(["name", "attestations"]);

let shown = { ids: [], rows: new Map(), axis: "step", chart: null, resizer: null };

/** Show the runs `ids` (comma-separated in the address) side by side. */
export async function showCompare(idList) {
  const ids = (idList || "").split(",").filter((id) => state.runs.has(id));
  shown.chart?.destroy();
  shown.resizer?.disconnect();
  shown = { ids, rows: new Map(), axis: shown.axis, chart: null, resizer: null };
  const box = $("#compare");
  if (ids.length < 2) {
    fill(box, h("p", {}, "Pick two or more runs on the Runs tab to compare them. ",
      h("a", { href: "#/runs" }, "Back to the runs")));
    return;
  }
  try {
    const histories = await Promise.all(ids.map((id) => api(`/runs/${id}/metrics`)));
    ids.forEach((id, index) => shown.rows.set(id, histories[index]));
  } catch (error) {
    reportError(error, "Loading the runs to compare");
    return;
  }
  const runs = ids.map((id) => state.runs.get(id));
  const axis = h("fieldset", { class: "axis-choice" }, h("legend", {}, "Align the curves by"),
    Object.entries(AXES).map(([value, label]) => h("label", { class: "check" },
      h("input", { type: "radio", name: "compare-axis", value, checked: shown.axis === value,
        onchange: () => {
          shown.axis = value;
          drawCurves();
        } }), ` ${label}`)));
  fill(box,
    h("ul", { class: "compared" }, runs.map((run, index) => h("li", {},
      swatch(COLORS[index % COLORS.length]),
      pill(run.status), " ", h("a", { href: `#/runs/${run.id}` }, run.name)))),
    axis,
    h("figure", { class: "compare-figure" },
      h("figcaption", { id: "compare-caption" }),
      h("div", { class: "chart", id: "compare-chart", role: "img",
        "aria-labelledby": "compare-caption" })),
    h("h2", {}, "Configuration differences"),
    configDifferences(runs),
    h("h2", {}, "Samples side by side"),
    samplesSideBySide(runs));
  drawCurves();
}

/** The colour of a run's curves (set through the DOM: the page allows no inline styles). */
function swatch(color) {
  const element = h("span", { class: "swatch", "aria-hidden": "true" });
  element.style.background = color;
  return element;
}

/** One x for every step any run reported (steps, or tokens trained), and each run's series. */
function curveData() {
  const xs = new Set();
  for (const rows of shown.rows.values()) {
    for (const row of rows) if (row[shown.axis] != null) xs.add(row[shown.axis]);
  }
  const x = [...xs].sort((a, b) => a - b);
  const columns = [x];
  for (const id of shown.ids) {
    const rows = shown.rows.get(id).filter((row) => row[shown.axis] != null);
    const smoothed = smooth(rows.map((row) => row.loss ?? null));
    const at = new Map(rows.map((row, index) => [row[shown.axis], [smoothed[index], row.eval_loss]]));
    columns.push(x.map((value) => at.get(value)?.[0] ?? null));
    columns.push(x.map((value) => at.get(value)?.[1] ?? null));
  }
  return columns;
}

function drawCurves() {
  const slot = $("#compare-chart");
  if (!slot) return;
  shown.chart?.destroy();
  shown.resizer?.disconnect();
  slot.replaceChildren();
  const series = shown.ids.flatMap((id, index) => {
    const name = state.runs.get(id).name;
    const stroke = COLORS[index % COLORS.length];
    return [
      { label: `${name} loss (smoothed)`, stroke, width: 2, spanGaps: true },
      { label: `${name} eval loss`, stroke, width: 1, dash: [4, 4], spanGaps: true,
        points: { show: true, size: 7 } },
    ];
  });
  $("#compare-caption").textContent = "Smoothed training loss (lines) and eval loss (dots) "
    + `of each run, by ${AXES[shown.axis]}`;
  shown.chart = plot(slot, { height: 300, data: curveData(), series, xLabel: AXES[shown.axis],
    yLabel: "loss (nats/token)", format: FORMATS.loss });
  shown.resizer = followWidth(slot, [shown.chart]);
}

/** The recipe as dotted fields: {"training.learning_rate": 0.0002, …}. */
function flatten(value, prefix = "", into = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) {
      if (!prefix && LEFT_OUT.has(key)) continue;
      flatten(inner, prefix ? `${prefix}.${key}` : key, into);
    }
  } else {
    into[prefix] = Array.isArray(value) ? value.join(", ") : value;
  }
  return into;
}

function configDifferences(runs) {
  const flat = runs.map((run) => flatten({ ...run.config, gpu_tier: run.tier }));
  const fields = [...new Set(flat.flatMap((each) => Object.keys(each)))].sort();
  const differing = fields.filter((field) =>
    new Set(flat.map((each) => JSON.stringify(each[field] ?? null))).size > 1);
  if (!differing.length) {
    return h("p", { class: "muted", id: "config-differences" },
      "The runs were submitted with the same configuration.");
  }
  return h("div", { class: "table-wrap" }, h("table", { class: "ledger", id: "config-differences" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Field"),
      runs.map((run) => h("th", { scope: "col" }, run.name)))),
    h("tbody", {}, differing.map((field) => h("tr", { dataset: { field } },
      h("th", { scope: "row" }, h("code", {}, field)),
      flat.map((each) => h("td", { class: "differs" }, String(each[field] ?? "–"))))))));
}

function samplesSideBySide(runs) {
  const prompts = [...new Set(runs.flatMap((run) => (run.samples || []).map((s) => s.prompt)))];
  if (!prompts.length) {
    return h("p", { class: "muted" }, "No samples yet: runs answer their sample prompts when "
      + "they finish.");
  }
  return h("div", { id: "compare-samples" }, prompts.map((prompt) => h("article",
    { class: "sample" },
    h("p", { class: "sample-prompt" }, h("strong", {}, "Prompt: "), prompt),
    h("div", { class: "sample-answers" }, runs.map((run) => {
      const sample = (run.samples || []).find((each) => each.prompt === prompt);
      return h("div", { class: "sample-answer", dataset: { run: run.id } },
        h("h4", {}, run.name),
        h("p", { class: "sample-text" }, sample ? sample.response : "(not among its prompts)"));
    })))));
}
