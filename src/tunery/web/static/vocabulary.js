// The server's words for run statuses, phases and event kinds, from GET /api/v1/meta.
//
// The studio keeps no copy of them: labels, icons, what each status allows (Finish now,
// Cancel), whether it is terminal and how it ended, what each phase means and which event
// kinds the streams send are defined once on the server, so the CLI and the studio cannot
// drift. Code here asks questions ("can this run finish now?"), never compares status names.

import { api } from "./api.js";
import { h } from "./dom.js";

const statuses = new Map();
const phases = new Map();
let eventKinds = new Set();
let billingRules = [];
let validationRule = "";

/**
 * Load the vocabularies once; later calls do nothing. `handled` lists the event kinds the
 * page acts on: one the server does not send means studio and server disagree, and says so.
 */
export async function loadVocabulary(handled = []) {
  if (statuses.size) return;
  const meta = await api("/meta");
  for (const status of meta.statuses) statuses.set(status.id, status);
  for (const phase of meta.phases) phases.set(phase.id, phase.description);
  eventKinds = new Set(meta.event_kinds);
  billingRules = meta.refund_rules;
  validationRule = meta.automatic_validation;
  const unknown = handled.filter((kind) => !eventKinds.has(kind));
  if (unknown.length) {
    throw new Error(`the server sends no ${unknown.join(", ")} events: reload the page `
      + "after upgrading the server and the studio together");
  }
}

/** Whether the streams send events of `kind`. */
export const isEventKind = (kind) => eventKinds.has(kind);

/** What is billed and what is refunded, one sentence per rule. */
export const refundRules = () => billingRules;

/** What a run whose validation split is left blank holds out. */
export const automaticValidation = () => validationRule;

const info = (status) => statuses.get(status) ?? {};

/**
 * The pill's label: "Waiting for GPU", or "Loading model" once a node loads it; on a tier
 * without GPUs (`gpus` 0) the server's label for that. An unknown status reads as its id.
 */
export function statusLabel(status, phase = null, gpus = null) {
  const known = info(status);
  if (phase && known.phase_labels?.[phase]) return known.phase_labels[phase];
  if (gpus === 0 && known.label_without_gpu) return known.label_without_gpu;
  return known.label ?? status;
}

/** Whether a run in this status is finished for good. */
export const isTerminal = (status) => info(status).terminal === true;

/** Whether Finish now is accepted in this status (training, retrying). */
export const canFinish = (status) => info(status).finishable === true;

/** Whether Cancel stops a run in this status. */
export const canCancel = (status) => info(status).cancellable === true;

/** Whether the run object carries its last attempt's error in this status. */
export const showsError = (status) => info(status).shows_error === true;

/** "succeeded", "failed" or "cancelled" for a finished run; null before. */
export const outcome = (status) => info(status).outcome ?? null;

/** The statuses in lifecycle order, for filters: [{id, label}]. */
export const allStatuses = () => [...statuses.values()].map(({ id, label }) => ({ id, label }));

/** Whether Pause (queued, waiting, training, retrying) / Resume (paused) apply. */
export const canPause = (status) => info(status).pausable === true;
export const canResume = (status) => info(status).resumable === true;

/** "running gradient steps"; an undescribed phase reads as its id. */
export const phaseDescription = (phase) => phases.get(phase) ?? phase;

/** The coloured status pill: icon and label; data-status lets styles and tests find it. */
export function pill(status, phase = null, gpus = null) {
  const icon = info(status).icon ?? "clock";
  return h("span", { class: `pill pill-${status}`, dataset: { status } },
    h("span", { class: `icon icon-${icon}`, "aria-hidden": "true" }),
    statusLabel(status, phase, gpus));
}
