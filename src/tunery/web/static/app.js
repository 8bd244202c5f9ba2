// The tunery studio: New run, Runs (with the expandable Run panel), Hub and Credits.
//
// Data comes from the REST API once and then from one account-wide event stream
// (GET /api/v1/events): status and phase changes, per-step metrics, log lines, samples, and
// a snapshot of the active runs' live numbers every few seconds. No widget polls. This
// module wires the parts: state.js merges what arrives, the view modules draw it.

import { AccountStream, session } from "./api.js";
import { renderBalance, renderCredits } from "./credits.js";
import { $, hideBanner, showBanner, trapDialogFocus } from "./dom.js";
import { renderForm, renderStarts, renderTiers, setUpForm } from "./form.js";
import { renderHub } from "./hub.js";
import { followRoutes, render, route } from "./router.js";
import { addEvaluation, addLogLine, addPoint, renderRuns, updateRun } from "./runs.js";
import { setUpSignIn, takeTokenFromLink } from "./signin.js";
import { hooks, loadUntilDone, receiveEvent, resetForStream } from "./state.js";

const stream = new AccountStream({ onEvent: receiveEvent, onState: onConnection });

function onConnection(status, detail) {
  const indicator = $("#connection");
  indicator.hidden = false;
  if (status === "live") {
    indicator.textContent = "● Live";
    indicator.className = "connection live";
    hideBanner();
    // After a drop (or a server restart) the stream replays what was missed; the lists
    // are reloaded too, for what is not an event (Hub entries, balance, tiers).
    if (detail === "resumed") loadUntilDone();
  } else {
    indicator.textContent = "○ Reconnecting…";
    indicator.className = "connection lost";
    showBanner("Lost the connection to the server; reconnecting. Runs keep going on the "
      + "server and the studio catches up when it is back.");
  }
}

/** Open the event stream; its `ready` event (the cursor is fixed) loads the lists. */
function start() {
  $("#signin-reason").hidden = true;
  resetForStream();
  stream.start();
}

Object.assign(hooks, {
  loaded: () => {
    renderForm();
    renderBalance();
    render({ refresh: false });
  },
  // The balance and free nodes (every snapshot), or the ledger (the Credits tab).
  numbersChanged: () => {
    renderBalance();
    renderTiers();
    if (route().view === "credits") renderCredits();
  },
  hubChanged: () => {
    if (route().view === "hub") renderHub();
  },
  runsChanged: renderRuns,
  runChanged: (run) => {
    updateRun(run);
    // A run that completed can now be started from in the New run form.
    renderStarts();
    // The header's balance counts what unfinished runs have trained so far.
    renderBalance();
  },
  point: addPoint,
  evaluation: addEvaluation,
  logLine: addLogLine,
});
trapDialogFocus();
setUpForm();
followRoutes();
setUpSignIn({ start, stream });
takeTokenFromLink();
if (session.token) start();
else render();
