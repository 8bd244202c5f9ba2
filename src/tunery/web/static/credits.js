// The balance in the top bar, and the Credits tab: the billing rules and the ledger.

import { $, fill, h } from "./dom.js";
import { formatCredits, formatTime } from "./format.js";
import { state } from "./state.js";
import { isTerminal, refundRules } from "./vocabulary.js";

/**
 * The balance as it will be once the unfinished runs settle: the ledger's balance less the
 * credits each has trained so far (the server's live number), so it moves while they train.
 */
export function renderBalance() {
  const balance = $("#balance");
  balance.hidden = !state.credits;
  if (!state.credits) return;
  const training = [...state.runs.values()].filter((run) => !isTerminal(run.status))
    .reduce((sum, run) => sum + (run.metrics?.credits || 0), 0);
  balance.textContent = `${formatCredits(state.credits.balance - training)} credits`;
  balance.title = training > 0
    ? `Credit balance, less ${formatCredits(training)} that unfinished runs have used so far`
    : "Credit balance";
}

export function renderCredits() {
  if (!state.credits) return;
  $("#credits-balance").textContent = formatCredits(state.credits.balance);
  fill($("#billing-rules"), refundRules().map((rule) => h("li", {}, rule)));
  fill($("#ledger-rows"), [...state.credits.ledger].reverse().map(ledgerRow));
}

function ledgerRow(row) {
  return h("tr", {},
    h("td", {}, formatTime(row.created_at)),
    h("td", {}, row.kind),
    h("td", { class: row.amount < 0 ? "negative" : "positive" },
      `${row.amount > 0 ? "+" : ""}${formatCredits(row.amount)}`),
    h("td", {}, row.run_id ? state.runs.get(row.run_id)?.name || row.run_id : "–"),
    h("td", {}, row.note || ""));
}
