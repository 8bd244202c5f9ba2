// A run's curves, drawn with uPlot (vendored, loaded as a classic script): the training
// loss with a smoothed line, the eval loss and the step whose adapter the run delivers, then
// learning rate, gradient norm and tokens/s; a DPO run adds its reward margin and reward
// accuracy, each with the eval one. Every chart has its axis, unit and hover values.

import { api } from "./api.js";
import { h, reportError } from "./dom.js";

const HEIGHT = 240;
const SMALL_HEIGHT = 180;
const MIN_WIDTH = 240;
const SMOOTHING = 0.6;

/** How a chart's numbers read: on its axis, and for the hovered step in its legend. */
export const FORMATS = {
  loss: (value) => value.toFixed(3),
  rate: (value) => value.toExponential(1),
  norm: (value) => value.toFixed(3),
  count: (value) => Math.round(value).toLocaleString(),
};

// A DPO run's charts: the training series, and the evaluation's beside it.
const PREFERENCE_CHARTS = [
  { name: "reward_margin", label: "Reward margin", unit: "nats, chosen over rejected",
    stroke: "#2563eb", format: FORMATS.loss },
  { name: "reward_accuracy", label: "Reward accuracy", unit: "share of pairs",
    stroke: "#15803d", format: FORMATS.loss },
];
const SMALL_CHARTS = [
  { name: "learning_rate", label: "Learning rate", unit: "per step", stroke: "#7c3aed",
    format: FORMATS.rate },
  { name: "grad_norm", label: "Grad norm", unit: "L2, before clipping", stroke: "#b45309",
    format: FORMATS.norm },
  { name: "tokens_per_second", label: "Throughput", unit: "tokens/s", stroke: "#0f766e",
    format: FORMATS.count },
];

/**
 * The smoothed loss as TensorBoard and W&B draw it: an exponential moving average with
 * weight `SMOOTHING`, debiased so that the first points are not pulled towards zero.
 */
export function smooth(values, weight = SMOOTHING) {
  let last = 0;
  let count = 0;
  return values.map((value) => {
    if (value === null || value === undefined) return null;
    count += 1;
    last = last * weight + (1 - weight) * value;
    return last / (1 - weight ** count);
  });
}

/** A value as the legend shows it: "–" where a series has none at that step. */
const legendValue = (format) => (_chart, value) =>
  (value === null || value === undefined ? "–" : format(value));

/**
 * A uPlot chart in `slot`: x is `xLabel` (steps or tokens), y is `yLabel` whose numbers read
 * with `format`; hovering shows every series' value at that x in the legend.
 */
export function plot(slot, { height, data, series, xLabel = "step", yLabel, format, sync }) {
  return new window.uPlot({
    width: Math.max(MIN_WIDTH, slot.clientWidth || 600), height,
    scales: { x: { time: false } },
    axes: [
      { label: xLabel, values: (_chart, ticks) => ticks.map(FORMATS.count) },
      { label: yLabel, size: 64, values: (_chart, ticks) => ticks.map(format) },
    ],
    legend: { show: true, live: true },
    cursor: sync ? { sync: { key: sync } } : {},
    series: [
      { label: xLabel, value: legendValue(FORMATS.count) },
      ...series.map((each) => ({ value: legendValue(format), ...each })),
    ],
  }, data, slot);
}

/** Keep `charts` as wide as their slots. */
export function followWidth(element, charts) {
  const resizer = new ResizeObserver(() => {
    for (const chart of charts) {
      const width = Math.max(MIN_WIDTH, chart.root.parentElement.clientWidth);
      chart.setSize({ width, height: chart.height });
    }
  });
  resizer.observe(element);
  return resizer;
}

export class LossChart {
  /** `preference`: the run trains with DPO (`config.method.type` "dpo"). */
  constructor(runId, { preference = false } = {}) {
    this.runId = runId;
    this.smallCharts = [...(preference ? PREFERENCE_CHARTS : []), ...SMALL_CHARTS];
    this.rows = new Map();  // step → {loss, learning_rate, …, eval_loss}
    this.keptStep = null;
    this.charts = [];
    this.lossSlot = h("div", { class: "chart", role: "img",
      "aria-label": "Training loss, smoothed loss, eval loss and the kept step by step" },
    h("p", { class: "muted" }, "The loss curve starts with the first gradient step."));
    this.smallSlots = this.smallCharts.map(({ label, unit }) => h("div", {
      class: "chart chart-small", role: "img", "aria-label": `${label} (${unit}) by step`,
      dataset: { chart: label } }));
    this.element = h("div", { class: "charts" }, this.lossSlot,
      h("div", { class: "small-charts" }, this.smallCharts.map(({ label, unit }, index) =>
        h("figure", { class: "small-chart" },
          h("figcaption", {}, `${label} (${unit})`), this.smallSlots[index]))));
  }

  /** Load the stored history; rows that arrived live while it loaded are newer and win. */
  async load() {
    try {
      const history = await api(`/runs/${this.runId}/metrics`);
      const live = this.rows;
      this.rows = new Map(history.map((row) => [row.step, row]));
      for (const [step, row] of live) this.rows.set(step, { ...this.rows.get(step), ...row });
      if (this.rows.size) this.draw();
    } catch (error) {
      reportError(error, "Loading the loss curve");
    }
  }

  /** A step's numbers (a metrics event). */
  addStep(metrics) {
    if (metrics.step === undefined || metrics.loss === null || metrics.loss === undefined) return;
    // A resumed attempt re-reports steps after its checkpoint: later steps are dropped.
    for (const step of [...this.rows.keys()]) if (step > metrics.step) this.rows.delete(step);
    this.rows.set(metrics.step, { ...this.rows.get(metrics.step), ...metrics });
    this.draw();
  }

  /** An evaluation after a step (an evaluation event). */
  addEvaluation(evaluation) {
    if (evaluation.step === undefined) return;
    const row = this.rows.get(evaluation.step) || { step: evaluation.step };
    this.rows.set(evaluation.step, { ...row, eval_loss: evaluation.eval_loss,
      eval_accuracy: evaluation.eval_accuracy,
      eval_reward_margin: evaluation.eval_reward_margin,
      eval_reward_accuracy: evaluation.eval_reward_accuracy });
    this.draw();
  }

  /** Mark the step whose adapter the run delivers (`run.kept`), or none. */
  markKept(step) {
    if (this.keptStep === (step ?? null)) return;
    this.keptStep = step ?? null;
    if (this.rows.size) this.draw();
  }

  data() {
    const steps = [...this.rows.keys()].filter((step) => this.rows.get(step).loss != null)
      .sort((a, b) => a - b);
    const column = (name) => steps.map((step) => this.rows.get(step)[name] ?? null);
    const losses = column("loss");
    const kept = steps.map((step, index) => (step === this.keptStep ? losses[index] : null));
    return { steps, losses, smoothed: smooth(losses), kept, column };
  }

  draw() {
    const { steps, losses, smoothed, kept, column } = this.data();
    if (!steps.length) return;
    const lossData = [steps, losses, smoothed, column("eval_loss"), kept];
    const preference = new Set(PREFERENCE_CHARTS);
    const smallData = this.smallCharts.map(({ name }, index) => (
      preference.has(this.smallCharts[index])
        ? [steps, column(name), column(`eval_${name}`)] : [steps, column(name)]));
    if (this.charts.length) {
      this.charts[0].setData(lossData);
      smallData.forEach((data, index) => this.charts[index + 1].setData(data));
      return;
    }
    this.lossSlot.replaceChildren();
    this.charts.push(plot(this.lossSlot, {
      height: HEIGHT, data: lossData, yLabel: "loss (nats/token)", format: FORMATS.loss,
      sync: "run-charts",
      series: [
        { label: "loss", stroke: "#93c5fd", width: 1 },
        { label: "smoothed", stroke: "#2563eb", width: 2 },
        { label: "eval loss", stroke: "#dc2626", width: 2, spanGaps: true,
          points: { show: true, size: 6 } },
        { label: "kept adapter", stroke: "#15803d", width: 0,
          points: { show: true, size: 12, fill: "#15803d" } },
      ],
    }));
    this.smallCharts.forEach((chart, index) => {
      const { label, unit, stroke, format } = chart;
      const series = [{ label, stroke, width: 1.5 }];
      if (preference.has(chart)) {
        series.push({ label: `eval ${label.toLowerCase()}`, stroke: "#dc2626", width: 2,
          spanGaps: true, points: { show: true, size: 6 } });
      }
      this.charts.push(plot(this.smallSlots[index], {
        height: SMALL_HEIGHT, data: smallData[index], yLabel: `${label} (${unit})`, format,
        sync: "run-charts", series,
      }));
    });
    this.resizer = followWidth(this.element, this.charts);
  }

  destroy() {
    this.resizer?.disconnect();
    for (const chart of this.charts) chart.destroy();
  }
}
