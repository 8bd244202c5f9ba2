// The server's words for run statuses and phases, from GET /api/v1/meta.
//
// The studio keeps no copy of them: labels, icons, which statuses are terminal and what
// each phase means are defined once on the server, so the CLI and the studio cannot drift.

import { api } from "./api.js";
import { h } from "./dom.js";

const statuses = new Map();
const phases = new Map();
let billingRules = [];

/** Load the vocabularies once; later calls do nothing. */
export async function loadVocabulary() {
  if (statuses.size) return;
  const meta = await api("/meta");
  for (const status of meta.statuses) statuses.set(status.id, status);
  for (const phase of meta.phases) phases.set(phase.id, phase.description);
  billingRules = meta.refund_rules;
}

/** What is billed and what is refunded, one sentence per rule. */
export const refundRules = () => billingRules;

/** "Waiting for GPU"; a status the server has not described reads as its id. */
export const statusLabel = (status) => statuses.get(status)?.label ?? status;

/** Whether a run in this status is finished for good (completed, failed, cancelled). */
export const isTerminal = (status) => statuses.get(status)?.terminal === true;

/** "running gradient steps"; an undescribed phase reads as its id. */
export const phaseDescription = (phase) => phases.get(phase) ?? phase;

/** The coloured status pill: icon and label; data-status lets styles and tests find it. */
export function pill(status) {
  const icon = statuses.get(status)?.icon ?? "clock";
  return h("span", { class: `pill pill-${status}`, dataset: { status } },
    h("span", { class: `icon icon-${icon}`, "aria-hidden": "true" }), statusLabel(status));
}
