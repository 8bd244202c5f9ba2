// A run's curves, drawn with uPlot (vendored, loaded as a classic script): the training
// loss with a smoothed line and the eval loss, then learning rate, gradient norm and
// tokens/s; a DPO run adds its reward margin and reward accuracy, each with the eval one.
// Hovering shows each series' value at that step in the legend.

import { api } from "./api.js";
import { h, reportError } from "./dom.js";

const HEIGHT = 220;
const SMALL_HEIGHT = 120;
const MIN_WIDTH = 240;
const SMOOTHING = 0.6;
const SMALL_CHARTS = [
  ["learning_rate", "Learning rate", "#7c3aed"],
  ["grad_norm", "Grad norm", "#b45309"],
  ["tokens_per_second", "Tokens/s", "#0f766e"],
];
// A DPO run's charts: the training series, and the evaluation's beside it.
const PREFERENCE_CHARTS = [
  ["reward_margin", "Reward margin", "#2563eb"],
  ["reward_accuracy", "Reward accuracy", "#15803d"],
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

export class LossChart {
  /** `preference`: the run trains with DPO (`config.method.type` "dpo"). */
  constructor(runId, { preference = false } = {}) {
    this.runId = runId;
    this.preferenceCharts = preference ? PREFERENCE_CHARTS : [];
    this.rows = new Map();  // step → {loss, learning_rate, …, eval_loss}
    this.charts = [];
    this.lossSlot = h("div", { class: "chart", role: "img",
      "aria-label": "Training loss, smoothed loss and eval loss by step" },
    h("p", { class: "muted" }, "The loss curve starts with the first gradient step."));
    this.smallSlots = [...this.preferenceCharts, ...SMALL_CHARTS].map(([, label]) => h("div", {
      class: "chart chart-small", role: "img", "aria-label": `${label} by step` }));
    this.element = h("div", { class: "charts" }, this.lossSlot,
      h("div", { class: "small-charts" }, this.smallSlots));
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

  data() {
    const steps = [...this.rows.keys()].filter((step) => this.rows.get(step).loss != null)
      .sort((a, b) => a - b);
    const column = (name) => steps.map((step) => this.rows.get(step)[name] ?? null);
    const losses = column("loss");
    return { steps, losses, smoothed: smooth(losses), column };
  }

  draw() {
    const { steps, losses, smoothed, column } = this.data();
    if (!steps.length) return;
    const lossData = [steps, losses, smoothed, column("eval_loss")];
    const smallData = [
      ...this.preferenceCharts.map(([name]) => [steps, column(name), column(`eval_${name}`)]),
      ...SMALL_CHARTS.map(([name]) => [steps, column(name)]),
    ];
    if (this.charts.length) {
      this.charts[0].setData(lossData);
      smallData.forEach((data, index) => this.charts[index + 1].setData(data));
      return;
    }
    this.lossSlot.replaceChildren();
    this.charts.push(plot(this.lossSlot, HEIGHT, lossData, [
      { label: "loss", stroke: "#93c5fd", width: 1 },
      { label: "smoothed", stroke: "#2563eb", width: 2 },
      { label: "eval loss", stroke: "#dc2626", width: 2, spanGaps: true,
        points: { show: true, size: 6 } },
    ]));
    [...this.preferenceCharts, ...SMALL_CHARTS].forEach(([, label, stroke], index) => {
      const series = [{ label, stroke, width: 1.5 }];
      if (index < this.preferenceCharts.length) {
        series.push({ label: `eval ${label.toLowerCase()}`, stroke: "#dc2626", width: 2,
          spanGaps: true, points: { show: true, size: 6 } });
      }
      this.charts.push(plot(this.smallSlots[index], SMALL_HEIGHT, smallData[index], series));
    });
    this.resizer = new ResizeObserver(() => {
      for (const chart of this.charts) {
        const width = Math.max(MIN_WIDTH, chart.root.parentElement.clientWidth);
        chart.setSize({ width, height: chart.height });
      }
    });
    this.resizer.observe(this.element);
  }

  destroy() {
    this.resizer?.disconnect();
    for (const chart of this.charts) chart.destroy();
  }
}

function plot(slot, height, data, series) {
  return new window.uPlot({
    width: Math.max(MIN_WIDTH, slot.clientWidth || 600), height,
    scales: { x: { time: false } },
    axes: [{ label: "step" }, {}],
    // The legend shows the hovered step's value of every series.
    legend: { show: true, live: true },
    cursor: { sync: { key: "run-charts" } },
    series: [{ label: "step" }, ...series],
  }, data, slot);
}
