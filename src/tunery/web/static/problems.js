// A rejected submission's problems, each shown at its field and counted in a summary; and
// the warnings about settings far outside what usually works, which the user may accept.

import { $, fill, h } from "./dom.js";
import { plural } from "./format.js";

/** The error code of a submission refused until its warnings are accepted. */
export const WARNINGS_CODE = "warnings_not_accepted";

export function clearProblems() {
  for (const node of document.querySelectorAll("#run-form .field-warning")) node.remove();
  for (const node of document.querySelectorAll("#run-form .field-error")) {
    // Fixed slots (data-error-for) stay in the page; messages added at a field go.
    if (node.dataset.errorFor) node.hidden = true;
    else node.remove();
  }
  for (const node of document.querySelectorAll("#run-form [aria-invalid]")) {
    node.removeAttribute("aria-invalid");
    const kept = (node.getAttribute("aria-describedby") || "").split(" ")
      .filter((id) => id && !id.startsWith("error-"));
    if (kept.length) node.setAttribute("aria-describedby", kept.join(" "));
    else node.removeAttribute("aria-describedby");
  }
  $("#submit-problems").hidden = true;
}

/** The form element a problem's field belongs to: "dataset_ids.0" → dataset_ids. */
function fieldElement(field) {
  const parts = field.split(".");
  while (parts.length) {
    const element = document.querySelector(`#run-form [data-field="${CSS.escape(parts.join("."))}"]`);
    if (element) return element;
    parts.pop();
  }
  return null;
}

/** Show a problem at its field; false when the form has no place for it. */
function placeProblem(problem) {
  const fixed = document.querySelector(`#run-form [data-error-for="${CSS.escape(problem.field)}"]`);
  if (fixed) {
    fixed.textContent = problem.message;
    fixed.hidden = false;
    return true;
  }
  const element = fieldElement(problem.field);
  if (!element) return false;
  const errorId = `error-${problem.field.replace(/[^A-Za-z0-9_-]/g, "-")}`;
  const input = element.querySelector("input, select");
  input?.setAttribute("aria-invalid", "true");
  input?.setAttribute("aria-describedby",
    [input.getAttribute("aria-describedby"), errorId].filter(Boolean).join(" "));
  element.append(h("p", { class: "field-error", id: errorId, dataset: { field: problem.field } },
    `${problem.field}: ${problem.message}`));
  return true;
}

/**
 * Mark every problem of a 422 answer; those without a field are listed in the summary.
 * The keyboard goes to the first field to fix (or to the summary when no field has one),
 * so a refused submission never leaves the focus on a disabled button.
 */
export function showProblems(error) {
  const unplaced = error.problems.filter((problem) => !placeProblem(problem));
  const listed = error.problems.length ? unplaced : [{ field: "", message: error.message }];
  const count = error.problems.length || 1;
  const summary = $("#submit-problems");
  fill(summary,
    h("p", {}, h("strong", {}, "The run was not started. "),
      `${plural(count, "problem")} to fix${unplaced.length ? ":" : ", marked below."}`),
    listed.length ? h("ul", {}, listed.map((problem) => h("li", {},
      problem.field ? `${problem.field}: ${problem.message}` : problem.message))) : null,
  );
  summary.hidden = false;
  summary.scrollIntoView({ block: "nearest" });
  const first = document.querySelector("#run-form [aria-invalid='true']");
  if (first) first.focus();
  else {
    summary.tabIndex = -1;
    summary.focus();
  }
}

/**
 * The settings a submission was refused for until accepted: each at its field, and in the
 * summary with "Start anyway" (which calls `startAnyway`) and the way back to the form.
 */
export function showWarnings(error, startAnyway) {
  for (const warning of error.problems) {
    fieldElement(warning.field)?.append(h("p", { class: "field-warning warning-text",
      dataset: { field: warning.field } }, `${warning.field}: ${warning.message}`));
  }
  const summary = $("#submit-problems");
  const start = h("button", { type: "button", class: "primary", onclick: startAnyway },
    "Start anyway");
  fill(summary,
    h("p", {}, h("strong", {}, "Not started yet: "),
      `${plural(error.problems.length, "setting")} far outside what usually works for LoRA.`),
    h("ul", {}, error.problems.map((warning) => h("li", {},
      `${warning.field}: ${warning.message}`))),
    h("div", { class: "actions" }, start,
      h("span", { class: "muted" }, "or change them below and start again.")));
  summary.hidden = false;
  summary.scrollIntoView({ block: "nearest" });
  start.focus();
}
