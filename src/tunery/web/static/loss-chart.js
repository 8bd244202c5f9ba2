// A run's training loss by step, drawn with uPlot (vendored, loaded as a classic script).

import { api } from "./api.js";
import { h, reportError } from "./dom.js";

const HEIGHT = 220;
const MIN_WIDTH = 240;

export class LossChart {
  constructor(runId) {
    this.runId = runId;
    this.steps = [];
    this.losses = [];
    this.chart = null;
    this.element = h("div", { class: "chart", "aria-label": "Training loss by step", role: "img" },
      h("p", { class: "muted" }, "The loss curve starts with the first gradient step."));
  }

  /** Load the stored history; points that arrived live while it loaded are newer and win. */
  async load() {
    try {
      const history = await api(`/runs/${this.runId}/metrics`);
      const byStep = new Map(history.map((row) => [row.step, row.loss]));
      this.steps.forEach((step, index) => byStep.set(step, this.losses[index]));
      const steps = [...byStep.keys()].filter((step) => byStep.get(step) != null)
        .sort((a, b) => a - b);
      this.steps.splice(0, Infinity, ...steps);
      this.losses.splice(0, Infinity, ...steps.map((step) => byStep.get(step)));
      if (this.steps.length) this.draw();
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
    this.draw();
  }

  draw() {
    if (this.chart) {
      this.chart.setData([this.steps, this.losses]);
      return;
    }
    this.element.replaceChildren();
    this.chart = new window.uPlot({
      width: Math.max(MIN_WIDTH, this.element.clientWidth || 600), height: HEIGHT,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: "loss" }],
      legend: { show: false },
      series: [{ label: "step" }, { label: "loss", stroke: "#2563eb", width: 2 }],
    }, [this.steps, this.losses], this.element);
    this.resizer = new ResizeObserver(() => {
      this.chart?.setSize({ width: Math.max(MIN_WIDTH, this.element.clientWidth), height: HEIGHT });
    });
    this.resizer.observe(this.element);
  }

  destroy() {
    this.resizer?.disconnect();
    this.chart?.destroy();
  }
}
