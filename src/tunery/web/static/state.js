// The page's copy of the account, and how the event stream updates it.
//
// Lists come from the REST API once; the account-wide stream then keeps them current. A run
// object carries `last_event_id`, so an event the page already reflects is never applied
// twice and a late API answer never overwrites a newer state. Events carry what the page
// needs: a status change costs one request (the finished run's object, for its bill,
// samples and bundles) or none, and the balance and free nodes come with the stream's
// snapshots. This module draws nothing: the views register what to redraw in `hooks`.

import { ApiError, api } from "./api.js";
import { reportError } from "./dom.js";
import { isTerminal, loadVocabulary } from "./vocabulary.js";

export const state = {
  runs: new Map(),
  datasets: [],
  models: [],
  tiers: [],
  hub: [],
  credits: null,
  // Events of runs whose object is being fetched, by run id.
  pending: new Map(),
  // Until the lists are loaded after the stream opened, its events wait here.
  loaded: false,
  backlog: [],
};

/** What to redraw; app.js fills these in. */
export const hooks = {
  loaded: () => {},
  numbersChanged: () => {},
  hubChanged: () => {},
  runsChanged: () => {},
  runChanged: (_run) => {},
  point: (_run, _metrics) => {},
  evaluation: (_run, _evaluation) => {},
  logLine: (_run, _line) => {},
};

/** Forget the lists' state before the stream (re)opens: its `ready` event loads them. */
export function resetForStream() {
  state.loaded = false;
  state.backlog = [];
}

/**
 * Load every list, then apply the events that arrived meanwhile.
 *
 * Called once the event stream is open (its cursor is fixed), so nothing committed between
 * the lists and the stream is lost; runs merge through receiveRun, which keeps whichever of
 * the page's copy and the fresh one is newer.
 */
async function loadAll() {
  state.loaded = false;
  const [runs, datasets, models, tiers, hub, credits] = await Promise.all([
    api("/runs"), api("/datasets"), api("/models"), api("/tiers"), api("/hub"), api("/credits"),
    loadVocabulary([READY, SNAPSHOT, ...Object.keys(HANDLERS)]),
  ]);
  const listed = new Set(runs.map((run) => run.id));
  for (const id of [...state.runs.keys()]) if (!listed.has(id)) state.runs.delete(id);
  for (const run of runs) receiveRun(run, { quiet: true });
  Object.assign(state, { datasets, models, tiers, hub, credits });
  state.loaded = true;
  hooks.loaded();
  for (const [kind, data] of state.backlog.splice(0)) receiveEvent(kind, data);
}

/** Load the lists, retrying every few seconds while the server cannot answer. */
export function loadUntilDone() {
  loadAll().catch((error) => {
    if (error instanceof ApiError && error.status === 401) return;
    reportError(error, "Loading the studio");
    setTimeout(loadUntilDone, 3000);
  });
}

export async function refreshRun(id) {
  try {
    receiveRun(await api(`/runs/${id}`));
  } catch (error) {
    // Buffered events of a run that cannot be fetched now are dropped; the next event or
    // reload fetches it again.
    state.pending.delete(id);
    if (error instanceof ApiError && error.status === 404) forgetRun(id);
    else reportError(error);
  }
}

/** Reload the balance and the ledger (the Credits tab shows the ledger). */
export async function refreshCredits() {
  try {
    state.credits = await api("/credits");
    hooks.numbersChanged();
  } catch (error) {
    reportError(error, "Loading the credits");
  }
}

/** Reload the Hub's entries (shown on the Hub tab; completed runs add to them). */
export async function refreshHub() {
  try {
    state.hub = await api("/hub");
    hooks.hubChanged();
  } catch (error) {
    reportError(error, "Loading the Hub");
  }
}

/** Drop a run the server no longer has. */
export function forgetRun(id) {
  state.runs.delete(id);
  hooks.runsChanged();
}

/** One event of the account stream (`onEvent` of AccountStream). */
export function receiveEvent(kind, data) {
  if (kind === READY) loadUntilDone();
  else if (!state.loaded) state.backlog.push([kind, data]);
  else if (kind === SNAPSHOT) applySnapshot(data);
  else if (state.runs.has(data.run_id)) applyEvent(state.runs.get(data.run_id), kind, data);
  else holdForRun(kind, data);
}

/**
 * The live numbers the server computed: each active run's, the balance, and (after a status
 * change) each tier's free nodes.
 */
function applySnapshot(snapshot) {
  for (const live of snapshot.runs) {
    const run = state.runs.get(live.id);
    if (!run) continue;
    run.metrics = { ...run.metrics, ...live.metrics };
    run.queue_position = live.queue_position;
    run.waiting_reason = live.waiting_reason;
    hooks.runChanged(run);
    // A state the events have not told us about: fetch the run rather than guess.
    if (live.status !== run.status) refreshRun(run.id);
  }
  if (state.credits) state.credits = { ...state.credits, balance: snapshot.balance };
  for (const live of snapshot.tiers ?? []) {
    const tier = state.tiers.find((each) => each.id === live.id);
    if (tier) Object.assign(tier, { nodes_free: live.nodes_free, nodes_total: live.nodes_total });
  }
  hooks.numbersChanged();
}

/**
 * An event of a run this page has not seen yet (just submitted, or from the CLI): keep it
 * until the run object arrives, then apply the ones newer than it.
 */
function holdForRun(kind, data) {
  if (!state.pending.has(data.run_id)) {
    state.pending.set(data.run_id, []);
    refreshRun(data.run_id);
  }
  state.pending.get(data.run_id).push([kind, data]);
}

/** The event's own fields, without the envelope every stored event has. */
function body(data) {
  const { id: _id, kind: _kind, at: _at, run_id: _run, line: _line, ...fields } = data;
  return fields;
}

const READY = "ready";
const SNAPSHOT = "snapshot";
/** What each stored event kind does to the page's copy of its run. */
const HANDLERS = {
  status(run, data) {
    run.status = data.status;
    run.phase = data.phase;
    if (data.error) run.error = data.error;
    // Why a run waits is the snapshot's to say, and only while it waits.
    run.waiting_reason = null;
    // A pause asked for ends with the next move (paused, or ended first); the server clears it.
    run.pause_requested = false;
    hooks.runChanged(run);
    // A finished run's object holds what no event carries (its bill and refund, samples,
    // bundles and Hub entry): one request. A run still on its way needs none.
    if (isTerminal(run.status)) refreshRun(run.id);
  },
  phase(run, data) {
    run.phase = data.phase;
    hooks.runChanged(run);
  },
  metrics(run, data) {
    const metrics = body(data);
    // A replayed step fills the curve's history; the header keeps the newest step.
    if (!metrics.replayed) run.metrics = { ...run.metrics, ...metrics };
    hooks.runChanged(run);
    hooks.point(run, metrics);
  },
  evaluation(run, data) {
    const evaluation = body(data);
    run.evaluation = { ...run.evaluation, ...evaluation };
    hooks.runChanged(run);
    hooks.evaluation(run, evaluation);
  },
  samples(run, data) {
    run.samples = data.samples;
    hooks.runChanged(run);
  },
  annotations(run, data) {
    Object.assign(run, { tags: data.tags, note: data.note });
    hooks.runChanged(run);
  },
  hub(run, data) {
    if (data.deleted && run.hub_entry_id === data.hub_entry_id) {
      run.hub_entry_deleted = true;
      run.openai_model = null;
      state.hub = state.hub.filter((entry) => entry.id !== data.hub_entry_id);
    }
    hooks.runChanged(run);
    hooks.hubChanged();
  },
  log() {},
};

function applyEvent(run, kind, data) {
  // The log is not part of the run object, so a run object that already reflects this
  // event (the answer to a cancel, say) has not shown its line. The stream sends each
  // event once, so the line is never appended twice.
  if (data.line) hooks.logLine(run, data.line);
  if (run.last_event_id !== null && data.id <= run.last_event_id) return;
  run.last_event_id = data.id;
  HANDLERS[kind]?.(run, data);
}

/**
 * Take a run object from the API unless the page already holds a newer state of it; then
 * apply the events that were waiting for it. `quiet` leaves drawing to the caller.
 */
export function receiveRun(fresh, { quiet = false } = {}) {
  const known = state.runs.get(fresh.id);
  let run = fresh;
  if (known && (known.last_event_id ?? 0) > (fresh.last_event_id ?? 0)) {
    // The page's state is newer; take only what no event carries.
    known.attempt = Math.max(known.attempt, fresh.attempt);
    known.cancel_requested ||= fresh.cancel_requested;
    known.finish_requested ||= fresh.finish_requested;
    known.started_at ??= fresh.started_at;
    run = known;
  } else {
    state.runs.set(fresh.id, fresh);
  }
  const waiting = state.pending.get(fresh.id) || [];
  state.pending.delete(fresh.id);
  if (!quiet) hooks.runChanged(run);
  for (const [kind, data] of waiting) applyEvent(run, kind, data);
  return run;
}
