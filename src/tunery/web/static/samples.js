// The Run panel's samples: the tuned model's answer beside the base model's and the
// reference answer of the held-out row, so "did it work?" is answered at a glance.

import { h } from "./dom.js";

/** One article per sample, its answers side by side; empty replies are flagged. */
export function sampleCards(samples) {
  return samples.map((sample, index) => h("article", { class: "sample", dataset: { sample: index } },
    h("p", { class: "sample-prompt" }, h("strong", {}, `Prompt ${index + 1}: `), sample.prompt),
    h("div", { class: "sample-answers" },
      answer("Tuned", sample.response, "tuned", sample.stopped === false
        ? "This reply hit the token limit without stopping." : null),
      "base_response" in sample ? answer("Base model", sample.base_response, "base") : null,
      sample.expected ? answer("Reference", sample.expected, "expected") : null)));
}

function answer(label, text, kind, warning = null) {
  const empty = !text || !text.trim();
  // `sample-response` is the tuned model's reply; the others are there to compare with.
  const textClass = kind === "tuned" ? "sample-response" : "sample-text";
  return h("div", { class: `sample-answer ${kind}`, dataset: { answer: kind } },
    h("h4", {}, label),
    h("p", { class: empty ? `${textClass} warning-text` : textClass },
      empty ? "(empty reply: the model stopped at once)" : text),
    warning ? h("p", { class: "warning-text" }, warning) : null);
}
