// Which tab shows: the address's fragment (#/runs/<id>, #/hub, …) is the only source.

import { session } from "./api.js";
import { $ } from "./dom.js";
import { showCompare } from "./compare.js";
import { renderCredits } from "./credits.js";
import { renderHub } from "./hub.js";
import { expandedRunId, showRuns } from "./runs.js";
import { refreshCredits, refreshHub, state } from "./state.js";
import { renderWebhooks } from "./webhooks.js";

const VIEWS = ["new", "runs", "compare", "hub", "credits", "webhooks"];

/** The tab and run id the address names; an unknown tab is Runs. */
export function route() {
  const [view, id] = location.hash.replace(/^#\/?/, "").split("/");
  return { view: VIEWS.includes(view) ? view : "runs", id };
}

/** Show one view (a tab or "signin") and mark its link as the current page. */
export function show(view) {
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

let shown = null;

/**
 * Draw the view the address names; without a token, the sign-in view. Lists that change
 * without an event of their own (the Hub's entries, the ledger, the webhooks) are fetched
 * when their tab opens.
 */
export function render({ refresh = true } = {}) {
  if (!session.token) {
    show("signin");
    return;
  }
  const { view, id } = route();
  const opened = refresh && view !== shown;
  show(view);
  shown = view;
  if (view === "runs") showRuns(id);
  else if (view === "compare" && state.loaded) showCompare(id);
  else if (view === "hub") {
    renderHub();
    if (opened) refreshHub();
  } else if (view === "credits") {
    renderCredits();
    if (opened) refreshCredits();
  } else if (view === "webhooks") renderWebhooks();
}

/** Redraw on every address change, and put the keyboard where the user expects it. */
export function followRoutes() {
  window.addEventListener("hashchange", () => {
    const before = shown;
    const toggled = route().id || expandedRunId();
    render();
    if (shown !== before) $("#main").focus({ preventScroll: true });
    else if (shown === "runs" && toggled) {
      // Opening or closing a run keeps the keyboard on its header.
      document.getElementById(`run-${toggled}`)?.querySelector(".run-header")?.focus();
    }
  });
}
